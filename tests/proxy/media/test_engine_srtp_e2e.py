"""SRTP that fails to authenticate never crosses the relay: through the real engine on loopback.

The caller leg is SDES-SRTP; between good packets the caller's address also sends a tampered
packet, one protected with another key and a replay of a packet already relayed. The agent must
receive every good packet (byte for byte, once) and none of the others, and the engine must count
each refused packet as an error. Run with the plain relay and with the masking pipeline (the two
paths out of ``_on_rtp``), with the agent leg plain and with it re-keyed SRTP.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from dsp import g711, tones
from proxy.control import sdes
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.media.pipeline import AudioPipeline, PassthroughPipeline
from proxy.media.policy import MaskingPolicy
from proxy.media.rtp import RtpPacket
from proxy.media.srtp import SrtpError, SrtpReceiver, SrtpSender
from proxy.media.types import StreamConfig

SUITE = "AES_CM_128_HMAC_SHA1_80"
CODECS = {0: "PCMU", 101: "telephone-event"}
SSRC = 0x5EC0_0001


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _payloads(count: int) -> list[bytes]:
    """Distinct 20 ms PCMU payloads (a 1 kHz tone, no DTMF), so copies can be told apart."""
    audio = tones.sine(1000, 20 * count, -15.0)
    codes = g711.encode(audio, "ulaw").tobytes()
    return [codes[160 * k:160 * k + 160] for k in range(count)]


def _plain(seq: int, payload: bytes) -> bytes:
    return bytes(RtpPacket(0, seq, 1000 + 160 * seq, SSRC, seq == 0, payload=payload))


async def _receive(sock: socket.socket, decode: Callable[[bytes], bytes], until_seq: int,
                   timeout: float = 10.0) -> list[RtpPacket]:
    """Every packet the agent gets until (and including) the one with ``until_seq``."""
    loop = asyncio.get_running_loop()
    got: list[RtpPacket] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1].sequence_number != until_seq:
            got.append(RtpPacket.parse(decode(await loop.sock_recv(sock, 2048))))
    return got


@pytest.fixture(params=["relay", "masking"])
async def engine(request: pytest.FixtureRequest, media_ports: tuple[int, int]
                 ) -> AsyncIterator[tuple[LocalMediaEngine, bool]]:
    masking = request.param == "masking"
    factory: Callable[[], AudioPipeline] = (
        (lambda: MaskingPipeline(lookahead_ms=26)) if masking else PassthroughPipeline)
    engine = LocalMediaEngine("127.0.0.1", *media_ports, pipeline_factory=factory)
    await engine.start()
    yield engine, masking
    await engine.stop()


@pytest.mark.parametrize("agent_srtp", [False, True], ids=["agent-rtp", "agent-srtp"])
async def test_tampered_wrong_key_and_replayed_srtp_is_dropped_and_counted(
        engine: tuple[LocalMediaEngine, bool], agent_srtp: bool) -> None:
    media, masking = engine
    caller, agent = _udp(), _udp()
    caller_key = sdes.generate(SUITE).params  # what the caller sends with
    agent_key = sdes.generate(SUITE).params if agent_srtp else None  # what we send the agent
    a = await media.allocate("c-a", "c", rtcp_mux=False)
    await media.allocate("c-b", "c", rtcp_mux=False)
    policy = MaskingPolicy() if masking else None
    await media.configure("c-a", StreamConfig(peer=caller.getsockname(), srtp_recv=caller_key,
                                              codecs=CODECS, masking=policy))
    await media.configure("c-b", StreamConfig(peer=agent.getsockname(), srtp_send=agent_key,
                                              codecs=CODECS))
    await media.link("c-a", "c-b")
    to_engine = ("127.0.0.1", a.rtp_port)
    receiver = SrtpReceiver(agent_key) if agent_key else None

    def decode(wire: bytes) -> bytes:
        return receiver.unprotect(wire) if receiver is not None else wire

    sender = SrtpSender(caller_key)
    intruder = SrtpSender(sdes.generate(SUITE).params)
    payloads = _payloads(12)
    wire = {seq: sender.protect(_plain(seq, payloads[seq])) for seq in range(12)}

    caller.sendto(wire[0], to_engine)  # latches the caller; the rest then share one socket
    first = await _receive(agent, decode, until_seq=0)
    tampered = bytearray(sender.protect(_plain(100, payloads[3])))
    tampered[30] ^= 0x01  # one payload bit: the tag no longer matches
    attacks = {
        3: bytes(tampered),  # before good packet 3
        6: intruder.protect(_plain(101, payloads[6])),  # a key nobody negotiated
        9: wire[1],  # a replay of a packet the agent already has
    }
    for seq in range(1, 12):
        if seq in attacks:
            caller.sendto(attacks[seq], to_engine)
        caller.sendto(wire[seq], to_engine)
    got = first + await _receive(agent, decode, until_seq=11)

    # What passes: every good packet, once, as the caller sent it.
    assert [p.sequence_number for p in got] == list(range(12))
    if not masking:
        assert [p.payload for p in got] == payloads
    assert all(p.ssrc == SSRC for p in got)
    # What is stopped: none of the three, and each counted (all were processed before the
    # last good packet, which came after them through the same socket).
    stats = await media.stats("c-a")
    assert (stats.packets_in, stats.errors) == (12, 3)
    assert (await media.stats("c-b")).packets_out == 12
    with pytest.raises(BlockingIOError):
        agent.recv(2048)  # and nothing else is queued for the agent


def _sender_report(ssrc: int, ntp: int) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, ntp, 0, ntp * 160, ntp, ntp * 172)


async def test_srtcp_that_fails_authentication_is_dropped_and_counted(
        media_ports: tuple[int, int]) -> None:
    """The same for the RTCP port: a tampered, a wrong-key and a replayed SRTCP report are
    refused; the good reports around them reach the agent's RTCP port."""
    media = LocalMediaEngine("127.0.0.1", *media_ports)
    await media.start()
    try:
        caller, caller_rtcp, agent, agent_rtcp = _udp(), _udp(), _udp(), _udp()
        caller_key = sdes.generate(SUITE).params
        a = await media.allocate("c-a", "c", rtcp_mux=False)
        await media.allocate("c-b", "c", rtcp_mux=False)
        await media.configure("c-a", StreamConfig(peer=caller.getsockname(),
                                                  rtcp_peer=caller_rtcp.getsockname(),
                                                  srtp_recv=caller_key))
        await media.configure("c-b", StreamConfig(peer=agent.getsockname(),
                                                  rtcp_peer=agent_rtcp.getsockname()))
        await media.link("c-a", "c-b")
        to_engine = ("127.0.0.1", a.rtcp_port)
        sender = SrtpSender(caller_key)
        reports = {n: sender.protect_rtcp(_sender_report(SSRC, n)) for n in range(4)}
        tampered = bytearray(sender.protect_rtcp(_sender_report(SSRC, 100)))
        tampered[12] ^= 0x01
        wrong_key = SrtpSender(sdes.generate(SUITE).params).protect_rtcp(
            _sender_report(SSRC, 101))
        loop = asyncio.get_running_loop()
        caller_rtcp.sendto(reports[0], to_engine)  # latches the caller's RTCP source
        async with asyncio.timeout(5):
            got = [await loop.sock_recv(agent_rtcp, 2048)]
        for data in (bytes(tampered), reports[1], wrong_key, reports[2], reports[1],
                     reports[3]):
            caller_rtcp.sendto(data, to_engine)
        async with asyncio.timeout(5):
            while len(got) < 4:
                got.append(await loop.sock_recv(agent_rtcp, 2048))
        assert got == [_sender_report(SSRC, n) for n in range(4)]  # in clear, in order, once
        stats = await media.stats("c-a")
        assert (stats.rtcp_in, stats.errors) == (4, 3)
        with pytest.raises(BlockingIOError):
            agent_rtcp.recv(2048)
        with pytest.raises(BlockingIOError):
            agent.recv(2048)  # nor did any of it come out as RTP
    finally:
        await media.stop()


