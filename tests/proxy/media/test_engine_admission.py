"""Who may send to a stream, one rule per test, fast (loopback UDP, in-process engine, no audio).

Each test sends datagrams to a real LocalMediaEngine and checks only "did it arrive" and "was
it counted as a stranger". A packet that must NOT arrive is followed by a packet from the
legitimate source; the test waits until the engine has handled every datagram (its counters
say so), then reads what the far end received: a datagram the engine relayed was queued on
the far end's socket when the engine sent it (loopback), so nothing later can still come.
The engine's clock is the test's, so the learning window is exact, not timed.

The same rules with decoded audio (slower: leaks measured by DTMF decoders) are in
test_failclosed.py; these are the ones the mutation run uses for engine.py's admission core.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from proxy.media.engine import LocalMediaEngine
from proxy.media.srtp import SrtpReceiver, SrtpSender
from proxy.media.types import Address, SrtpParams, StreamConfig, StreamStats

HOST = "127.0.0.1"
STRANGER = "127.0.0.2"  # loopback too (127/8), but another IP
OTHER_PORT = 9  # the SDP's port where the caller does not send from (a NAT'd port)
WINDOW = 5.0  # StreamConfig's default learning window


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(media_ports: tuple[int, int], clock: Clock) -> AsyncIterator[LocalMediaEngine]:
    # Not started: the relay path runs on socket readiness; the tick only serves masking.
    engine = LocalMediaEngine(HOST, *media_ports, clock=clock)
    yield engine
    await engine.stop()


@pytest.fixture
def udp() -> Iterator[object]:
    made: list[socket.socket] = []

    def _udp(host: str = HOST, port: int = 0) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        s.setblocking(False)
        made.append(s)
        return s

    yield _udp
    for s in made:
        s.close()


def rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes(20)


def rtcp(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)  # an empty receiver report


def seqs(datagrams: list[bytes]) -> list[int]:
    return [struct.unpack_from("!H", d, 2)[0] for d in datagrams]


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` now (non-blocking)."""
    got: list[bytes] = []
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


@dataclass
class Call:
    engine: LocalMediaEngine
    a: Address  # the caller-facing stream's RTP address (where the caller sends)
    a_rtcp: Address
    b: Address  # the agent-facing stream's RTP address
    b_rtcp: Address

    async def handled(self, count: int, stream: str = "a", timeout: float = 2.0) -> StreamStats:
        """The stream's stats once it has handled ``count`` datagrams (relayed, refused or
        dropped as errors)."""
        async with asyncio.timeout(timeout):
            while True:
                s = await self.engine.stats(stream)
                if s.packets_in + s.errors + s.rtcp_in >= count:
                    return s
                await asyncio.sleep(0.002)


async def make_call(engine: LocalMediaEngine, agent: socket.socket, *,
                    agent_rtcp: socket.socket | None = None, a_mux: bool = False,
                    **a_config: object) -> Call:
    """Streams "a" (faces the caller, configured with ``a_config``) and "b" (faces the agent,
    whose RTP and RTCP addresses are the given sockets), linked."""
    a = await engine.allocate("a", "c", rtcp_mux=a_mux)
    b = await engine.allocate("b", "c", rtcp_mux=False)
    await engine.configure("a", StreamConfig(rtcp_mux=a_mux, **a_config))  # type: ignore[arg-type]
    await engine.configure("b", StreamConfig(
        peer=agent.getsockname(),
        rtcp_peer=agent_rtcp.getsockname() if agent_rtcp is not None else None))
    await engine.link("a", "b")
    return Call(engine, (HOST, a.rtp_port), (HOST, a.rtcp_port), (HOST, b.rtp_port),
                (HOST, b.rtcp_port))


# --- strict source -----------------------------------------------------------------------------


