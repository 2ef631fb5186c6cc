"""What SDK generators read in each version's OpenAPI document: operation ids named for what
they do, one shared `Keel-Version` parameter, and every status the version was recorded
answering documented on its route."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.frozen_exchanges import VERSIONS, load, template_of
from tests.contract.openapi_documents import UNVERSIONED, served_documents

OPERATION_IDS = {
    ("post", "/v1/profiles"): "createProfile",
    ("get", "/v1/profiles"): "listProfiles",
    ("get", "/v1/profiles/{profile_id}"): "getProfile",
    ("patch", "/v1/profiles/{profile_id}"): "updateProfile",
    ("delete", "/v1/profiles/{profile_id}"): "deleteProfile",
    ("get", "/v1/handles/{handle}"): "checkHandle",
    ("get", "/v1/profiles/{profile_id}/export"): "exportProfile",
    ("post", "/v1/profiles/{profile_id}/erasure"): "startErasure",
    ("get", "/v1/erasures/{erasure_id}"): "getErasure",
    ("post", "/v1/webhooks"): "createWebhook",
    ("get", "/v1/webhooks"): "listWebhooks",
    ("get", "/v1/webhooks/{webhook_id}"): "getWebhook",
    ("delete", "/v1/webhooks/{webhook_id}"): "deleteWebhook",
    ("get", "/v1/webhooks/{webhook_id}/dead-letters"): "listDeadLetters",
    ("post", "/v1/webhooks/{webhook_id}/dead-letters/replay"): "replayDeadLetters",
    ("post", "/v1/keys"): "createApiKey",
    ("get", "/v1/keys"): "listApiKeys",
    ("get", "/v1/keys/{key_id}"): "getApiKey",
    ("patch", "/v1/keys/{key_id}"): "updateApiKey",
    ("delete", "/v1/keys/{key_id}"): "revokeApiKey",
    ("post", "/v1/keys/{key_id}/rotate"): "rotateApiKey",
    ("post", "/v1/keys/{key_id}/expire"): "expireApiKey",
    ("get", "/v1/audit"): "listAuditEntries",
    ("get", "/v1/me"): "getMe",
    ("patch", "/v1/me"): "updateMe",
    ("put", "/v1/profiles/{profile_id}/end-user"): "linkEndUser",
    ("get", "/v1/profiles/{profile_id}/end-user"): "getEndUser",
    ("delete", "/v1/profiles/{profile_id}/end-user"): "unlinkEndUser",
}


@pytest.fixture(scope="module")
async def served() -> dict[str, dict[str, Any]]:
    return await served_documents()


@pytest.fixture(scope="module")
def documents(served: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The versions' documents."""
    return {version: document for version, document in served.items() if version != UNVERSIONED}


async def test_the_version_list_is_documented_outside_the_versions(served: dict[str, dict[str, Any]]) -> None:
    unversioned = served[UNVERSIONED]
    assert list(unversioned["paths"]) == ["/v1/versions"]
    operation = unversioned["paths"]["/v1/versions"]["get"]
    assert operation["operationId"] == "listVersions"
    assert operation["security"] == []  # needs no key
    assert "parameters" not in operation  # takes no version header
    # What the pipeline in front of it can answer, and nothing a key or an input would cause.
    assert set(operation["responses"]) == {"200", "400", "408", "413", "414", "429", "431", "503"}
    assert "KeelVersion" not in unversioned["components"].get("parameters", {})
    for version, document in served.items():
        if version != UNVERSIONED:
            assert "/v1/versions" not in document["paths"], version


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    }


async def test_operations_are_named_for_what_they_do(documents: dict[str, dict[str, Any]]) -> None:
    for document in documents.values():
        named = {key: operation["operationId"] for key, operation in _operations(document).items()}
        assert named == OPERATION_IDS


async def test_the_version_header_is_one_shared_parameter(documents: dict[str, dict[str, Any]]) -> None:
    for version, document in documents.items():
        shared = document["components"]["parameters"]["KeelVersion"]
        assert shared["name"] == "Keel-Version"
        # Its values are a schema of their own, so that a generator makes one type of them.
        assert shared["schema"] == {"$ref": "#/components/schemas/KeelVersion"}
        assert version in document["components"]["schemas"]["KeelVersion"]["enum"]
        for operation in _operations(document).values():
            assert {"$ref": "#/components/parameters/KeelVersion"} in operation["parameters"]
            assert all(p.get("name") != "Keel-Version" for p in operation["parameters"])


async def test_every_status_a_route_was_recorded_answering_is_documented_on_it(
    documents: dict[str, dict[str, Any]],
) -> None:
    undocumented = set()
    for version in VERSIONS:
        operations = _operations(documents[version])
        for exchange in load(version):
            request, status = exchange["request"], exchange["response"]["status"]
            key = (request["method"].lower(), template_of(request["path"]))
            operation = operations.get(key)
            if operation is None:  # an unknown route or method: documented nowhere by definition
                assert status in (404, 405), exchange
                continue
            if str(status) not in operation["responses"]:
                undocumented.add((version, *key, status))
    assert undocumented == set()
