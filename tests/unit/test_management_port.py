"""The management port's server: /metrics in the format the scraper asks for, the probes it is
given (a probe that raises answers 503, not a reset connection), 404 elsewhere, on IPv4 and IPv6
loopback alike."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from testkit.ports import free_port

from keel.observability.management import management_port


def _failing() -> tuple[int, bytes]:
    raise RuntimeError("the probe broke")


@pytest.mark.parametrize(("host", "url_host"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_metrics_probes_and_the_rest(host: str, url_host: str) -> None:
    registry = CollectorRegistry()
    Counter("keel_probe_test", "A counter.", registry=registry).inc()
    probes = {"/healthz": lambda: (200, b'{"status": "ok"}'), "/readyz": _failing}
    with management_port(registry, host, [0], probes) as port:
        base = f"http://{url_host}:{port}"
        text = httpx.get(f"{base}/metrics", timeout=5)
        assert text.status_code == 200
        assert text.headers["content-type"].startswith("text/plain")
        assert "keel_probe_test_total 1.0" in text.text
        open_metrics = httpx.get(
            f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=5
        )
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.rstrip().endswith("# EOF")
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        failed = httpx.get(f"{base}/readyz", timeout=5)
        assert (failed.status_code, failed.json()) == (503, {"status": "failed"})
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 404


def test_each_worker_process_takes_the_first_free_port_of_its_node_and_none_is_shared() -> None:
    ports = [free_port(), free_port()]
    with (
        management_port(CollectorRegistry(), "127.0.0.1", ports) as first,
        management_port(CollectorRegistry(), "127.0.0.1", ports) as second,
    ):
        assert [first, second] == ports
        with pytest.raises(OSError, match="in use"), management_port(CollectorRegistry(), "127.0.0.1", ports):
            pass
    with management_port(CollectorRegistry(), "127.0.0.1", ports) as again:
        assert again == ports[0]  # a replaced worker takes the slot its predecessor left
