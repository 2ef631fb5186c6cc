"""The SLO recording and alerting rules (deploy/prometheus/keel-rules.yml): valid for promtool,
passing their own unit tests (keel-rules.test.yml: which alert fires for which burn, and which
does not), and naming only what a served Keel exposes, with the latency thresholds as bucket
boundaries of its histogram (a rule over a metric or a bucket Keel does not have would never fire)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from testkit.ports import free_port

from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from tests.e2e.test_served_process import Served, keel_served

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "keel-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "keel-rules.test.yml"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_with_grpc(tmp_path_factory.mktemp("rules")) as served:
        yield served


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool") or str(REPO / ".tools" / "bin" / "promtool")
    assert Path(promtool).exists(), "promtool is missing: run scripts/ensure-promtool.sh"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def _expressions() -> list[str]:
    """Every rule's `expr` (one line, or a `|` block up to the rule's `labels:`)."""
    return re.findall(
        r"expr: \|?\s*(.+?)\n\s+(?:labels|annotations|- record|- alert|- name):", RULES.read_text(), re.S
    )


def exercised_metrics(served: Served, handle: str) -> str:
    """A served Keel's `/metrics` after one create and one read under `/v1`, one of each over
    gRPC, and a GraphQL mutation and query (so the request series of the three protocols carry a
    write and a read)."""
    headers = {"Authorization": f"Bearer {served.token}"}
    created = httpx.post(
        f"{served.base_url}/v1/profiles",
        json={"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    read = httpx.get(f"{served.base_url}/v1/profiles/{created.json()['id']}", headers=headers)
    assert read.status_code == 200, read.text
    metadata = (("authorization", f"Bearer {served.token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{served.env['KEEL_GRPC_PORT']}") as channel:
        stub = pb_grpc.ProfileServiceStub(channel)
        profile = pb.Profile(
            handle=f"{handle}_grpc", emails=[pb.Email(address=f"{handle}@example.org", primary=True)]
        )
        made = stub.CreateProfile(pb.CreateProfileRequest(profile=profile), metadata=metadata, timeout=30)
        stub.GetProfile(pb.GetProfileRequest(id=made.profile.id), metadata=metadata, timeout=30)
    mutation = (
        "mutation($h: String!, $e: String!) { createProfile(input: {handle: $h, "
        "emails: [{address: $e, primary: true}]}) { profile { id } } }"
    )
    variables = {"h": f"{handle}_gql", "e": f"{handle}@example.net"}
    made_here = httpx.post(
        f"{served.base_url}/graphql", json={"query": mutation, "variables": variables}, headers=headers
    ).json()
    assert "errors" not in made_here, made_here
    query = {
        "query": "query($id: ID!) { profile(id: $id) { id } }",
        "variables": {"id": made_here["data"]["createProfile"]["profile"]["id"]},
    }
    assert "errors" not in httpx.post(f"{served.base_url}/graphql", json=query, headers=headers).json()
    return httpx.get(f"{served.base_url}/metrics").text


def served_with_grpc(directory: Path) -> contextlib.AbstractContextManager[Served]:
    """`keel serve` with gRPC beside HTTP, for `exercised_metrics`."""
    return keel_served(directory, {"KEEL_GRPC_PORT": str(free_port())})


def test_every_series_the_rules_read_is_served(served: Served) -> None:
    exposition = exercised_metrics(served, "rules_probe")
    samples = [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]
    expressions = _expressions()
    read = {name for expr in expressions for name in re.findall(r"\bkeel_[a-z0-9_]+", expr)}
    assert read, "the rules read no Keel metric"
    for name in read:
        found = [s for s in samples if s.name == name]
        assert found, f"the rules read {name}, which /metrics does not have"
        # Every label the rules select on is one the series carries.
        for expr in expressions:
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}", expr):
                for label in re.findall(r"([a-z_]+)\s*=~?", selector):
                    assert all(label in s.labels for s in found), f"{name} has no label {label}"
    # Each latency threshold is a bucket boundary of its histogram, for the methods it applies
    # to (a read and a write were observed under /v1 and over gRPC above).
    # The label that says read or write: the method, or GraphQL's operation type.
    histograms: dict[str, tuple[Callable[[Sample], bool], str]] = {
        "keel_http_request_duration_seconds_bucket": (
            lambda s: s.labels["route"].startswith("/v1/"),
            "method",
        ),
        "keel_grpc_request_duration_seconds_bucket": (lambda s: True, "method"),
        "keel_graphql_request_duration_seconds_bucket": (lambda s: True, "type"),
    }
    for histogram, (observed, kind) in histograms.items():
        buckets = [s for s in samples if s.name == histogram and observed(s)]
        thresholds: list[tuple[str, str]] = []
        for expr in expressions:
            for selector in re.findall(rf"{histogram}\{{([^}}]*)\}}", expr):
                bound = re.search(r'le="([^"]+)"', selector)
                applies_to = re.search(rf'{kind}=~"([^"]+)"', selector)
                assert bound, selector
                assert applies_to, selector
                thresholds.append((bound.group(1), applies_to.group(1)))
        assert len(thresholds) >= 2, (histogram, thresholds)
        for le, kinds in thresholds:
            assert any(s.labels["le"] == le and re.fullmatch(kinds, s.labels[kind]) for s in buckets), (
                f"no {histogram} le={le} for {kinds}"
            )