async def test_strict_source_admits_only_the_sdp_address_and_port(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent = udp(), udp()  # type: ignore[operator]
    same_ip = udp()  # type: ignore[operator]
    other_ip = udp(STRANGER, caller.getsockname()[1])  # type: ignore[operator]
    call = await make_call(engine, agent, peer=caller.getsockname(), strict_source=True)
    same_ip.sendto(rtp(1), call.a)
    other_ip.sendto(rtp(2), call.a)
    caller.sendto(rtp(3), call.a)
    stats = await call.handled(3)
    assert seqs(drain(agent)) == [3]
    assert (stats.stranger_packets, stats.errors, stats.packets_in) == (2, 2, 1)
    assert stats.endpoint == caller.getsockname()


async def test_strict_source_without_a_usable_sdp_address_admits_no_one(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent = udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, peer=("0.0.0.0", caller.getsockname()[1]),
                           strict_source=True, learn_any_source=True)
    caller.sendto(rtp(1), call.a)
    stats = await call.handled(1)
    assert stats.stranger_packets == 1 and stats.endpoint is None
    assert drain(agent) == []


# --- the SDP address, the learning window ------------------------------------------------------


async def test_the_sdp_ip_latches_from_any_port_at_any_time_then_only_that_source(
        engine: LocalMediaEngine, udp: object, clock: Clock) -> None:
    caller, agent, stranger = udp(), udp(), udp(STRANGER)  # type: ignore[operator]
    later = udp()  # type: ignore[operator]  # same IP as the caller, another port
    call = await make_call(engine, agent, peer=(HOST, OTHER_PORT))
    clock.now += 60  # long after the learning window: the SDP's IP needs none
    with capture_logs() as logs:
        stranger.sendto(rtp(1), call.a)
        caller.sendto(rtp(2), call.a)
        stats = await call.handled(2)
    assert seqs(drain(agent)) == [2]
    assert [e for e in logs if e["log_level"] == "info"] == [
        {"event": "media latched", "log_level": "info", "stream": "a", "call_id": "c",
         "source": HOST, "source_port": caller.getsockname()[1]}]
    assert stats.endpoint == caller.getsockname() and stats.stranger_packets == 1
    # Latched: the exact source only, not another port of its IP.
    later.sendto(rtp(3), call.a)
    caller.sendto(rtp(4), call.a)
    stats = await call.handled(4)
    assert seqs(drain(agent)) == [4]
    assert stats.stranger_packets == 2 and stats.endpoint == caller.getsockname()
    # The agent's packets go to the latched source.
    agent.sendto(rtp(5), call.b)
    await call.handled(1, "b")
    assert seqs(drain(caller)) == [5]
    assert drain(later) == [] and drain(stranger) == []


@pytest.mark.parametrize("peer", [None, ("0.0.0.0", OTHER_PORT), ("", OTHER_PORT)])
@pytest.mark.parametrize(("after", "latches"), [(WINDOW - 0.01, True), (WINDOW, False)])
async def test_no_usable_sdp_address_learns_any_source_only_within_the_window(
        engine: LocalMediaEngine, udp: object, clock: Clock, peer: Address | None,
        after: float, latches: bool) -> None:
    agent, stranger = udp(), udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, peer=peer)
    clock.now += after
    stranger.sendto(rtp(1), call.a)
    stats = await call.handled(1)
    assert seqs(drain(agent)) == ([1] if latches else [])
    assert stats.endpoint == (stranger.getsockname() if latches else None)
    assert stats.stranger_packets == (0 if latches else 1)


async def test_a_host_name_in_the_sdp_matches_no_source(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent = udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, peer=("phone.invalid", caller.getsockname()[1]))
    caller.sendto(rtp(1), call.a)  # within the window, but the SDP named someone
    stats = await call.handled(1)
    assert drain(agent) == [] and stats.stranger_packets == 1


