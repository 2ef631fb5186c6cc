"""The deployment files under deploy/, checked offline (this machine builds no image and runs no
cluster): the image definition linted by hadolint, the Kubernetes manifests validated against the
Kubernetes schemas (kubernetes-validate, strict: an unknown field fails), the compose file's
shape, and the compose HAProxy configuration checked by HAProxy itself. Each check is shown to
fail on a broken copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from testkit.servers.haproxy import ERRORS, haproxy_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KUBERNETES = "1.30.0"  # the oldest version the manifests promise (the preStop exec, autoscaling/v2)


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return subprocess.run(
        [binary, "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


def test_the_image_definition_passes_hadolint_and_a_broken_one_does_not(tmp_path: Path) -> None:
    linted = _hadolint(DEPLOY / "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((DEPLOY / "Dockerfile").read_text().replace("USER 10001\n", "") + "RUN cd /tmp\n")
    assert _hadolint(broken).returncode != 0


def test_the_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM ") :]
    assert "\nUSER 10001\n" in final_stage
    assert "\nHEALTHCHECK " in final_stage
    assert text.count("\nFROM ") == 2  # builder and runtime


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_each_kubernetes_manifest_validates_against_the_schemas(manifest: Path) -> None:
    for document in _documents(manifest):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_a_manifest_with_an_unknown_field_fails_validation() -> None:
    document = _documents(DEPLOY / "kubernetes" / "deployment.yaml")[0]
    document["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_kubernetes_set_has_a_migration_job_probes_a_disruption_budget_and_an_autoscaler() -> None:
    kinds = {document["kind"] for path in MANIFESTS for document in _documents(path)}
    assert {"Job", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    deployment = _documents(DEPLOY / "kubernetes" / "deployment.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    grace = int(env["KEEL_SHUTDOWN_GRACE_SECONDS"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5  # + preStop


def test_the_compose_file_wires_every_dependency_to_a_service_it_defines() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "redis", "nats", "migrate", "core", "edge1", "edge2", "haproxy"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an undefined {dependency}"
    assert services["core"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "core", "edge1", "edge2"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    for volume in services["haproxy"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):  # a file of the repository; else a named volume, defined
            assert (DEPLOY / source).exists(), volume
        else:
            assert source in compose["volumes"], volume
    # The runtime API's socket: on a volume HAProxy and the edges share, where the edges look.
    socket = next(line.split()[2] for line in _haproxy_lines() if line.startswith("stats socket "))
    shared = {"haproxy": "/var/lib/haproxy", "edge1": "/run/haproxy-api"}
    assert all(f"haproxy-api:{path}" in services[name]["volumes"] for name, path in shared.items())
    assert socket == "/var/lib/haproxy/admin.sock"
    assert services["edge1"]["environment"]["KEEL_PROXY_RUNTIME_API"] == "unix:/run/haproxy-api/admin.sock"
    backends = [line.split()[2].split(":")[0] for line in _haproxy_lines() if line.startswith("server ")]
    assert backends == ["edge1", "edge2"]


def _haproxy_lines() -> list[str]:
    return [line.strip() for line in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines()]


def _haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The error files are where the compose file mounts them; here, where they are in the repository.
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("/usr/local/etc/haproxy/errors", str(ERRORS)))
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_compose_haproxy_configuration_passes_haproxys_check(tmp_path: Path) -> None:
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    checked = _haproxy_check(config, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = _haproxy_check(config.replace("balance roundrobin", "balance roundrobbin"), tmp_path)
    assert broken.returncode != 0


# What the deployment's secrets and interpolated variables stand for in the settings check.
_PLACEHOLDERS = {
    "database-url": "postgresql://keel:keel@postgres:5432/keel",
    "redis-url": "redis://redis:6379/0",
    "cursor-secret": "c" * 32,
    "webhook-secrets-key": "w" * 32,
}


def _image_environment() -> dict[str, str]:
    """The KEEL_ variables the image's ENV sets."""
    text = (DEPLOY / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM ") :]
    block = final_stage[final_stage.index("\nENV ") + 5 :].split("\nRUN ", 1)[0]
    pairs = block.replace("\\\n", " ").split()
    return dict(pair.split("=", 1) for pair in pairs if pair.startswith("KEEL_"))


def _interpolated(value: str) -> str:
    if value.startswith("${"):  # ${NAME:?message}: the operator's; a placeholder of the right kind
        name = value[2:].split(":", 1)[0]
        return (
            "e" * 40
            if name == "KEEL_EDGE_KEY"
            else _PLACEHOLDERS[name.removeprefix("KEEL_").lower().replace("_", "-")]
        )
    return value


def _settings_of(environment: dict[str, str], args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the settings a container would start with, and the worker count `keel serve` would
    resolve: a refusal or a validation error fails the test as the container would fail."""
    from keel.bootstrap.workers import worker_count
    from keel.config import Settings

    for name in [n for n in os.environ if n.startswith("KEEL_")]:
        monkeypatch.delenv(name)
    for name, value in {**_image_environment(), **environment}.items():
        monkeypatch.setenv(name, value)
    overrides = {"core_url": args[args.index("--core") + 1]} if "--core" in args else {}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if args[:1] == ["serve"] and "--grpc-only" not in args:
        worker_count(settings)
    if "--grpc-only" in args:
        assert settings.grpc_port is not None


def test_every_compose_service_of_keel_starts_with_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    keel = [name for name, service in services.items() if service.get("image") == "keel:local"]
    assert sorted(keel) == ["core", "edge1", "edge2", "migrate"]
    for name in keel:
        service = services[name]
        environment = {key: _interpolated(str(value)) for key, value in service["environment"].items()}
        _settings_of(environment, service["command"], monkeypatch)


def test_every_kubernetes_container_starts_with_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = [
        container
        for path in MANIFESTS
        for document in _documents(path)
        if document["kind"] in {"Deployment", "Job"}
        for container in document["spec"]["template"]["spec"]["containers"]
    ]
    assert len(containers) == 2
    for container in containers:
        environment = {
            variable["name"]: variable["value"]
            if "value" in variable
            else _PLACEHOLDERS[variable["valueFrom"]["secretKeyRef"]["key"]]
            for variable in container["env"]
        }
        _settings_of(environment, container["args"], monkeypatch)


def test_the_settings_check_fails_a_container_without_its_production_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="KEEL_WEBHOOK_SECRETS_KEY"):
        _settings_of({"KEEL_CURSOR_SECRET": "c" * 32}, ["serve"], monkeypatch)
