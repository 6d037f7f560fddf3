"""Processing-time histograms as typed values: recorded cheaply where the work is done, summed
across worker processes, exported by ``/metrics`` as Prometheus histograms.

The media plane cannot hold a ``prometheus_client.Histogram`` (its numbers live in worker
processes and travel to the node as :class:`~proxy.media.types.MediaTotals`), so a histogram
here is a frozen value — fixed bucket bounds, a count per bucket, the sum — that adds up with
``+`` like the counters beside it, and a mutable :class:`Recorder` that fills one. Observing is
one ``bisect`` and two additions: it is done once per tick or per ng command, never per packet.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

# Upper bounds in seconds (Prometheus ``le``, inclusive). A tick's work must stay well under
# its 20 ms; ng commands are answered in well under a millisecond unless the engine stalls.
TICK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02,
                0.03, 0.05, 0.1)
NG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
              0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations by bucket: ``counts[i]`` fell in (``bounds[i-1]``, ``bounds[i]``]; the
    last count is above every bound (+Inf). ``total`` is their sum in seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le``, observations at or below it) as Prometheus exposes buckets, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def __add__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        if other.bounds != self.bounds:
            raise ValueError(f"histogram buckets differ: {self.bounds} vs {other.bounds}")
        return Histogram(self.bounds, tuple(a + b for a, b in
                                            zip(self.counts, other.counts, strict=True)),
                         self.total + other.total)


class Recorder:
    """The mutable side: ``observe(seconds)``; ``snapshot()`` gives the :class:`Histogram`."""

    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be increasing and not empty: {bounds}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._total += seconds

    def snapshot(self) -> Histogram:
        return Histogram(self._bounds, tuple(self._counts), self._total)