@pytest.mark.parametrize("learn_any", [True, False])
async def test_another_ip_latches_only_with_learn_any_source_and_only_in_the_window(
        engine: LocalMediaEngine, udp: object, clock: Clock, learn_any: bool) -> None:
    agent, caller = udp(), udp()  # type: ignore[operator]
    late, early = udp(STRANGER), udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, peer=(HOST, OTHER_PORT), learn_any_source=learn_any,
                           symmetric=False)  # asymmetric: nothing latches, each is judged anew
    clock.now += WINDOW - 0.01
    early.sendto(rtp(1), call.a)
    await call.handled(1)
    clock.now += 0.01  # the window has closed: another IP is refused, the SDP's still works
    late.sendto(rtp(2), call.a)
    caller.sendto(rtp(3), call.a)
    stats = await call.handled(3)
    assert seqs(drain(agent)) == ([1, 3] if learn_any else [3])
    assert stats.stranger_packets == (1 if learn_any else 2)
    assert stats.endpoint is None  # asymmetric: never latched


async def test_reconfiguring_reopens_the_window_of_an_unlatched_stream(
        engine: LocalMediaEngine, udp: object, clock: Clock) -> None:
    agent, stranger = udp(), udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent)
    clock.now += 60
    await engine.configure("b", StreamConfig(peer=agent.getsockname()))  # the answer came
    clock.now += WINDOW - 0.01
    stranger.sendto(rtp(1), call.a)
    stats = await call.handled(1)
    assert seqs(drain(agent)) == [1] and stats.endpoint == stranger.getsockname()


# --- handover ----------------------------------------------------------------------------------


@pytest.mark.parametrize("handover", [True, False])
async def test_plain_rtp_handover_moves_only_to_a_source_the_latch_rules_admit(
        engine: LocalMediaEngine, udp: object, clock: Clock, handover: bool) -> None:
    caller, moved, agent = udp(), udp(), udp()  # type: ignore[operator]
    stranger = udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, peer=(HOST, OTHER_PORT), media_handover=handover)
    clock.now += 60
    caller.sendto(rtp(1), call.a)
    await call.handled(1)
    stranger.sendto(rtp(2), call.a)  # plain RTP proves nothing: another IP never takes over
    moved.sendto(rtp(3), call.a)  # the SDP's IP, another port: the phone moved (handover)
    stats = await call.handled(3)
    assert stats.stranger_packets == (1 if handover else 2)
    assert seqs(drain(agent)) == ([1, 3] if handover else [1])
    assert stats.endpoint == (moved if handover else caller).getsockname()
    agent.sendto(rtp(4), call.b)  # the agent's audio goes to whoever is latched
    await call.handled(1, "b")
    assert seqs(drain(moved if handover else caller)) == [4]
    assert drain(stranger) == [] and drain(moved if not handover else caller) == []
    # (The first source may take the stream back: the same rules admit it.)
    caller.sendto(rtp(5), call.a)
    stats = await call.handled(4)
    assert seqs(drain(agent)) == [5] and stats.endpoint == caller.getsockname()


@pytest.mark.parametrize("handover", [True, False])
async def test_srtp_handover_moves_to_whoever_authenticates_and_nothing_else(
        engine: LocalMediaEngine, udp: object, handover: bool) -> None:
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    phone = SrtpSender(key)
    caller, agent, junk = udp(), udp(), udp()  # type: ignore[operator]
    moved = udp(STRANGER)  # type: ignore[operator]  # the phone, now behind another IP
    call = await make_call(engine, agent, peer=(HOST, OTHER_PORT), srtp_recv=key,
                           media_handover=handover)
    junk.sendto(rtp(1) + os.urandom(10), call.a)  # the SDP's IP, but does not authenticate
    stats = await call.handled(1)
    assert stats.endpoint is None and stats.errors == 1 and stats.stranger_packets == 0
    caller.sendto(phone.protect(rtp(2)), call.a)
    await call.handled(2)
    moved.sendto(rtp(3) + os.urandom(10), call.a)  # a forgery from elsewhere
    moved.sendto(phone.protect(rtp(4)), call.a)
    stats = await call.handled(4)
    if handover:
        # The forgery is let in to be checked and fails; the real packet moves the stream.
        assert seqs(drain(agent)) == [2, 4]
        assert stats.endpoint == moved.getsockname()
        assert (stats.errors, stats.stranger_packets) == (2, 0)
    else:
        assert seqs(drain(agent)) == [2]
        assert stats.endpoint == caller.getsockname()
        assert (stats.errors, stats.stranger_packets) == (3, 2)


