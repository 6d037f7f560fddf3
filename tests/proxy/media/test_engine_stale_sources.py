"""A port's earlier sources never latch the next stream on it (the engine's rule, over real
sockets): refused however long after the release, also when the port's last stream never
latched anyone; let in when the new SDP names exactly that address and port (the same phone
calling again, from a fixed RTP port)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from proxy.media.engine import LocalMediaEngine
from proxy.media.types import StreamConfig


class _Clock:
    """The engine's clock, moved by the test (the port quarantine is 10 s of it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def one_pair(media_ports: tuple[int, int]) -> AsyncIterator[tuple[LocalMediaEngine,
                                                                      _Clock]]:
    """An engine whose range holds two port pairs: one call (two streams) at a time."""
    clock = _Clock()
    engine = LocalMediaEngine("127.0.0.1", media_ports[0], media_ports[0] + 3, clock=clock)
    await engine.start()
    yield engine, clock
    await engine.stop()


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes(160)


async def _call(engine: LocalMediaEngine, call: str, caller: tuple[str, int],
                agent: socket.socket) -> dict[int, str]:
    """Caller stream ``<call>-a`` (SDP: ``caller``) linked to the agent's ``<call>-b``; which
    stream each port went to."""
    a = await engine.allocate(f"{call}-a", call, rtcp_mux=False)
    b = await engine.allocate(f"{call}-b", call, rtcp_mux=False)
    await engine.configure(f"{call}-a", StreamConfig(peer=caller))
    await engine.configure(f"{call}-b", StreamConfig(peer=agent.getsockname()))
    await engine.link(f"{call}-a", f"{call}-b")
    return {a.rtp_port: f"{call}-a", b.rtp_port: f"{call}-b"}


async def _end(engine: LocalMediaEngine, call: str) -> None:
    for stream in (f"{call}-a", f"{call}-b"):
        await engine.release(stream)


async def _ssrcs(agent: socket.socket, count: int, timeout: float = 3.0) -> list[int]:
    loop = asyncio.get_running_loop()
    got: list[int] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(struct.unpack_from("!I", await loop.sock_recv(agent, 2048), 8)[0])
    return got


async def _refused(engine: LocalMediaEngine, stream_id: str, count: int) -> None:
    async with asyncio.timeout(3.0):
        while (await engine.stats(stream_id)).stranger_packets < count:
            await asyncio.sleep(0.01)


async def test_an_old_source_is_refused_on_its_reused_port_long_after_the_quarantine(
        one_pair: tuple[LocalMediaEngine, _Clock]) -> None:
    engine, clock = one_pair
    old, new, agent = _udp(), _udp(), _udp()
    port = next(p for p, s in (await _call(engine, "old", old.getsockname(), agent)).items()
                if s == "old-a")
    old.sendto(_rtp(1, ssrc=0xA), ("127.0.0.1", port))
    assert await _ssrcs(agent, 1) == [0xA]  # latched and relayed
    await _end(engine, "old")
    clock.now += 3600  # an hour later: long past the quarantine (either stream may get it)
    reused = (await _call(engine, "new", new.getsockname(), agent))[port]
    old.sendto(_rtp(2, ssrc=0xA), ("127.0.0.1", port))  # the old phone, first
    await _refused(engine, reused, 1)
    assert (await engine.stats(reused)).endpoint is None
    if reused == "new-a":  # the caller's port: the real caller still latches and is heard
        new.sendto(_rtp(3, ssrc=0xB), ("127.0.0.1", port))
        assert await _ssrcs(agent, 1) == [0xB]


async def test_an_old_source_is_still_refused_after_a_stream_that_latched_no_one(
        one_pair: tuple[LocalMediaEngine, _Clock]) -> None:
    """A call set up and ended before any media must not wash the port's memory clean."""
    engine, _ = one_pair
    old, new, agent = _udp(), _udp(), _udp()
    port = next(p for p, s in (await _call(engine, "c1", old.getsockname(), agent)).items()
                if s == "c1-a")
    old.sendto(_rtp(1, ssrc=0xA), ("127.0.0.1", port))
    assert await _ssrcs(agent, 1) == [0xA]
    await _end(engine, "c1")
    await _call(engine, "c2", new.getsockname(), agent)  # no media: never latched
    await _end(engine, "c2")
    reused = (await _call(engine, "c3", new.getsockname(), agent))[port]
    old.sendto(_rtp(2, ssrc=0xA), ("127.0.0.1", port))
    await _refused(engine, reused, 1)
    assert (await engine.stats(reused)).endpoint is None


async def test_the_same_phone_named_exactly_by_the_new_sdp_latches_its_old_port_again(
        one_pair: tuple[LocalMediaEngine, _Clock]) -> None:
    """A phone with a fixed RTP port calling again gets its old ToneGuard port (released
    ports come back in release order: the caller stream's first)."""
    engine, _ = one_pair
    phone, agent = _udp(), _udp()
    port = next(p for p, s in (await _call(engine, "c1", phone.getsockname(), agent)).items()
                if s == "c1-a")
    phone.sendto(_rtp(1, ssrc=0xA), ("127.0.0.1", port))
    assert await _ssrcs(agent, 1) == [0xA]
    await _end(engine, "c1")
    assert (await _call(engine, "c2", phone.getsockname(), agent))[port] == "c2-a"
    phone.sendto(_rtp(2, ssrc=0xC), ("127.0.0.1", port))
    assert await _ssrcs(agent, 1) == [0xC]
    stats = await engine.stats("c2-a")
    assert stats.stranger_packets == 0 and stats.endpoint == phone.getsockname()


def _rr(ssrc: int) -> bytes:
    """A minimal RTCP receiver report (no report blocks)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


async def test_an_old_sources_rtcp_is_refused_once_the_new_caller_latched(
        one_pair: tuple[LocalMediaEngine, _Clock]) -> None:
    """RTCP latches on the RTP endpoint's IP: the ended call's phone shares it, so only the
    stale-source rule keeps its reports (its SSRC, its CNAME) from the next call's agent."""
    engine, _ = one_pair
    old_rtp, new, agent = _udp(), _udp(), _udp()
    old_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old_rtcp.bind(("127.0.0.1", 0))
    try:
        port = next(p for p, s in (await _call(engine, "c1", old_rtp.getsockname(),
                                               agent)).items() if s == "c1-a")
        old_rtp.sendto(_rtp(1, ssrc=0xA), ("127.0.0.1", port))
        assert await _ssrcs(agent, 1) == [0xA]
        old_rtcp.sendto(_rr(0xA), ("127.0.0.1", port + 1))
        async with asyncio.timeout(3.0):  # the old call's RTCP latched its RTCP endpoint
            while (await engine.stats("c1-a")).rtcp_in < 1:
                await asyncio.sleep(0.01)
        await _end(engine, "c1")
        assert (await _call(engine, "c2", new.getsockname(), agent))[port] == "c2-a"
        new.sendto(_rtp(2, ssrc=0xB), ("127.0.0.1", port))
        assert await _ssrcs(agent, 1) == [0xB]  # the new caller latched
        old_rtcp.sendto(_rr(0xA), ("127.0.0.1", port + 1))
        await _refused(engine, "c2-a", 1)
        assert (await engine.stats("c2-a")).rtcp_in == 0
    finally:
        old_rtcp.close()
