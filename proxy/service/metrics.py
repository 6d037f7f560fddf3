"""Prometheus metrics with their own registry, read from the live counters at scrape time.

Every metric is one row of a table that says its name, its type (counter, gauge or histogram)
and its help, and how to read it from a :class:`Readings`: nothing is guessed from a key's
spelling. Histograms (processing time of media ticks and of ng commands) are typed
:class:`~proxy.media.latency.Histogram` values recorded where the work is done — in worker
processes too — and exported as Prometheus histograms (``_bucket``/``_sum``/``_count``).
The media rows come from the counter dataclasses themselves (every field of
:class:`~proxy.media.types.StreamCounters` and :class:`~proxy.media.types.MaskingCounters` is
a counter), so a counter added there appears here with no change to this file.

Names follow the Prometheus conventions: ``toneguard_<plane>_<what>``, counters end in
``_total`` (the client library appends it), gauges say what they measure now.

No label ever carries a call id, a digit or anything that could hold card data: labels are
fixed names (the ng command, from a fixed list; anything else is ``other``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from proxy.control.calls import CallCounters
from proxy.media.latency import Histogram
from proxy.media.types import MaskingCounters, MediaTotals, StreamCounters
from proxy.store.sync import StateSync

PREFIX = "toneguard"


@dataclass(frozen=True, slots=True)
class Readings:
    """One scrape's worth of numbers from every plane."""

    media: MediaTotals  # refreshed once a second by the node
    calls: CallCounters
    # The ng server's and secure-pay's counters, by key, until they are typed too.
    calls_active: int
    ng: Mapping[str, int]
    payments: Mapping[str, int]
    payments_active: int
    store: StateSync | None = None  # the shared store's writer ([store] url), None = alone
    # Time to handle each ng command, by command name (a fixed set, see serve.NG_COMMANDS).
    ng_seconds: Mapping[str, Histogram] = field(default_factory=dict)
    draining: bool = False
    offers_refused: int = 0  # new calls' offers refused while draining


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