# --- RTCP --------------------------------------------------------------------------------------


async def test_rtcp_latches_only_onto_the_rtp_endpoints_ip_and_only_after_rtp(
        engine: LocalMediaEngine, udp: object, clock: Clock) -> None:
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    sdp_rtcp, early, later = udp(), udp(), udp()  # type: ignore[operator]
    stranger = udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=(HOST, OTHER_PORT),
                           rtcp_peer=sdp_rtcp.getsockname())
    clock.now += 60
    # Before RTP latched: RTCP from the SDP's IP is relayed but latches nothing.
    early.sendto(rtcp(1), call.a_rtcp)
    stranger.sendto(rtcp(2), call.a_rtcp)
    stats = await call.handled(2)
    assert (stats.rtcp_in, stats.stranger_packets) == (1, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 1)]
    agent_rtcp.sendto(rtcp(3), call.b_rtcp)
    await call.handled(1, "b")
    assert len(drain(sdp_rtcp)) == 1 and drain(early) == []  # to the SDP's a=rtcp address
    # RTP latches; then RTCP from its IP latches the RTCP endpoint, a stranger's does not.
    caller.sendto(rtp(10), call.a)
    stranger.sendto(rtcp(4), call.a_rtcp)
    caller_rtcp.sendto(rtcp(5), call.a_rtcp)
    later.sendto(rtcp(6), call.a_rtcp)  # same IP, but the RTCP endpoint is taken
    stats = await call.handled(6)
    assert (stats.rtcp_in, stats.stranger_packets, stats.packets_in) == (2, 3, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 5)]
    agent_rtcp.sendto(rtcp(7), call.b_rtcp)
    await call.handled(2, "b")
    assert len(drain(caller_rtcp)) == 1
    assert drain(sdp_rtcp) == [] and drain(stranger) == [] and drain(later) == []


async def test_strict_rtcp_comes_from_the_sdp_rtcp_port_only(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    other = udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname(),
                           rtcp_peer=caller_rtcp.getsockname(), strict_source=True)
    caller.sendto(rtp(1), call.a)
    other.sendto(rtcp(2), call.a_rtcp)  # the RTP endpoint's IP, not the SDP's RTCP port
    caller_rtcp.sendto(rtcp(3), call.a_rtcp)
    stats = await call.handled(3)
    assert (stats.rtcp_in, stats.stranger_packets) == (1, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 3)]


async def test_rtcp_handover_follows_the_rtp_endpoints_ip(
        engine: LocalMediaEngine, udp: object, clock: Clock) -> None:
    caller, agent, agent_rtcp = udp(), udp(), udp()  # type: ignore[operator]
    rtcp1, rtcp2 = udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=(HOST, OTHER_PORT),
                           media_handover=True)
    clock.now += 60
    caller.sendto(rtp(1), call.a)
    rtcp1.sendto(rtcp(2), call.a_rtcp)
    await call.handled(2)
    rtcp2.sendto(rtcp(3), call.a_rtcp)  # handover: a new RTCP source of the same IP
    stats = await call.handled(3)
    assert (stats.rtcp_in, stats.stranger_packets) == (2, 0)
    agent_rtcp.sendto(rtcp(4), call.b_rtcp)
    await call.handled(1, "b")
    assert len(drain(rtcp2)) == 1 and drain(rtcp1) == []


