"""The media type and the JSON of `/v1/` request bodies, and their query strings (no parameter
repeated: see keel.api.query_strings), checked once in front of the routes.

FastAPI reads a body as JSON whenever its media type merely ends in `json` (so
`application/x-foo+json` or `charset=latin-1` pass), answers other types with a 422, and parses
with the lenient `json.loads` (duplicate keys: the last wins; UTF-16 and a BOM accepted). Its
body model is kept (Cadwyn migrates requests between versions through it, and OpenAPI is built
from it); this plain ASGI layer refuses what it must not read first, with a 415 or a 400 problem,
then hands the very same bytes on.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.http.problems import problem_response
from keel.api.media_types import JSON, MERGE_PATCH_JSON, accepts, refusal_detail
from keel.api.query_strings import repeated_detail, repeated_names
from keel.api.rest.admission import operation_of
from keel.service.strict_json import MalformedJSON, loads_strict

_VERSIONED_PREFIX = "/v1/"
# The operations that take a JSON body, as `operation_of` names them, and its media type.
_BODY_MEDIA_TYPES = {"profiles.create": JSON, "profiles.update": MERGE_PATCH_JSON}


class StrictBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_VERSIONED_PREFIX):
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        repeated = repeated_names(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else []
        if repeated:
            await problem_response(400, "bad-request", "Bad request", repeated_detail(repeated))(
                scope, receive, send
            )
            return
        expected = _BODY_MEDIA_TYPES.get(operation_of(scope["method"], scope["path"]).name)
        if expected is None:
            await self.app(scope, receive, send)
            return
        content_types = [value for name, value in scope["headers"] if name == b"content-type"]
        if len(content_types) != 1 or not accepts(content_types[0].decode("latin-1"), expected):
            await problem_response(
                415, "unsupported-media-type", "Unsupported media type", refusal_detail(expected)
            )(scope, receive, send)
            return
        messages: list[Message] = []
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except HTTPException as error:  # the envelope's body size limit, raised from `receive`
            detail = error.detail if isinstance(error.detail, str) else "The body is too large."
            await problem_response(error.status_code, "payload-too-large", "Payload too large", detail)(
                scope, receive, send
            )
            return
        if messages[-1]["type"] == "http.request":
            body = b"".join(m.get("body", b"") for m in messages)
            try:
                loads_strict(body)
            except MalformedJSON as error:
                await problem_response(400, "bad-request", "Bad request", error.detail)(scope, receive, send)
                return
            messages = [{"type": "http.request", "body": body, "more_body": False}]
        # Else the client left while sending: the route meets the disconnect as it would have.
        await self.app(scope, _replay(messages, receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