async def test_a_stranger_without_the_key_cannot_take_the_caller_s_place(
        media_ports: tuple[int, int]) -> None:
    """The first packet may come from a stranger: one that fails SRTP authentication must not
    become the latched endpoint (else the agent's audio would be sent to it, and the real
    caller's refused as a stranger's)."""
    media = LocalMediaEngine("127.0.0.1", *media_ports)
    await media.start()
    try:
        caller, agent, stranger = _udp(), _udp(), _udp()
        caller_key = sdes.generate(SUITE).params
        a = await media.allocate("c-a", "c", rtcp_mux=False)
        b = await media.allocate("c-b", "c", rtcp_mux=False)
        await media.configure("c-a", StreamConfig(peer=caller.getsockname(),
                                                  srtp_recv=caller_key))
        await media.configure("c-b", StreamConfig(peer=agent.getsockname()))
        await media.link("c-a", "c-b")
        forged = SrtpSender(sdes.generate(SUITE).params).protect(_plain(0, bytes(160)))
        stranger.sendto(forged, ("127.0.0.1", a.rtp_port))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):  # wait for the engine to have looked at it
            while (await media.stats("c-a")).errors < 1:
                await asyncio.sleep(0.01)
        sender = SrtpSender(caller_key)
        caller.sendto(sender.protect(_plain(1, bytes(160))), ("127.0.0.1", a.rtp_port))
        async with asyncio.timeout(5):
            relayed = RtpPacket.parse(await loop.sock_recv(agent, 2048))
        assert relayed.sequence_number == 1  # the real caller's audio is relayed
        agent.sendto(_plain(7, bytes(160)), ("127.0.0.1", b.rtp_port))
        async with asyncio.timeout(5):
            back = await loop.sock_recv(caller, 2048)  # and the agent's goes to the caller
        assert RtpPacket.parse(back).sequence_number == 7
        with pytest.raises(BlockingIOError):
            stranger.recv(2048)
        assert (await media.stats("c-a")).endpoint == caller.getsockname()
    finally:
        await media.stop()