async def test_under_rtcp_mux_rtcp_is_admitted_as_rtp_would_be_and_latches_nothing(
        engine: LocalMediaEngine, udp: object, clock: Clock) -> None:
    caller, agent, agent_rtcp, early = udp(), udp(), udp(), udp()  # type: ignore[operator]
    stranger = udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, a_mux=True,
                           peer=(HOST, OTHER_PORT))
    clock.now += 60
    early.sendto(rtcp(1), call.a)  # the SDP's IP: relayed, not latched
    stranger.sendto(rtcp(2), call.a)
    stats = await call.handled(2)
    assert (stats.rtcp_in, stats.stranger_packets, stats.endpoint) == (1, 1, None)
    caller.sendto(rtp(3), call.a)  # RTP latches the one 5-tuple
    early.sendto(rtcp(4), call.a)  # now refused: not the endpoint
    caller.sendto(rtcp(5), call.a)
    stats = await call.handled(5)
    assert (stats.rtcp_in, stats.stranger_packets, stats.packets_in) == (2, 2, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 1), struct.pack("!I", 5)]
    agent_rtcp.sendto(rtcp(6), call.b_rtcp)
    await call.handled(1, "b")
    assert len(drain(caller)) == 1 and drain(early) == []


async def test_rtp_on_an_rtcp_path_is_dropped_and_counted(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent, agent_rtcp = udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname())
    caller.sendto(rtp(1), call.a_rtcp)
    caller.sendto(rtp(2), call.a_rtcp)
    caller.sendto(rtcp(3), call.a_rtcp)
    stats = await call.handled(3)
    assert (stats.rtcp_not_rtcp, stats.errors, stats.rtcp_in) == (2, 2, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 3)]
    assert drain(agent) == []


# --- what a refusal leaves behind --------------------------------------------------------------


async def test_strangers_are_counted_each_time_and_logged_once_per_stream(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent, stranger = udp(), udp(), udp(STRANGER)  # type: ignore[operator]
    call = await make_call(engine, agent, peer=caller.getsockname())
    with capture_logs() as logs:
        caller.sendto(rtp(1), call.a)
        await call.handled(1)
        for seq in (2, 3, 4):
            stranger.sendto(rtp(seq), call.a)
        stats = await call.handled(4)
    assert (stats.stranger_packets, stats.errors, stats.packets_in) == (3, 3, 1)
    assert seqs(drain(agent)) == [1]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings == [{"event": "media from a source this stream does not accept: dropped",
                         "log_level": "warning", "stream": "a", "source": STRANGER,
                         "source_port": stranger.getsockname()[1],
                         "endpoint": caller.getsockname()}]


async def test_under_rtcp_mux_strict_rtcp_before_rtp_comes_from_the_sdp_address_only(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent, agent_rtcp, other = udp(), udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, a_mux=True,
                           peer=caller.getsockname(), strict_source=True)
    other.sendto(rtcp(1), call.a)  # the SDP's IP, another port
    caller.sendto(rtcp(2), call.a)
    stats = await call.handled(2)
    assert (stats.rtcp_in, stats.stranger_packets, stats.endpoint) == (1, 1, None)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 2)]


async def test_under_rtcp_mux_without_an_sdp_address_rtcp_is_learned_in_the_window(
        engine: LocalMediaEngine, udp: object) -> None:
    anyone, agent, agent_rtcp = udp(STRANGER), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, a_mux=True)
    anyone.sendto(rtcp(1), call.a)
    stats = await call.handled(1)
    assert (stats.rtcp_in, stats.stranger_packets, stats.endpoint) == (1, 0, None)
    assert len(drain(agent_rtcp)) == 1


