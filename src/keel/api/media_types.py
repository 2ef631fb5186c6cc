"""Which `Content-Type` a JSON request body may carry, the same for REST and GraphQL over HTTP.

Exactly the one media type the operation takes (`application/json`, or
`application/merge-patch+json` for a merge patch), with at most a `charset=utf-8` parameter:
a body labelled `application/x-foo+json`, `text/plain` or `charset=latin-1` is not what the
operation reads, and reading it anyway would mean guessing what the sender meant (RFC 9110
§15.5.16: 415 Unsupported Media Type). Names and values compare case-insensitively.
"""

from __future__ import annotations

JSON = "application/json"
MERGE_PATCH_JSON = "application/merge-patch+json"


def accepts(content_type: str | None, expected: str) -> bool:
    """Whether `content_type` (a header's value, None when absent) is `expected`, alone or with
    `charset=utf-8`."""
    if content_type is None:
        return False
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != expected:
        return False
    if not parameters:
        return True
    if len(parameters) > 1:
        return False
    name, equals, value = parameters[0].partition("=")
    value = value.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return bool(equals) and name.strip().lower() == "charset" and value.lower() == "utf-8"


def refusal_detail(expected: str) -> str:
    """What a caller is told when its body's media type is refused."""
    return f"The body must be {expected} (optionally with charset=utf-8)."
