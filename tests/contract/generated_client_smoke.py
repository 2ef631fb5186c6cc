"""What a first user of the generated Python SDK does, run by `test_generated_client.py` in the
generator's own tool environment (`.tools/openapi-client`), with the client generated from a
running Keel's document on `sys.path`:

    python generated_client_smoke.py BASE_URL TOKEN VERSION

It creates, reads and lists a profile, reads a missing one and sends an invalid create, all
through the generated functions and models, and prints one JSON object of what it got back:
the test judges it. It asserts nothing itself, so that every answer reaches the test.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from keel_client import AuthenticatedClient  # type: ignore[import-not-found]
from keel_client.api.profiles import (  # type: ignore[import-not-found]
    create_profile,
    get_profile,
    list_profiles,
)
from keel_client.models import (  # type: ignore[import-not-found]
    EmailIn,
    Problem,
    ProfileCreate,
    ProfileList,
    ProfileOut,
)


def _problem(parsed: Any) -> dict[str, Any] | None:
    if not isinstance(parsed, Problem):
        return None
    errors = parsed.errors if isinstance(parsed.errors, list) else []
    return {"type": parsed.type_, "status": parsed.status, "fields": [e.field for e in errors]}


def main() -> None:
    base_url, token, version = sys.argv[1:4]
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    body = ProfileCreate(handle="sdk_user", emails=[EmailIn(address="sdk@example.com", primary=True)])
    created = create_profile.sync_detailed(client=client, body=body, keel_version=version)
    made = created.parsed
    seen: dict[str, Any] = {
        "create_status": int(created.status_code),
        "created_is_profile": isinstance(made, ProfileOut),
    }
    read = get_profile.sync_detailed(made.id, client=client, keel_version=version)
    seen["read_status"] = int(read.status_code)
    seen["read"] = read.parsed.to_dict() if isinstance(read.parsed, ProfileOut) else None
    missing = get_profile.sync_detailed(made.id[:-4] + "zzzz", client=client, keel_version=version)
    seen["missing_status"] = int(missing.status_code)
    seen["missing"] = _problem(missing.parsed)
    invalid = create_profile.sync_detailed(
        client=client, body=ProfileCreate(handle="x", emails=[]), keel_version=version
    )
    seen["invalid_status"] = int(invalid.status_code)
    seen["invalid"] = _problem(invalid.parsed)
    listed = list_profiles.sync_detailed(client=client, keel_version=version)
    seen["list_status"] = int(listed.status_code)
    seen["list"] = listed.parsed.to_dict() if isinstance(listed.parsed, ProfileList) else None
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