async def test_rtcp_admitted_under_mux_is_not_remembered_when_rtcp_is_split_again(
        engine: LocalMediaEngine, udp: object) -> None:
    agent, agent_rtcp, sdp_rtcp, early = udp(), udp(), udp(), udp()  # type: ignore[operator]
    a = await engine.allocate("a", "c", rtcp_mux=False)  # room for a separate RTCP port
    b = await engine.allocate("b", "c", rtcp_mux=False)
    peer = (HOST, OTHER_PORT)
    await engine.configure("a", StreamConfig(peer=peer, rtcp_mux=True,
                                             rtcp_peer=sdp_rtcp.getsockname()))
    await engine.configure("b", StreamConfig(peer=agent.getsockname(),
                                             rtcp_peer=agent_rtcp.getsockname()))
    await engine.link("a", "b")
    call = Call(engine, (HOST, a.rtp_port), (HOST, a.rtcp_port), (HOST, b.rtp_port),
                (HOST, b.rtcp_port))
    early.sendto(rtcp(1), call.a)  # admitted under mux, before RTP: latches nothing
    await call.handled(1)
    await engine.configure("a", StreamConfig(peer=peer, rtcp_mux=False,
                                             rtcp_peer=sdp_rtcp.getsockname()))
    agent_rtcp.sendto(rtcp(2), call.b_rtcp)  # goes to the SDP's RTCP address, not to "early"
    await call.handled(1, "b")
    assert len(drain(sdp_rtcp)) == 1 and drain(early) == []


async def test_rtcp_before_rtp_without_any_sdp_address_is_learned_in_the_window(
        engine: LocalMediaEngine, udp: object) -> None:
    anyone, agent, agent_rtcp = udp(STRANGER), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp)  # no peer, no a=rtcp
    anyone.sendto(rtcp(1), call.a_rtcp)
    stats = await call.handled(1)
    assert (stats.rtcp_in, stats.stranger_packets) == (1, 0)
    assert len(drain(agent_rtcp)) == 1


async def test_strict_rtcp_before_rtp_comes_from_the_sdp_rtcp_address_only(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname(),
                           rtcp_peer=caller_rtcp.getsockname(), strict_source=True)
    caller.sendto(rtcp(1), call.a_rtcp)  # the SDP's RTP address, not its RTCP one
    caller_rtcp.sendto(rtcp(2), call.a_rtcp)
    stats = await call.handled(2)
    assert (stats.rtcp_in, stats.stranger_packets) == (1, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 2)]


async def test_the_latched_rtcp_endpoint_keeps_being_accepted(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname())
    caller.sendto(rtp(1), call.a)
    await call.handled(1)
    for ssrc in (2, 3, 4):
        caller_rtcp.sendto(rtcp(ssrc), call.a_rtcp)
    stats = await call.handled(4)
    assert (stats.rtcp_in, stats.stranger_packets) == (3, 0)
    assert len(drain(agent_rtcp)) == 3


async def test_plain_rtcp_must_be_whole_compound_rtcp(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent, agent_rtcp = udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname())
    caller.sendto(rtcp(1) + bytes(6), call.a_rtcp)  # a valid header, lengths that do not add up
    caller.sendto(rtcp(2), call.a_rtcp)
    stats = await call.handled(2)
    assert (stats.rtcp_not_rtcp, stats.rtcp_in) == (1, 1)
    assert [d[4:8] for d in drain(agent_rtcp)] == [struct.pack("!I", 2)]


async def test_srtcp_is_accepted_once_it_authenticates_and_relayed_decrypted(
        engine: LocalMediaEngine, udp: object) -> None:
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    phone = SrtpSender(key)
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=caller.getsockname(),
                           srtp_recv=key)
    caller.sendto(phone.protect(rtp(1)), call.a)
    await call.handled(1)
    caller_rtcp.sendto(rtp(3), call.a_rtcp)  # RTP on the RTCP port: not even an RTCP header
    stats = await call.handled(2)
    assert (stats.rtcp_not_rtcp, stats.errors) == (1, 1)
    caller_rtcp.sendto(rtcp(2) + os.urandom(14), call.a_rtcp)  # an SRTCP header, forged rest
    caller_rtcp.sendto(phone.protect_rtcp(rtcp(4)), call.a_rtcp)
    stats = await call.handled(4)
    assert (stats.rtcp_in, stats.rtcp_not_rtcp, stats.errors) == (1, 1, 2)
    assert drain(agent_rtcp) == [rtcp(4)]
    # A packet that decrypts but is no whole RTCP compound is not RTCP either.
    caller_rtcp.sendto(phone.protect_rtcp(rtcp(5) + bytes(4)), call.a_rtcp)
    stats = await call.handled(5)
    assert (stats.rtcp_in, stats.rtcp_not_rtcp, stats.errors) == (1, 2, 3)
    assert drain(agent_rtcp) == []


