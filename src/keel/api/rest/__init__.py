"""REST over FastAPI + Cadwyn: date-based API versions in the `Keel-Version` header."""
