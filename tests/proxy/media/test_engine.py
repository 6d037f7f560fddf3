"""The in-process media engine's socket layer: bursts, many streams, strangers, release."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import struct
from collections.abc import Callable

import pytest

from proxy.media.engine import LocalMediaEngine
from proxy.media.runtime import raise_open_file_limit
from proxy.media.types import PortsExhaustedError, StreamConfig, StreamStats


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _rtp(seq: int, ssrc: int = 1) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes(160)


async def _collect(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await loop.sock_recv(sock, 2048))
    return got


async def _stats_once(engine: LocalMediaEngine, stream_id: str,
                      condition: Callable[[StreamStats], bool],
                      timeout: float = 5.0) -> StreamStats:
    """The stream's stats once ``condition`` holds: datagrams on a stream's two sockets (its
    own and the one connected to the latched endpoint) are read in no fixed order."""
    async with asyncio.timeout(timeout):
        while not condition(stats := await engine.stats(stream_id)):
            await asyncio.sleep(0.01)
    return stats


async def _pair(engine: LocalMediaEngine, call: str, caller: socket.socket,
                agent: socket.socket) -> tuple[int, int]:
    a = await engine.allocate(f"{call}-a", call, rtcp_mux=False)
    b = await engine.allocate(f"{call}-b", call, rtcp_mux=False)
    await engine.configure(f"{call}-a", StreamConfig(peer=caller.getsockname()))
    await engine.configure(f"{call}-b", StreamConfig(peer=agent.getsockname()))
    await engine.link(f"{call}-a", f"{call}-b")
    return a.rtp_port, b.rtp_port


async def test_a_burst_queued_on_one_socket_is_relayed_whole_and_in_order(
        engine: LocalMediaEngine) -> None:
    caller, agent = _udp(), _udp()
    port_a, _ = await _pair(engine, "c", caller, agent)
    for seq in range(100):  # all queued before the engine runs once
        caller.sendto(_rtp(seq), ("127.0.0.1", port_a))
    got = await _collect(agent, 100)
    assert [struct.unpack_from("!H", p, 2)[0] for p in got] == list(range(100))
    assert (await engine.stats("c-a")).packets_in == 100


async def test_many_streams_each_relay_their_own_packets(engine: LocalMediaEngine) -> None:
    calls = [(_udp(), _udp()) for _ in range(40)]
    ports = [await _pair(engine, f"c{i}", *pair) for i, pair in enumerate(calls)]
    for i, ((caller, agent), (port_a, port_b)) in enumerate(zip(calls, ports, strict=True)):
        caller.sendto(_rtp(1, ssrc=i), ("127.0.0.1", port_a))
        agent.sendto(_rtp(2, ssrc=1000 + i), ("127.0.0.1", port_b))
    for i, (caller, agent) in enumerate(calls):
        assert struct.unpack_from("!I", (await _collect(agent, 1))[0], 8)[0] == i
        assert struct.unpack_from("!I", (await _collect(caller, 1))[0], 8)[0] == 1000 + i


async def test_strangers_and_junk_are_counted_not_relayed_and_release_is_clean(
        engine: LocalMediaEngine) -> None:
    caller, agent, stranger = _udp(), _udp(), _udp()
    port_a, _ = await _pair(engine, "c", caller, agent)
    caller.sendto(_rtp(1), ("127.0.0.1", port_a))  # latches the caller
    await _collect(agent, 1)
    stranger.sendto(_rtp(2), ("127.0.0.1", port_a))
    caller.sendto(b"\x00junk", ("127.0.0.1", port_a))
    caller.sendto(_rtp(3), ("127.0.0.1", port_a))
    got = await _collect(agent, 1)
    assert struct.unpack_from("!H", got[0], 2)[0] == 3  # the stranger's and the junk never came
    stats = await _stats_once(engine, "c-a", lambda s: s.errors >= 2)
    assert (stats.packets_in, stats.errors) == (2, 2)
    with pytest.raises(BlockingIOError):
        agent.recv(2048)  # nothing else was relayed
    await engine.release("c-a")
    await engine.release("c-b")
    caller.sendto(_rtp(4), ("127.0.0.1", port_a))  # to a closed port: nothing breaks
    totals = await engine.totals()  # released streams still count: the totals never go back
    assert (totals.streams, totals.workers) == (0, 1)
    assert (totals.packets_in, totals.packets_out, totals.errors) == (2, 2, 2)


async def test_a_new_address_in_sdp_latches_afresh_and_replies_follow_it(
        engine: LocalMediaEngine) -> None:
    old_phone, new_phone, agent = _udp(), _udp(), _udp()
    port_a, port_b = await _pair(engine, "c", old_phone, agent)
    old_phone.sendto(_rtp(1), ("127.0.0.1", port_a))
    await _collect(agent, 1)
    agent.sendto(_rtp(2), ("127.0.0.1", port_b))
    assert len(await _collect(old_phone, 1)) == 1  # replies go to the latched phone
    # A re-INVITE moves the caller (a transfer, a new NAT binding): latch afresh.
    await engine.configure("c-a", StreamConfig(peer=new_phone.getsockname()))
    new_phone.sendto(_rtp(3), ("127.0.0.1", port_a))
    assert struct.unpack_from("!H", (await _collect(agent, 1))[0], 2)[0] == 3
    old_phone.sendto(_rtp(4), ("127.0.0.1", port_a))  # the old address is now a stranger
    agent.sendto(_rtp(5), ("127.0.0.1", port_b))
    assert struct.unpack_from("!H", (await _collect(new_phone, 1))[0], 2)[0] == 5
    stats = await _stats_once(engine, "c-a", lambda s: s.errors >= 1)
    assert stats.errors == 1 and stats.endpoint == new_phone.getsockname()
    new_phone.sendto(_rtp(6), ("127.0.0.1", port_a))  # after the old phone's, same socket path
    assert struct.unpack_from("!H", (await _collect(agent, 1))[0], 2)[0] == 6
    with pytest.raises(BlockingIOError):
        old_phone.recv(2048)  # nothing more reached the old address


async def test_ipv6_media_is_relayed_and_latched(media_ports: tuple[int, int]) -> None:
    engine = LocalMediaEngine("::1", *media_ports)
    await engine.start()
    try:
        caller, agent = (socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2))
        for s in (caller, agent):
            s.bind(("::1", 0))
            s.setblocking(False)
        a = await engine.allocate("v6-a", "v6", rtcp_mux=True)
        b = await engine.allocate("v6-b", "v6", rtcp_mux=True)
        await engine.configure("v6-a", StreamConfig(peer=caller.getsockname()[:2], rtcp_mux=True))
        await engine.configure("v6-b", StreamConfig(peer=agent.getsockname()[:2], rtcp_mux=True))
        await engine.link("v6-a", "v6-b")
        caller.sendto(_rtp(1), ("::1", a.rtp_port))
        agent.sendto(_rtp(2), ("::1", b.rtp_port))
        assert struct.unpack_from("!H", (await _collect(agent, 1))[0], 2)[0] == 1
        assert struct.unpack_from("!H", (await _collect(caller, 1))[0], 2)[0] == 2
        assert (await engine.stats("v6-a")).endpoint == caller.getsockname()[:2]
    finally:
        await engine.stop()


async def test_running_out_of_file_descriptors_is_named_not_reported_as_ports(
        engine: LocalMediaEngine) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 6, hard))
    try:
        with pytest.raises(PortsExhaustedError, match="out of file descriptors"):
            for i in range(10):
                await engine.allocate(f"s{i}", "c", rtcp_mux=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await engine.allocate("after", "c", rtcp_mux=False)  # and it recovers once fds are back


def test_the_open_file_limit_is_lifted_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        assert raise_open_file_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (
            hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_released_port_is_handed_out_again_only_when_no_other_is_free(
        media_ports: tuple[int, int]) -> None:
    """The ended call's phone may still send to its port for a moment (its last packets cross
    the BYE): the next call gets another port while any other is free — over many rounds, so
    a random order alone would have picked the released one — and the released one still
    when nothing else is left."""
    low = media_ports[0]
    engine = LocalMediaEngine("127.0.0.1", low, low + 8)  # four even ports
    await engine.start()
    try:
        for round_ in range(20):
            ended = (await engine.allocate(f"old{round_}", "c", rtcp_mux=True)).rtp_port
            await engine.release(f"old{round_}")
            new = (await engine.allocate(f"new{round_}", "c", rtcp_mux=True)).rtp_port
            assert new != ended, f"round {round_}: port {ended} handed out again at once"
            await engine.release(f"new{round_}")
        taken = {(await engine.allocate(f"all{i}", "c", rtcp_mux=True)).rtp_port
                 for i in range(4)}
        assert taken == {low, low + 2, low + 4, low + 6}  # quarantine never refuses a call
    finally:
        await engine.stop()


async def test_a_port_another_socket_holds_is_never_shared(media_ports: tuple[int, int]) -> None:
    """The RTP socket joins an SO_REUSEPORT group (for its connected twin); the kernel would let
    it share a port with any other socket of this user that asked for the same (another node on
    an overlapping range, a worker outliving its node) and split the stream's datagrams between
    them. A port someone holds is skipped, and a range with no other port is exhausted."""
    from proxy.media.types import PortsExhaustedError
    low = media_ports[0]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", low))
    engine = LocalMediaEngine("127.0.0.1", low, low + 4)  # two even ports: low, low + 2
    await engine.start()
    try:
        endpoint = await engine.allocate("a", "c", rtcp_mux=True)
        assert endpoint.rtp_port == low + 2
        with pytest.raises(PortsExhaustedError):
            await engine.allocate("b", "c", rtcp_mux=True)
        with pytest.raises(PortsExhaustedError, match=f"port {low}"):
            await engine.allocate("r", "c", rtcp_mux=True, port=low)  # a restored call's port
    finally:
        await engine.stop()
        squatter.close()
