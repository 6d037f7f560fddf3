"""The shipped alert rules and Grafana dashboard name only metrics a node exports, with the
type their functions expect (rate/increase over counters, plain reads of gauges)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from proxy.service.metrics import METRICS, Kind

MONITORING = Path(__file__).parents[3] / "config" / "monitoring"
# The series each metric is exported as: counters NAME_total; gauges NAME; histograms
# NAME_bucket, NAME_sum and NAME_count, which are counters too (only rated).
EXPORTED = {m.name + ("_total" if m.kind is Kind.COUNTER else ""): m.kind for m in METRICS
            if m.kind is not Kind.HISTOGRAM}
EXPORTED |= {m.name + suffix: Kind.COUNTER for m in METRICS if m.kind is Kind.HISTOGRAM
             for suffix in ("_bucket", "_sum", "_count")}


def _expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs


def test_every_metric_named_is_exported_and_counters_are_only_rated() -> None:
    exprs = _expressions()
    assert len(exprs) > 10
    for expr in exprs:
        for name in re.findall(r"\btoneguard_\w+", expr):
            assert name in EXPORTED, f"{name} in {expr!r} is not exported"
            if EXPORTED[name] is Kind.COUNTER:
                assert re.search(rf"(rate|increase)\(\s*{name}\b", expr), expr
            else:
                assert not re.search(rf"(rate|increase)\(\s*{name}\b", expr), expr


def test_every_histogram_is_on_the_dashboard_and_alerted_as_a_quantile() -> None:
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    alerts = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for m in METRICS:
        if m.kind is Kind.HISTOGRAM:
            quantile = rf"histogram_quantile\(\s*0\.\d+\s*,.*rate\(\s*{m.name}_bucket\b"
            assert any(re.search(quantile, e) for e in panels), m.name
            assert any(re.search(quantile, e) for e in alerts), m.name


def test_the_fail_closed_drops_each_have_an_alert() -> None:
    alerts = " ".join(_expressions())
    for counter in ("stranger_packets", "uninspectable_packets", "rtcp_not_rtcp"):
        assert f"toneguard_media_{counter}_total" in alerts