async def test_rtcp_from_the_endpoint_under_mux_is_not_remembered_when_split_again(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent, agent_rtcp, sdp_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    a = await engine.allocate("a", "c", rtcp_mux=False)
    b = await engine.allocate("b", "c", rtcp_mux=False)
    config = StreamConfig(peer=caller.getsockname(), rtcp_peer=sdp_rtcp.getsockname())
    await engine.configure("a", StreamConfig(peer=config.peer, rtcp_peer=config.rtcp_peer,
                                             rtcp_mux=True))
    await engine.configure("b", StreamConfig(peer=agent.getsockname(),
                                             rtcp_peer=agent_rtcp.getsockname()))
    await engine.link("a", "b")
    call = Call(engine, (HOST, a.rtp_port), (HOST, a.rtcp_port), (HOST, b.rtp_port),
                (HOST, b.rtcp_port))
    caller.sendto(rtp(1), call.a)
    await call.handled(1)
    caller.sendto(rtcp(2), call.a)  # from the latched endpoint, under mux
    await call.handled(2)
    await engine.configure("a", config)  # RTCP on its own port again
    agent_rtcp.sendto(rtcp(3), call.b_rtcp)
    await call.handled(1, "b")
    assert len(drain(sdp_rtcp)) == 1
    assert seqs(drain(caller)) == []  # not to the caller's RTP port


async def test_rtcp_leaves_from_the_rtcp_port_or_under_mux_the_rtp_port_encrypted_if_keyed(
        engine: LocalMediaEngine, udp: object) -> None:
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    a = await engine.allocate("a", "c", rtcp_mux=False)
    b = await engine.allocate("b", "c", rtcp_mux=False)
    await engine.configure("a", StreamConfig(peer=caller.getsockname(),
                                             rtcp_peer=caller_rtcp.getsockname()))
    await engine.configure("b", StreamConfig(peer=agent.getsockname(),
                                             rtcp_peer=agent_rtcp.getsockname(), srtp_send=key))
    await engine.link("a", "b")
    call = Call(engine, (HOST, a.rtp_port), (HOST, a.rtcp_port), (HOST, b.rtp_port),
                (HOST, b.rtcp_port))
    caller_rtcp.sendto(rtcp(1), call.a_rtcp)
    await call.handled(1)
    data, source = agent_rtcp.recvfrom(2048)
    assert source == call.b_rtcp  # from the RTCP port the agent's SDP was given
    assert SrtpReceiver(key).unprotect_rtcp(data) == rtcp(1)
    # Too big to protect: dropped and counted on the sending stream, each time.
    big = struct.pack("!BBHI", 0x80, 204, 401, 1) + bytes(1600)  # an APP packet, 1608 bytes
    for _ in range(2):
        caller_rtcp.sendto(big, call.a_rtcp)
    await call.handled(3)
    assert (await engine.stats("b")).errors == 2 and drain(agent_rtcp) == []
    # The agent's side multiplexed (its stream still has an RTCP socket): from the RTP port.
    await engine.configure("b", StreamConfig(peer=agent.getsockname(), rtcp_mux=True))
    caller_rtcp.sendto(rtcp(2), call.a_rtcp)
    await call.handled(4)
    data, source = agent.recvfrom(2048)
    assert source == call.b
    assert data == rtcp(2)  # no key on the agent's side any more: plain
    assert (await engine.stats("b")).rtcp_out == 2


async def test_rtcp_the_kernel_refuses_to_send_is_counted_each_time(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, caller_rtcp, agent = udp(), udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, peer=caller.getsockname())
    await engine.configure("b", StreamConfig(peer=agent.getsockname(),
                                             rtcp_peer=(HOST, 0)))  # port 0: EINVAL on send
    for ssrc in (1, 2):
        caller_rtcp.sendto(rtcp(ssrc), call.a_rtcp)
    await call.handled(2)
    b = await engine.stats("b")
    assert (b.errors, b.rtcp_out) == (2, 0)


@pytest.mark.parametrize("srtp", [False, True])
async def test_rtcp_follows_an_rtp_handover_to_another_ip_but_not_to_another_port(
        engine: LocalMediaEngine, udp: object, clock: Clock, srtp: bool) -> None:
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    phone = SrtpSender(key)

    def media(seq: int) -> bytes:
        return phone.protect(rtp(seq)) if srtp else rtp(seq)

    caller, caller_rtcp, agent, agent_rtcp = udp(), udp(), udp(), udp()  # type: ignore[operator]
    sdp_rtcp = udp()  # type: ignore[operator]
    # Plain RTP may hand over within the SDP's IP only; SRTP to whoever authenticates.
    moved = udp(STRANGER) if srtp else udp()  # type: ignore[operator]
    extra = {"srtp_recv": key} if srtp else {}
    call = await make_call(engine, agent, agent_rtcp=agent_rtcp, peer=(HOST, OTHER_PORT),
                           rtcp_peer=sdp_rtcp.getsockname(), media_handover=True, **extra)
    clock.now += 60
    caller.sendto(media(1), call.a)
    await call.handled(1)
    caller_rtcp.sendto(phone.protect_rtcp(rtcp(2)) if srtp else rtcp(2), call.a_rtcp)
    await call.handled(2)
    moved.sendto(media(3), call.a)
    stats = await call.handled(3)
    assert stats.endpoint == moved.getsockname()
    agent_rtcp.sendto(rtcp(4), call.b_rtcp)
    await call.handled(1, "b")
    if srtp:  # another IP: the old RTCP endpoint is forgotten, the SDP's a=rtcp is used
        assert len(drain(sdp_rtcp)) == 1 and drain(caller_rtcp) == []
    else:  # the same IP: the RTCP endpoint stays
        assert len(drain(caller_rtcp)) == 1 and drain(sdp_rtcp) == []
    # And the stream can move on again (back to the first source) after that.
    caller.sendto(media(5), call.a)
    stats = await call.handled(4)
    assert stats.endpoint == caller.getsockname()
    assert seqs(drain(agent)) == [1, 3, 5]


async def test_a_latched_endpoints_socket_never_blocks_the_event_loop(
        engine: LocalMediaEngine, udp: object) -> None:
    caller, agent = udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, peer=caller.getsockname())
    caller.sendto(rtp(1), call.a)
    await call.handled(1)
    direct = engine._streams["a"].direct
    assert direct is not None and direct.endpoint == caller.getsockname()
    assert direct._sock.getblocking() is False


async def test_without_a_connected_socket_the_latched_endpoint_is_served_by_the_streams_own(
        engine: LocalMediaEngine, udp: object, monkeypatch: pytest.MonkeyPatch) -> None:
    caller, agent = udp(), udp()  # type: ignore[operator]
    call = await make_call(engine, agent, peer=caller.getsockname())

    class Unconnectable(socket.socket):
        def connect(self, address: object) -> None:
            raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "socket", Unconnectable)
    with capture_logs() as logs:
        caller.sendto(rtp(1), call.a)
        stats = await call.handled(1)
    assert stats.endpoint == caller.getsockname() and engine._streams["a"].direct is None
    assert [e for e in logs if e["log_level"] == "warning"] == [
        {"event": "no connected socket for a latched endpoint", "log_level": "warning",
         "stream": "a", "error": "[Errno 101] Network is unreachable"}]
    agent.sendto(rtp(2), call.b)  # the caller still hears the agent, and is still heard
    await call.handled(1, "b")
    assert seqs(drain(caller)) == [2]
    caller.sendto(rtp(3), call.a)
    await call.handled(2)
    assert seqs(drain(agent)) == [1, 3]
