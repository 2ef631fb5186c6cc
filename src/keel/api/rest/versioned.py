"""Every route under `/v1/`, in one router: Cadwyn generates each API version from it, and the
newest version is served by its routes directly (see `cadwyn_internals`)."""

from __future__ import annotations

from cadwyn import VersionedAPIRouter

from keel.api.rest import api_keys, routes, webhooks

router = VersionedAPIRouter()
# The route objects themselves, not `include_router` (which FastAPI now includes lazily, as one
# nested entry): Cadwyn and `serve_newest_version_directly` read `routes` as a list of APIRoutes.
router.routes.extend([*routes.router.routes, *webhooks.router.routes, *api_keys.router.routes])
