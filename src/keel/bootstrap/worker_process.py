"""What each of `keel serve --workers N`'s spawned processes imports (keel.bootstrap.workers):
the application and the HTTP protocol, built from the environment the supervisor passed down.
Imported by name in a worker only, never by the parent or by other modules."""

from __future__ import annotations

from fastapi import FastAPI

from keel.api.http.serving import http_protocol
from keel.bootstrap.lifecycle import create_app
from keel.bootstrap.workers import exit_with_the_supervisor
from keel.config import Settings

exit_with_the_supervisor()
settings = Settings()
HttpProtocol = http_protocol(settings)


def app() -> FastAPI:
    """uvicorn's application factory (`factory=True`)."""
    return create_app(settings)
