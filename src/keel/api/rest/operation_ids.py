"""OpenAPI operation ids named for what the operation does (`createProfile`, `getProfile`), not
FastAPI's default of name, path and method (`create_profile_v1_profiles_post`): SDK generators
name their functions after them."""

from __future__ import annotations

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    """The route's name (its function's, or the one given), in camelCase."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)