def _no_value(r: Readings) -> float:
    raise TypeError("a histogram row is read with its histograms function")


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table. ``name`` excludes ``_total``: the exposition adds it to counters.

    Counters and gauges are read with ``read``; a histogram row with ``histograms``, which
    gives one :class:`Histogram` per value of its one ``label`` ("" with no label)."""

    name: str
    kind: Kind
    help: str
    read: Callable[[Readings], float] = _no_value
    histograms: Callable[[Readings], Mapping[str, Histogram]] | None = None
    label: str = ""


def _counter_rows(plane: str, counters: type[StreamCounters] | type[MaskingCounters],
                  get: Callable[[Readings], StreamCounters | MaskingCounters]) -> list[Metric]:
    """One counter per field of a counters dataclass, named and described by its metadata."""
    rows = []
    for f in fields(counters):
        name = f.metadata.get("metric") or f.name

        def read(r: Readings, attribute: str = f.name) -> float:
            return float(getattr(get(r), attribute))

        help_text = f.metadata.get("help") or f.name.replace("_", " ")
        rows.append(Metric(f"{PREFIX}_{plane}_{name}", Kind.COUNTER, help_text, read))
    return rows


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
METRICS: tuple[Metric, ...] = (
    *_counter_rows("media", StreamCounters, lambda r: r.media),
    Metric(f"{PREFIX}_media_streams", G, "media streams allocated now",
           lambda r: r.media.streams),
    Metric(f"{PREFIX}_media_workers", G, "media engines (worker processes) answering",
           lambda r: r.media.workers),
    *_counter_rows("masking", MaskingCounters, lambda r: r.media.masking),
    Metric(f"{PREFIX}_media_tick_seconds", H,
           "time one media tick took: release held packets, decode, detect and mask every "
           "masked stream, send (summed over worker processes)",
           histograms=lambda r: {"": r.media.tick_seconds}),
    Metric(f"{PREFIX}_calls_created", C, "calls created by an offer",
           lambda r: r.calls.created),
    Metric(f"{PREFIX}_calls_deleted", C, "calls deleted", lambda r: r.calls.deleted),
    Metric(f"{PREFIX}_calls_timed_out", C, "calls deleted for lack of media",
           lambda r: r.calls.idle),
    Metric(f"{PREFIX}_calls_active", G, "calls now", lambda r: r.calls_active),
    Metric(f"{PREFIX}_ng_messages_received", C, "ng datagrams received",
           lambda r: r.ng["received"]),
    Metric(f"{PREFIX}_ng_retransmissions", C, "ng retransmissions answered from the cache",
           lambda r: r.ng["retransmissions"]),
    Metric(f"{PREFIX}_ng_messages_dropped", C, "ng datagrams dropped: unparsable, queue full",
           lambda r: r.ng["dropped"]),
    Metric(f"{PREFIX}_ng_errors", C, "ng commands answered with an error",
           lambda r: r.ng["errors"]),
    Metric(f"{PREFIX}_ng_command_seconds", H,
           "time to handle one ng command (parse, call registry, media engine), by command",
           histograms=lambda r: r.ng_seconds, label="command"),
    Metric(f"{PREFIX}_ng_offers_refused", C,
           "offers for new calls refused while draining (Kamailio tries its next node)",
           lambda r: r.offers_refused),
    Metric(f"{PREFIX}_node_draining", G,
           "1 while the node drains (SIGTERM): no new calls, live calls run on",
           lambda r: float(r.draining)),
    Metric(f"{PREFIX}_payments_started", C, "secure-pay sessions started",
           lambda r: r.payments["started"]),
    Metric(f"{PREFIX}_payments_completed", C, "secure-pay sessions tokenised",
           lambda r: r.payments["complete"]),
    Metric(f"{PREFIX}_payments_failed", C, "secure-pay sessions failed or declined",
           lambda r: r.payments["failed"]),
    Metric(f"{PREFIX}_payments_cancelled", C, "secure-pay sessions cancelled",
           lambda r: r.payments["cancelled"]),
    Metric(f"{PREFIX}_payments_gateway_errors", C, "gateway calls that failed (retryable)",
           lambda r: r.payments["gateway_errors"]),
    Metric(f"{PREFIX}_store_degraded", G, "1 while the shared store is not being written",
           lambda r: float(bool(r.store and r.store.degraded))),
    Metric(f"{PREFIX}_store_pending", G, "changed calls waiting to be written to the store",
           lambda r: r.store.pending if r.store else 0),
    Metric(f"{PREFIX}_store_writes", C, "call records written to (or deleted from) the store",
           lambda r: r.store.counters.writes if r.store else 0),
    Metric(f"{PREFIX}_store_failures", C, "store write attempts that failed (retried)",
           lambda r: r.store.counters.failures if r.store else 0),
    Metric(f"{PREFIX}_store_resyncs", C, "full re-syncs of this node's calls after an outage",
           lambda r: r.store.counters.resyncs if r.store else 0),
    Metric(f"{PREFIX}_store_commands", C, "commands sent to the store",
           lambda r: r.store.store.ops if r.store else 0),
    Metric(f"{PREFIX}_payments_active", G, "secure-pay sessions capturing or submitting now",
           lambda r: r.payments_active),
)


class _Table(Collector):
    def __init__(self, metrics: tuple[Metric, ...], read: Callable[[], Readings]) -> None:
        self._metrics = metrics
        self._read = read

    def collect(self) -> Iterator[Family]:
        readings = self._read()
        for m in self._metrics:
            if m.histograms is not None:
                yield _histogram(m, m.histograms(readings))
                continue
            family = CounterMetricFamily if m.kind is Kind.COUNTER else GaugeMetricFamily
            yield family(m.name, m.help, value=m.read(readings))


def _histogram(m: Metric, by_label: Mapping[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(m.name, m.help, labels=[m.label] if m.label else None)
    for value, h in sorted(by_label.items()):
        family.add_metric([value] if m.label else [], h.cumulative(), h.total)
    return family


class Metrics:
    def __init__(self, read: Callable[[], Readings],
                 metrics: tuple[Metric, ...] = METRICS) -> None:
        names = [m.name for m in metrics]
        for m in metrics:
            if (m.kind is Kind.HISTOGRAM) != (m.histograms is not None):
                raise ValueError(f"{m.name}: a histogram row, and only one, reads histograms")
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"metric names repeat: {repeated}")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Table(metrics, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
