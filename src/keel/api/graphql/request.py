"""Reading a GraphQL request over HTTP: GET query parameters or a POST JSON body, the Apollo
persisted-query extension, and the Idempotency-Key header. Malformed requests are `Refused`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from keel.api.media_types import JSON, accepts, refusal_detail
from keel.api.query_strings import repeated_detail, repeated_names
from keel.service.strict_json import MalformedJSON, loads_strict

from .errors import request_error

JSON_MEDIA_TYPE = JSON


class Refused(Exception):
    """Answer the request now with these errors (and status), without executing it."""

    def __init__(self, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None):
        super().__init__(errors[0]["message"] if errors else "refused")
        self.status = status
        self.errors = errors
        self.headers = headers or {}


@dataclass
class Params:
    query: str | None
    variables: dict[str, Any]
    operation_name: str | None
    persisted_hash: str | None


def wants_ide(request: Request) -> bool:
    params = request.query_params
    return (
        "query" not in params
        and "extensions" not in params
        and "text/html" in request.headers.get("accept", "")
    )


async def read_params(request: Request) -> Params:
    if request.method == "GET":
        repeated = repeated_names(request.query_params.multi_items())
        if repeated:
            raise Refused(400, [request_error("BAD_REQUEST", repeated_detail(repeated))])
        raw: Any = {
            "query": request.query_params.get("query"),
            "operationName": request.query_params.get("operationName"),
            "variables": _json_param(request.query_params.get("variables"), "variables"),
            "extensions": _json_param(request.query_params.get("extensions"), "extensions"),
        }
    else:
        if not accepts(request.headers.get("content-type"), JSON_MEDIA_TYPE):
            error = request_error("UNSUPPORTED_MEDIA_TYPE", refusal_detail(JSON_MEDIA_TYPE))
            raise Refused(415, [error])
        try:
            raw = loads_strict(await request.body())
        except MalformedJSON as error:
            raise Refused(400, [request_error("BAD_REQUEST", error.detail)]) from None
    if not isinstance(raw, dict):
        raise Refused(400, [request_error("BAD_REQUEST", "The body must be one JSON object (no batches).")])
    _refuse_unpaired_surrogates(raw)
    query = raw.get("query")
    variables = raw.get("variables") or {}
    operation_name = raw.get("operationName")
    extensions = raw.get("extensions") or {}
    if query is not None and not isinstance(query, str):
        raise Refused(400, [request_error("BAD_REQUEST", "`query` must be a string.")])
    if not isinstance(variables, dict):
        raise Refused(400, [request_error("BAD_REQUEST", "`variables` must be an object.")])
    if operation_name is not None and not isinstance(operation_name, str):
        raise Refused(400, [request_error("BAD_REQUEST", "`operationName` must be a string.")])
    if not isinstance(extensions, dict):
        raise Refused(400, [request_error("BAD_REQUEST", "`extensions` must be an object.")])
    return Params(query or None, variables, operation_name or None, _persisted_hash(extensions))


def _json_param(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return loads_strict(value)
    except MalformedJSON as error:
        raise Refused(400, [request_error("BAD_REQUEST", f"`{name}`: {error.detail}")]) from None


def _refuse_unpaired_surrogates(raw: dict[str, Any]) -> None:
    """JSON may escape half a UTF-16 pair (`"\\ud800"`); Python decodes it to a string that cannot
    be encoded as UTF-8 again, which would fail wherever the text goes next (the database, a log
    line, an error message echoing it). Such text is no Unicode at all: refused here, once."""
    try:
        json.dumps(raw, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        error = request_error("BAD_REQUEST", "The request contains text that is not valid Unicode.")
        raise Refused(400, [error]) from None


def _persisted_hash(extensions: dict[str, Any]) -> str | None:
    persisted = extensions.get("persistedQuery")
    if persisted is None:
        return None
    sha256 = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
    if not isinstance(persisted, dict) or persisted.get("version") != 1 or not isinstance(sha256, str):
        raise Refused(400, [request_error("BAD_REQUEST", "Unsupported persistedQuery extension.")])
    return sha256.lower()


def idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is not None and not (1 <= len(value) <= 255 and value.isascii() and value.isprintable()):
        raise Refused(
            200,
            [
                request_error(
                    "VALIDATION",
                    "The Idempotency-Key header is not valid.",
                    fieldErrors=[
                        {"field": "/headers/Idempotency-Key", "message": "1-255 printable ASCII characters"}
                    ],
                )
            ],
        )
    return value