def test_the_attack_packets_really_fail_authentication() -> None:
    """Control for the test above: each attack is refused by a receiver on its own, so the
    relay test is about the engine dropping them, not about packets that were never bad."""
    key = sdes.generate(SUITE).params
    sender, receiver = SrtpSender(key), SrtpReceiver(key)
    good = sender.protect(_plain(1, bytes(160)))
    tampered = bytearray(sender.protect(_plain(2, bytes(160))))
    tampered[30] ^= 0x01
    assert receiver.unprotect(good) == _plain(1, bytes(160))
    for bad in (bytes(tampered), SrtpSender(sdes.generate(SUITE).params).protect(
            _plain(3, bytes(160))), good):
        with pytest.raises(SrtpError):
            receiver.unprotect(bad)


async def test_re_configuring_with_the_same_keys_keeps_the_srtp_context(
        media_ports: tuple[int, int]) -> None:
    """A hold/resume re-INVITE re-configures the stream with the same keys: the replay window
    (and rollover counter) must survive it — a packet seen before is still refused after —
    while new keys do start a new context."""
    media = LocalMediaEngine("127.0.0.1", *media_ports)
    await media.start()
    caller, agent = _udp(), _udp()
    key, new_key = sdes.generate(SUITE).params, sdes.generate(SUITE).params
    try:
        a = await media.allocate("a", "c", rtcp_mux=False)
        await media.allocate("b", "c", rtcp_mux=False)
        await media.link("a", "b")
        config_a = StreamConfig(peer=caller.getsockname(), srtp_recv=key, codecs=CODECS)
        await media.configure("a", config_a)
        await media.configure("b", StreamConfig(peer=agent.getsockname(), codecs=CODECS))
        sender = SrtpSender(key)
        first = sender.protect(_plain(0, _payloads(1)[0]))
        caller.sendto(first, ("127.0.0.1", a.rtp_port))
        await _receive(agent, lambda d: d, 0)
        await media.configure("a", config_a)  # a re-INVITE: same keys
        caller.sendto(first, ("127.0.0.1", a.rtp_port))  # a replay
        caller.sendto(sender.protect(_plain(1, _payloads(2)[1])), ("127.0.0.1", a.rtp_port))
        got = await _receive(agent, lambda d: d, 1)
        assert [p.sequence_number for p in got] == [1]  # the replay was refused
        assert (await media.stats("a")).errors == 1
        await media.configure("a", replace(config_a, srtp_recv=new_key))  # the phone re-keys
        caller.sendto(SrtpSender(new_key).protect(_plain(2, _payloads(3)[2])),
                      ("127.0.0.1", a.rtp_port))
        assert [p.sequence_number for p in await _receive(agent, lambda d: d, 2)] == [2]
    finally:
        caller.close()
        agent.close()
        await media.stop()
