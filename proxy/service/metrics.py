"""Prometheus metrics with their own registry, read from the live counters at scrape time.

No label ever carries a call id, a digit or anything that could hold card data: labels are
fixed names (direction, outcome, command).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], dict[str, dict[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = self._read()
        gauges = {"calls_active", "streams_active", "payments_active"}
        for name, values in snap.items():
            for key, value in values.items():
                metric = f"toneguard_{name}_{key}"
                if key in gauges:
                    yield GaugeMetricFamily(metric, f"{name} {key}", value=value)
                else:
                    yield CounterMetricFamily(metric, f"{name} {key}", value=value)


class Metrics:
    def __init__(self, read: Callable[[], dict[str, dict[str, float]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Snapshot(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
