"""A media engine without sockets: what call control asked for, kept in memory.

For call-control tests (and tools) that need to see how streams were allocated, configured and
linked without binding ports or moving packets. Ports are handed out in pairs from a range, as
the real engine does, so exhaustion behaves the same; events can be injected with
:meth:`MemoryMediaEngine.publish`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.media.types import (
    LocalEndpoint,
    MediaError,
    MediaEvent,
    MediaTotals,
    PortsExhaustedError,
    RestoredStream,
    StreamConfig,
    StreamStats,
    UnknownStreamError,
)


@dataclass
class MemoryStream:
    stream_id: str
    call_id: str
    local: LocalEndpoint
    config: StreamConfig = field(default_factory=StreamConfig)
    linked: str | None = None
    outputs: list[str] = field(default_factory=list)  # add_output sinks, in order
    configured: int = 0  # how many times configure() was called


class MemoryMediaEngine:
    """A :class:`proxy.media.types.MediaEngine` that records instead of relaying."""

    def __init__(self, address: str = "127.0.0.1", port_min: int = 30000,
                 port_max: int = 30100) -> None:
        self._address = address
        self._free = list(range(port_max - 1 - (port_max - 1 - port_min) % 2, port_min - 1, -2))
        self.streams: dict[str, MemoryStream] = {}
        self.released: list[str] = []
        self._subscribers: list[Callable[[MediaEvent], None]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for stream_id in list(self.streams):
            await self.release(stream_id)

    async def allocate(self, stream_id: str, call_id: str, *, rtcp_mux: bool,
                       port: int | None = None) -> LocalEndpoint:
        if stream_id in self.streams:
            return self.streams[stream_id].local
        if port is not None:
            if port not in self._free:
                raise PortsExhaustedError(f"port {port} is taken or outside the range")
            self._free.remove(port)
        elif not self._free:
            raise PortsExhaustedError("no free port pair in the memory engine's range")
        else:
            port = self._free.pop()
        local = LocalEndpoint(self._address, port, port if rtcp_mux else port + 1)
        self.streams[stream_id] = MemoryStream(stream_id, call_id, local,
                                               StreamConfig(rtcp_mux=rtcp_mux))
        return local

    def _get(self, stream_id: str) -> MemoryStream:
        try:
            return self.streams[stream_id]
        except KeyError as exc:
            raise UnknownStreamError(stream_id) from exc

    async def configure(self, stream_id: str, config: StreamConfig) -> None:
        stream = self._get(stream_id)
        stream.config = config
        stream.configured += 1

    async def restore(self, call_id: str, streams: list[RestoredStream],
                      links: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
        try:
            for s in streams:
                await self.allocate(s.stream_id, call_id, rtcp_mux=s.rtcp_mux, port=s.port)
                await self.configure(s.stream_id, s.config)
            for a, b in links:
                await self.link(a, b)
            for source, sink in outputs:
                await self.add_output(source, sink)
        except MediaError:
            for s in streams:
                await self.release(s.stream_id)
            raise

    async def link(self, a: str, b: str) -> None:
        sa, sb = self._get(a), self._get(b)
        sa.linked, sb.linked = b, a

    async def add_output(self, source: str, sink: str) -> None:
        s, _ = self._get(source), self._get(sink)
        if sink not in s.outputs:
            s.outputs.append(sink)

    async def remove_output(self, source: str, sink: str) -> None:
        stream = self.streams.get(source)
        if stream is not None and sink in stream.outputs:
            stream.outputs.remove(sink)

    async def release(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        for other in self.streams.values():  # as the real engine: a gone sink gets nothing
            if stream_id in other.outputs:
                other.outputs.remove(stream_id)
        if stream is not None:
            self._free.append(stream.local.rtp_port)
            self.released.append(stream_id)

    async def stats(self, stream_id: str) -> StreamStats:
        self._get(stream_id)
        return StreamStats()

    async def totals(self) -> MediaTotals:
        return MediaTotals(streams=len(self.streams), workers=0)

    def subscribe(self, callback: Callable[[MediaEvent], None]) -> None:
        self._subscribers.append(callback)

    def publish(self, event: MediaEvent) -> None:
        """Deliver ``event`` to subscribers as the real engine's tick would."""
        for callback in self._subscribers:
            callback(event)
