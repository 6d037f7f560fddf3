"""A stream with several outputs (a supervisor's subscription): what arrives is sent to the
linked stream and to every output, masked the same way; removing or releasing an output stops
its copy; the worker pool does the same across its pipe."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from dsp import tones
from proxy.control.calls import CallRegistry
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.types import MediaError, StreamConfig
from proxy.media.workers import WorkerPoolEngine


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 7) + bytes(160)


async def _seqs(sock: socket.socket, count: int, timeout: float = 5.0) -> list[int]:
    loop = asyncio.get_running_loop()
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(struct.unpack_from("!H", await loop.sock_recv(sock, 2048), 2)[0])
    return got


def _nothing_queued(sock: socket.socket) -> bool:
    try:
        sock.recv(2048)
    except BlockingIOError:
        return True
    return False


async def test_outputs_get_what_the_linked_stream_gets_until_removed_or_released(
        engine: LocalMediaEngine) -> None:
    caller, agent, supervisor, second = _udp(), _udp(), _udp(), _udp()
    local = await engine.allocate("a", "c", rtcp_mux=False)
    for sid, sock in (("b", agent), ("s", supervisor), ("t", second)):
        await engine.allocate(sid, "c", rtcp_mux=False)
        await engine.configure(sid, StreamConfig(peer=sock.getsockname()))
    await engine.configure("a", StreamConfig(peer=caller.getsockname()))
    await engine.link("a", "b")
    await engine.add_output("a", "s")
    await engine.add_output("a", "s")  # twice is once
    await engine.add_output("a", "t")
    with pytest.raises(MediaError):
        await engine.add_output("a", "a")
    to_a = ("127.0.0.1", local.rtp_port)
    caller.sendto(_rtp(1), to_a)
    assert await _seqs(agent, 1) == [1]
    assert await _seqs(supervisor, 1) == [1] and await _seqs(second, 1) == [1]
    await engine.remove_output("a", "s")
    await engine.release("t")  # a released output is dropped from its source
    caller.sendto(_rtp(2), to_a)
    # One synchronous relay call sends the linked copy and every output's (loopback delivers
    # at once): with the agent's copy here, any output's would be queued already.
    assert await _seqs(agent, 1) == [2]
    assert _nothing_queued(supervisor) and _nothing_queued(second)
    assert (await engine.stats("s")).packets_out == 1
    await engine.remove_output("a", "gone")  # nothing to remove: no error


@pytest.fixture
async def pool(media_ports: tuple[int, int]) -> AsyncIterator[WorkerPoolEngine]:
    engine = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2)
    await engine.start()
    yield engine
    await engine.stop()


async def test_a_subscription_in_a_worker_gets_the_masked_audio(pool: WorkerPoolEngine) -> None:
    registry = CallRegistry(pool, address="127.0.0.1")
    caller, agent, supervisor = [await RtpPeer(seed=n).start() for n in range(3)]
    try:
        await registry.handle({"command": "offer", "call-id": "w", "from-tag": "c",
                               "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": "w", "from-tag": "c",
                                        "to-tag": "a", "sdp": audio_sdp("127.0.0.1", agent.port)})
        await registry.handle({"command": "subscribe request", "call-id": "w", "from-tag": "c",
                               "to-tag": "s"})
        await registry.handle({"command": "subscribe answer", "call-id": "w", "to-tag": "s",
                               "sdp": audio_sdp("127.0.0.1", supervisor.port)})
        keyed = tones.dtmf_sequence("4111", tone_ms=70, gap_ms=70, lead_ms=200, tail_ms=400,
                                    low_dbm0=-10.0)
        sent = await caller.play(keyed, media_endpoint(answer["sdp"]))
        for peer in (agent, supervisor):
            await peer.wait_for(sent, timeout=5)
            heard = peer.received.audio()
            assert heard.size >= sent * 160 * 9 // 10
            assert spandsp_detect(heard) == ""
    finally:
        for peer in (caller, agent, supervisor):
            peer.close()
        await registry.close()
