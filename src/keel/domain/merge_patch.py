"""JSON Merge Patch (RFC 7396)."""

from __future__ import annotations

from keel.domain.profile import JSONValue


def apply_merge_patch(target: JSONValue, patch: JSONValue) -> JSONValue:
    """Apply `patch` to `target` as RFC 7396 defines; neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, JSONValue] = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply_merge_patch(result.get(name), value)
    return result
