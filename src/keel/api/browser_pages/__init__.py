"""The browser pages Keel serves in development, Swagger UI at /docs and GraphiQL at GET /graphql,
with every script, style and font served by Keel itself under a strict Content-Security-Policy:
people paste API keys into these pages, so no third party may run code in them, and they must
work on a machine without internet access."""
