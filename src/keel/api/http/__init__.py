"""Pieces of the HTTP server itself, below the ASGI app: what uvicorn does with bytes on a
connection before (and while) Keel's REST and GraphQL apps see a request."""
