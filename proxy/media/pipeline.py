"""The seam between the media engine (sockets, SRTP, timing) and what happens to masked audio.

For every stream whose ``StreamConfig.masking`` is set, the engine hands each received packet
(SRTP already removed, parsed) to the worker's single pipeline, and every tick asks it for what
to send. The masking pipeline (proxy.media.masking) holds audio back, detects and replaces DTMF; the
passthrough pipeline here returns packets as pushed (for tests, benchmarks and as the reference
for what "no added processing" costs).
"""

from __future__ import annotations

from typing import Protocol

from proxy.media.policy import MaskingPolicy
from proxy.media.rtp import RtpPacket
from proxy.media.types import DigitEvent, MaskingCounters


class AudioPipeline(Protocol):
    def open(self, stream_id: str, policy: MaskingPolicy) -> None: ...

    def update(self, stream_id: str, policy: MaskingPolicy) -> None: ...

    def close(self, stream_id: str) -> None: ...

    def push(self, stream_id: str, packet: RtpPacket, codecs: dict[int, str],
             now: float) -> None: ...

    def tick(self, now: float) -> list[tuple[str, RtpPacket]]:
        """(stream it arrived on, packet to send out of the linked stream), in send order."""
        ...

    def drain_events(self) -> list[DigitEvent]: ...

    def counters(self) -> MaskingCounters:
        """What the pipeline has counted since it was made, over all its streams."""
        ...


class PassthroughPipeline:
    """Forwards every packet on the next tick, untouched, and detects nothing."""

    def __init__(self) -> None:
        self._queued: list[tuple[str, RtpPacket]] = []
        self._open: set[str] = set()

    def open(self, stream_id: str, policy: MaskingPolicy) -> None:
        self._open.add(stream_id)

    def update(self, stream_id: str, policy: MaskingPolicy) -> None:
        self._open.add(stream_id)

    def close(self, stream_id: str) -> None:
        self._open.discard(stream_id)
        self._queued = [(s, p) for s, p in self._queued if s != stream_id]

    def push(self, stream_id: str, packet: RtpPacket, codecs: dict[int, str],
             now: float) -> None:
        if stream_id in self._open:
            self._queued.append((stream_id, packet))

    def tick(self, now: float) -> list[tuple[str, RtpPacket]]:
        out, self._queued = self._queued, []
        return out

    def drain_events(self) -> list[DigitEvent]:
        return []

    def counters(self) -> MaskingCounters:
        return MaskingCounters()  # it masks nothing
