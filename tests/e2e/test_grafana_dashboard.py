"""The Grafana dashboard (deploy/grafana/keel-dashboard.json) reads only what exists: every Keel
metric a panel names is on a served Keel's `/metrics` (with every label the panel selects or
groups by, where the metric has series), and every recorded series it names is recorded by
deploy/prometheus/keel-rules.yml. A renamed metric or label fails here, not on a blank panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_prometheus_rules import exercised_metrics, served_with_grpc
from tests.e2e.test_served_process import Served

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "keel-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "keel-rules.yml"
# What a panel's PromQL may add to a family's name; the exposition's family name has none.
_SUFFIXES = {
    "_total": ("counter",),
    "_bucket": ("histogram",),
    "_count": ("histogram", "summary"),
    "_sum": ("histogram", "summary"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_with_grpc(tmp_path_factory.mktemp("dashboard")) as served:
        yield served


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) > 20, "the dashboard lost its panels"
    return [str(query) for query in queries]


def _family(name: str, families: dict[str, Metric]) -> Metric | None:
    """The family a series name belongs to: itself (a gauge, say), or its base name when the
    suffix is one that family's type has (`_total` a counter's, `_bucket` a histogram's, ...)."""
    if name in families:
        return families[name]
    for suffix, types in _SUFFIXES.items():
        family = families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
        if family is not None and family.type in types:
            return family
    return None


def test_every_metric_and_label_a_panel_reads_is_served(served: Served) -> None:
    exposition = exercised_metrics(served, "panel_probe")
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    for expr in _expressions():
        for name in re.findall(r"\bkeel_[a-z0-9_]+", expr):
            family = _family(name, families)
            assert family is not None, f"a panel reads {name}, which /metrics does not have: {expr}"
            carried = {label for sample in family.samples for label in sample.labels}
            if not family.samples or not carried:
                continue  # no series yet (a feature not configured here): the name is what we can check
            used = re.findall(rf"\b{name}\{{([^}}]*)\}}", expr)
            labels = {label for selector in used for label in re.findall(r"([a-z_]+)\s*=~?", selector)}
            labels |= {
                label.strip()
                for grouping in re.findall(r"by \(([^)]*)\)", expr)
                for label in grouping.split(",")
                if label.strip() not in ("le", "instance")
            }
            labels.discard("instance")  # Prometheus's target label, not Keel's
            assert labels <= carried | {"le"}, f"{name} has no label {labels - carried}: {expr}"


def test_every_recorded_series_a_panel_reads_is_recorded() -> None:
    recorded = set(re.findall(r"- record: (\S+)", RULES.read_text()))
    for expr in _expressions():
        for name in re.findall(r"\bkeel:[a-z0-9_:]+", expr):
            assert name in recorded, f"a panel reads {name}, which no rule records"
