"""docs/grafana/sparrow-dashboard.json is a Grafana dashboard model whose queries name only
metrics that exist: Sparrow's own (serving/vllm/metrics.py) or vLLM's spec-decode counters
(read from the installed vLLM's source), and it shows every Sparrow metric."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from sparrow_vllm.serving.vllm.metrics import METRICS, exposed_metric_names

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "docs" / "grafana" / "sparrow-dashboard.json"
METRIC_NAME = re.compile(r"\bvllm:[A-Za-z0-9_:]+")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


def _vllm_spec_decode_metrics() -> set[str]:
    """vLLM's spec-decode counters as /metrics shows them (a counter gets `_total`)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    source = (Path(next(iter(spec.submodule_search_locations))) / "v1" / "spec_decode" / "metrics.py").read_text()
    names = set(re.findall(r'"(vllm:spec_decode_[a-z_]+)"', source))
    assert "vllm:spec_decode_num_accepted_tokens_per_pos" in names, names
    return {f"{name}_total" for name in names}


def test_it_is_a_grafana_dashboard_with_a_prometheus_datasource_variable():
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


def test_every_query_names_a_metric_that_exists():
    known = exposed_metric_names() | _vllm_spec_decode_metrics()
    queries = _queries(_dashboard())
    for query in queries:
        assert query.count("(") == query.count(")"), query
        names = METRIC_NAME.findall(query)
        assert names, query
        unknown = [n for n in names if n not in known]
        assert not unknown, f"{query}: {unknown} is neither a Sparrow metric nor a vLLM spec-decode metric"


def test_it_shows_every_sparrow_metric_and_what_to_watch():
    text = "\n".join(_queries(_dashboard()))
    for metric in METRICS:
        assert any(name in text for name in metric.exposed_names()), metric.name
    assert "vllm:spec_decode_num_accepted_tokens_per_pos_total" in text
    for quantile in ("0.5", "0.95"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(vllm:sparrow_draft_step_seconds_bucket" in text
