"""The media plane fails closed: no spelling, port or source gets a card digit to the agent.

Each test sends one attack to the real engine over loopback UDP (caller → ToneGuard → agent,
plus the recording tap), then decodes what the agent and the recorder received with spandsp
and multimon-ng (they must find nothing) AND checks that the agent heard the caller's audio it
should have (a dead leg would also "leak nothing"). Each attack once gave the agent the card.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from dsp import g711, tones
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.media.policy import MaskingPolicy
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.rtp import RtpPacket
from proxy.media.types import (
    DigitEvent,
    MediaEvent,
    PortsExhaustedError,
    SrtpParams,
    StreamConfig,
    StreamStats,
)

CARD = "4111111111111111"
HOST = "127.0.0.1"
STRANGER_HOST = "127.0.0.2"  # loopback too (127/8), but another IP: a stranger
TONE_MS, GAP_MS, LEAD_MS, TAIL_MS = 60, 60, 300, 400
FRAME = 160
LAW = {"PCMU": "ulaw", "PCMA": "alaw"}


class Clock:
    """The engine's clock, movable forward (the learning window is in engine time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(media_ports: tuple[int, int], clock: Clock) -> AsyncIterator[LocalMediaEngine]:
    engine = LocalMediaEngine(HOST, *media_ports, clock=clock,
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=26))
    await engine.start()
    yield engine
    await engine.stop()


Peers = Callable[..., Awaitable[RtpPeer]]


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """Start RtpPeers; all are closed at the end."""
    started: list[RtpPeer] = []

    async def start(host: str = HOST, **kwargs: object) -> RtpPeer:
        peer = await RtpPeer(host, **kwargs).start()  # type: ignore[arg-type]
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


@dataclass
class Call:
    caller_rtp: tuple[str, int]  # where the caller sends (ToneGuard's caller-side stream)
    caller_rtcp: tuple[str, int]
    agent_rtp: tuple[str, int]
    digits: list[DigitEvent]


async def _call(engine: LocalMediaEngine, caller: RtpPeer, agent: RtpPeer, *,
                codecs: dict[int, str] | None = None, caller_mux: bool = False,
                agent_mux: bool = False, recorder: RtpPeer | None = None,
                caller_peer: tuple[str, int] | str | None = "sdp",
                **caller_config: object) -> Call:
    """Stream "a" faces the caller (masked), "b" the agent; the SDP address of each is its
    peer's socket unless ``caller_peer`` says otherwise."""
    codecs = {0: "PCMU", 8: "PCMA", 101: "telephone-event"} if codecs is None else codecs
    digits: list[DigitEvent] = []

    def on_event(event: MediaEvent) -> None:
        if isinstance(event, DigitEvent):
            digits.append(event)

    engine.subscribe(on_event)
    a = await engine.allocate("a", "call", rtcp_mux=caller_mux)
    b = await engine.allocate("b", "call", rtcp_mux=agent_mux)
    await engine.link("a", "b")
    peer = (caller.host, caller.port) if isinstance(caller_peer, str) else caller_peer
    await engine.configure("a", StreamConfig(
        peer=peer, rtcp_mux=caller_mux, codecs=codecs, masking=MaskingPolicy(),
        **caller_config))  # type: ignore[arg-type]
    await engine.configure("b", StreamConfig(
        peer=(agent.host, agent.port), rtcp_mux=agent_mux, codecs=codecs,
        recording=(recorder.host, recorder.port) if recorder is not None else None))
    return Call((HOST, a.rtp_port), (HOST, a.rtcp_port), (HOST, b.rtp_port), digits)


def _card_audio(card: str = CARD) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(5)
    keyed = tones.dtmf_sequence(card, tone_ms=TONE_MS, gap_ms=GAP_MS, lead_ms=LEAD_MS,
                                tail_ms=TAIL_MS, low_dbm0=-12.0)
    return keyed + tones.white_noise(keyed.size, -50.0, rng)


def _digit_windows(card: str = CARD) -> list[tuple[str, int, int]]:
    """(key, first sample, samples) of each keyed digit in :func:`_card_audio`."""
    start, out = LEAD_MS * 8, []
    for key in card:
        out.append((key, start, TONE_MS * 8))
        start += (TONE_MS + GAP_MS) * 8
    return out


Send = list[list[tuple[RtpPacket, tuple[str, int]]]]  # per 20 ms tick: (packet, destination)


def _frames(peer: RtpPeer, audio: npt.ArrayLike, dest: tuple[str, int], *, pt: int = 0,
            law: str = "ulaw", pt_of: Callable[[int], int] | None = None,
            events_pt: int | None = None, card: str = CARD) -> Send:
    """The caller's packets, one list per 20 ms: audio (PT ``pt``, or ``pt_of(frame)``), and
    RFC 4733 updates for the card's keys at ``events_pt`` if given (one timestamp per key)."""
    codes = g711.encode(np.asarray(audio), law).tobytes()
    ts0 = peer._ts
    ticks: Send = []
    windows = _digit_windows(card) if events_pt is not None else []
    for k in range(len(codes) // FRAME):
        batch = [(peer.next_packet(codes[k * FRAME:(k + 1) * FRAME],
                                   pt_of(k) if pt_of else pt, marker=k == 0), dest)]
        for key, start, length in windows:
            assert events_pt is not None
            pos = (k + 1) * FRAME - start
            if 0 < pos <= length + 2 * FRAME:
                ev = TelephoneEvent("0123456789*#ABCD".index(key), pos > length, 10,
                                    min(pos, length))
                batch.append((peer.next_packet(bytes(ev), events_pt, marker=pos <= FRAME,
                                               advance=0, timestamp=ts0 + start), dest))
        ticks.append(batch)
    return ticks


async def _send(peer: RtpPeer, ticks: Send, *, raw: Callable[[RtpPacket], bytes] | None = None,
                ) -> int:
    """Send each tick's packets paced in real time; returns how many were sent."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    for i, batch in enumerate(ticks):
        delay = start + i * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for packet, dest in batch:
            if raw is None:
                peer.send_packet(packet, dest)
            else:  # the bytes ``raw`` makes of it (it may send something else first)
                _raw(peer, raw(packet), dest)
            sent += 1
    return sent


def _heard(peer: RtpPeer, laws: dict[int, str]) -> npt.NDArray[np.int16]:
    """Everything ``peer`` received at the PTs in ``laws``, decoded, placed by timestamp: what
    a (lenient) agent phone would play."""
    packets = sorted((p for _, p in peer.received.packets if p.payload_type in laws),
                     key=lambda p: p.timestamp)
    if not packets:
        return np.zeros(0, dtype=np.int16)
    t0 = packets[0].timestamp
    out = np.zeros((packets[-1].timestamp - t0) % (1 << 32) + FRAME, dtype=np.int16)
    for p in packets:
        at = (p.timestamp - t0) % (1 << 32)
        samples = g711.decode(np.frombuffer(p.payload, np.uint8), laws[p.payload_type])
        out[at:at + samples.size] = samples[:max(0, out.size - at)]
    return out


async def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def _stats_until(engine: LocalMediaEngine, condition: Callable[[StreamStats], bool],
                       stream: str = "a", timeout: float = 5.0) -> StreamStats:
    async with asyncio.timeout(timeout):
        while not condition(stats := await engine.stats(stream)):
            await asyncio.sleep(0.02)
    return stats


def _audio_packets(peer: RtpPeer, pt: int = 0) -> int:
    return sum(p.payload_type == pt for _, p in peer.received.packets)


def _raw(peer: RtpPeer, data: bytes, dest: tuple[str, int]) -> None:
    """A datagram from ``peer``'s socket as is (RtpPeer only sends what it builds)."""
    assert peer._transport is not None
    peer._transport.sendto(data, dest)


def _assert_no_digits(*legs: npt.NDArray[np.int16]) -> None:
    for leg in legs:
        assert spandsp_detect(leg) == ""
        assert multimon_detect(leg) == ""
        assert leaked_ms(leg) == 0.0


# --- 1. codec names in another case ---------------------------------------------------------

@pytest.mark.parametrize(("pcmu", "event_name", "event_pt"), [
    ("pcmu", "TELEPHONE-EVENT", 101),
    ("Pcmu", "Telephone-Event", 96),
    ("PCMU", "telephone-EVENT", 127),
], ids=["lower-upper-101", "mixed-96", "upper-127"])
async def test_codec_names_in_any_case_are_masked_and_events_never_forwarded(
        engine: LocalMediaEngine, peers: Peers, pcmu: str,
        event_name: str, event_pt: int) -> None:
    caller, agent, recorder = await peers(seed=1), await peers(seed=2), await peers(seed=3)
    call = await _call(engine, caller, agent, recorder=recorder,
                       codecs={0: pcmu, event_pt: event_name})
    audio = _card_audio()
    ticks = _frames(caller, audio, call.caller_rtp, events_pt=event_pt)
    await _send(caller, ticks)
    frames = len(ticks)
    await _until(lambda: _audio_packets(agent) >= frames and _audio_packets(recorder) >= frames)
    heard, recorded = _heard(agent, {0: "ulaw"}), _heard(recorder, {0: "ulaw"})
    assert heard.size >= frames * FRAME and recorded.size >= frames * FRAME
    _assert_no_digits(heard, recorded)
    assert agent.received.events(event_pt) == [] and recorder.received.events(event_pt) == []
    await _until(lambda: len(call.digits) >= len(CARD))
    # The keys were seen (in-band and as events: "both"), so the masking really ran on them.
    assert "".join(d.digit for d in call.digits) == CARD
    assert {d.source for d in call.digits} == {"both"}
    stats = await engine.stats("a")
    assert stats.uninspectable_packets == 0 and stats.errors == 0


# --- 2. payload types the masking cannot inspect --------------------------------------------

@pytest.mark.parametrize(("codecs", "attack_pt"), [
    ({0: "PCMU", 96: "G726-32", 101: "telephone-event"}, 96),  # a codec we cannot decode
    ({0: "PCMU", 101: "telephone-event"}, 96),  # a PT the SDP never named
    ({0: "PCMU", 101: "telephone-event"}, 8),  # a static PT the SDP did not list
], ids=["unknown-codec", "pt-not-in-sdp", "static-pt-not-in-sdp"])
async def test_card_keyed_on_an_uninspectable_payload_type_is_dropped(
        engine: LocalMediaEngine, peers: Peers, codecs: dict[int, str],
        attack_pt: int) -> None:
    """The card's stretch goes out as G.711 bytes labelled with a payload type the masking
    cannot read; an agent phone that plays it as G.711 would hear every digit."""
    caller, agent, recorder = await peers(seed=4), await peers(seed=5), await peers(seed=6)
    call = await _call(engine, caller, agent, recorder=recorder, codecs=codecs)
    audio = _card_audio()
    first, last = LEAD_MS * 8 // FRAME - 2, (audio.size - TAIL_MS * 8) // FRAME + 2
    law = LAW["PCMA"] if attack_pt == 8 else "ulaw"
    # One law for the whole signal so the attack frames are valid G.711 of their label.
    ticks = _frames(caller, audio, call.caller_rtp, law=law,
                    pt_of=lambda k: attack_pt if first <= k < last else 0)
    if law == "alaw":  # the lead and tail must be PCMU for PT 0: re-encode those frames
        codes = g711.encode(audio, "ulaw").tobytes()
        for k, batch in enumerate(ticks):
            if not first <= k < last:
                batch[0][0].payload = codes[k * FRAME:(k + 1) * FRAME]
    sent = await _send(caller, ticks)
    expected = sent - (last - first)
    await _until(lambda: len(agent.received.packets) >= expected
                 and len(recorder.received.packets) >= expected)
    await asyncio.sleep(0.1)  # anything relayed late would arrive now
    assert [p.payload_type for _, p in agent.received.packets] == [0] * expected
    laws = {0: "ulaw", attack_pt: law}
    heard, recorded = _heard(agent, laws), _heard(recorder, laws)
    assert heard.size >= audio.size - 2 * FRAME  # lead and tail: first to last frame
    _assert_no_digits(heard, recorded)
    stats = await engine.stats("a")
    assert stats.uninspectable_packets == last - first
    assert stats.errors == last - first and stats.packets_in == sent


async def test_a_payload_type_change_to_another_g711_law_is_masked_not_dropped(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """PT changes mid-call are legal: PCMU to PCMA half-way through the card stays audible
    and masked."""
    caller, agent = await peers(seed=7), await peers(seed=8)
    call = await _call(engine, caller, agent, codecs={0: "PCMU", 8: "pcma"})
    audio = _card_audio()
    half = audio.size // FRAME // 2
    ulaw, alaw = g711.encode(audio, "ulaw").tobytes(), g711.encode(audio, "alaw").tobytes()
    ticks = _frames(caller, audio, call.caller_rtp, pt_of=lambda k: 0 if k < half else 8)
    for k, batch in enumerate(ticks):
        batch[0][0].payload = (ulaw if k < half else alaw)[k * FRAME:(k + 1) * FRAME]
    sent = await _send(caller, ticks)
    await _until(lambda: len(agent.received.packets) >= sent)
    heard = _heard(agent, {0: "ulaw", 8: "alaw"})
    assert heard.size >= sent * FRAME
    assert {p.payload_type for _, p in agent.received.packets} == {0, 8}
    _assert_no_digits(heard)
    await _until(lambda: len(call.digits) >= len(CARD))
    assert "".join(d.digit for d in call.digits) == CARD


# --- 3. RTCP ports carry RTCP only ----------------------------------------------------------

@pytest.mark.parametrize(("caller_mux", "srtp"), [(False, False), (True, False), (False, True)],
                         ids=["rtcp-port", "rtcp-mux", "srtcp-port"])
async def test_rtp_sent_to_an_rtcp_path_never_reaches_the_agent(
        engine: LocalMediaEngine, peers: Peers, caller_mux: bool, srtp: bool) -> None:
    """The caller's audio goes, masked, to the RTP port; an unmasked copy of the card goes to
    the RTCP port (or, under rtcp-mux, as RTP whose byte 1 demuxes it as RTCP). The agent
    uses rtcp-mux, so whatever the RTCP path relays lands on the port it plays audio from."""
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30)) if srtp else None
    caller, agent = await peers(seed=9, srtp_send=key), await peers(seed=10)
    call = await _call(engine, caller, agent, caller_mux=caller_mux, agent_mux=True,
                       srtp_recv=key)
    audio = _card_audio()
    ticks = _frames(caller, audio, call.caller_rtp)
    codes = g711.encode(audio, "ulaw").tobytes()
    attack: list[bytes] = []
    for k in range(len(ticks)):
        payload = codes[k * FRAME:(k + 1) * FRAME]
        # Under mux: marker + PT 72 (byte 1 = 200, "SR") over the card; else plain PT 0 RTP.
        second = 0x80 | 72 if caller_mux else 0
        attack.append(struct.pack("!BBHII", 0x80, second, 7000 + k, k * FRAME, 0xBAD)
                      + payload)
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    for k, batch in enumerate(ticks):
        await asyncio.sleep(max(0.0, start + k * 0.02 - loop.time()))
        caller.send_packet(batch[0][0], batch[0][1])
        _raw(caller, attack[k], call.caller_rtcp)
        sent += 1
    await _until(lambda: len(agent.received.packets) >= sent)
    await asyncio.sleep(0.1)
    assert {p.ssrc for _, p in agent.received.packets} == {caller.ssrc}
    assert agent.received.rtcp == 0 and agent.received.errors == 0
    heard = _heard(agent, {0: "ulaw"})
    assert heard.size >= sent * FRAME
    _assert_no_digits(heard)
    stats = await engine.stats("a")
    assert stats.rtcp_not_rtcp == sent and stats.rtcp_in == 0 and stats.errors == sent


async def test_real_rtcp_still_flows_both_ways(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """The control for the test above: a compound RR + SDES from the caller is relayed."""
    caller, agent = await peers(seed=11), await peers(seed=12)
    call = await _call(engine, caller, agent, agent_mux=True)
    await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    rr = struct.pack("!BBHI", 0x80, 201, 1, caller.ssrc)
    sdes = struct.pack("!BBHIBB", 0x81, 202, 2, caller.ssrc, 1, 0) + b"\x00\x00"
    _raw(caller, rr + sdes, call.caller_rtcp)
    await _until(lambda: agent.received.rtcp == 1)
    stats = await engine.stats("a")
    assert (stats.rtcp_in, stats.rtcp_not_rtcp, stats.stranger_packets) == (1, 0, 0)


# --- 4. latching that cannot be hijacked ----------------------------------------------------

async def test_a_stranger_first_cannot_latch_and_hears_nothing(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """A stranger on another IP sends first (the card, in-band) and keeps sending; the agent
    gets the caller's audio only, masked; the stranger receives nothing from the agent."""
    caller, agent = await peers(seed=13), await peers(seed=14)
    stranger = await peers(STRANGER_HOST, seed=15)
    call = await _call(engine, caller, agent)
    audio = _card_audio()
    stranger_ticks = _frames(stranger, audio, call.caller_rtp)
    caller_ticks = _frames(caller, audio, call.caller_rtp)
    stranger.send_packet(*stranger_ticks[0][0])  # first, before the caller
    await _stats_until(engine, lambda s: s.stranger_packets == 1)
    later = [*stranger_ticks[1:], []]
    mixed: Send = [s + c for s, c in zip(later, caller_ticks, strict=True)]
    agent_ticks = _frames(agent, np.zeros(audio.size), call.agent_rtp)
    sent_stranger = len(stranger_ticks)

    async def stranger_and_caller() -> int:
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        for i, batch in enumerate(mixed):
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
            for packet, dest in batch:
                (stranger if packet.ssrc == stranger.ssrc else caller).send_packet(packet, dest)
                sent += packet.ssrc == caller.ssrc
        return sent

    sent, _ = await asyncio.gather(stranger_and_caller(), _send(agent, agent_ticks))
    await _until(lambda: len(agent.received.packets) >= sent
                 and len(caller.received.packets) >= len(agent_ticks))
    await asyncio.sleep(0.1)
    assert {p.ssrc for _, p in agent.received.packets} == {caller.ssrc}
    assert stranger.received.packets == [] and stranger.received.rtcp == 0
    heard = _heard(agent, {0: "ulaw"})
    assert heard.size >= sent * FRAME
    _assert_no_digits(heard)
    stats = await engine.stats("a")
    assert stats.endpoint == (caller.host, caller.port)
    assert stats.stranger_packets == sent_stranger and stats.packets_in == sent


async def test_srtp_latches_only_on_an_authenticated_packet(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """Junk from the SDP address's IP (another port) arrives first: it does not authenticate,
    so it latches nothing, and the real caller, who does, is heard (masked)."""
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    caller = await peers(srtp_send=key, seed=16)
    junk = await peers(seed=17)  # same IP as the caller, not the SDP port, no key
    agent = await peers(seed=18)
    call = await _call(engine, caller, agent, srtp_recv=key)
    forged = _frames(junk, np.zeros(FRAME), call.caller_rtp)[0][0][0]
    _raw(junk, bytes(forged) + os.urandom(10), call.caller_rtp)  # RTP + a made-up auth tag
    stats = await _stats_until(engine, lambda s: s.errors == 1)
    assert stats.endpoint is None and stats.stranger_packets == 0
    sent = await _send(caller, _frames(caller, _card_audio(), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    heard = _heard(agent, {0: "ulaw"})
    assert heard.size >= sent * FRAME
    _assert_no_digits(heard)
    stats = await engine.stats("a")
    assert stats.endpoint == (caller.host, caller.port) and stats.packets_in == sent


async def test_rtcp_latches_only_onto_the_rtp_endpoints_ip(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """After RTP latched, a stranger sends RTCP first: it is refused and never receives the
    agent's RTCP; the caller's RTCP (from a NAT'd port of the same IP) latches and does."""
    caller, agent = await peers(seed=19), await peers(seed=20)
    stranger = await peers(STRANGER_HOST, seed=21)
    caller_rtcp = await peers(seed=22)  # the caller's RTCP socket: same IP, another port
    call = await _call(engine, caller, agent)
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 5), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x5EED)
    _raw(stranger, rr, call.caller_rtcp)
    await _stats_until(engine, lambda s: s.stranger_packets == 1)
    _raw(caller_rtcp, rr, call.caller_rtcp)
    await _stats_until(engine, lambda s: s.rtcp_in == 1)
    # The agent's RTCP goes to the caller's latched RTCP endpoint, never to the stranger.
    _raw(agent, struct.pack("!BBHI", 0x80, 201, 1, agent.ssrc), (HOST, call.agent_rtp[1] + 1))
    await _until(lambda: caller_rtcp.received.rtcp == 1)
    await asyncio.sleep(0.05)
    assert stranger.received.rtcp == 0 and stranger.received.packets == []
    # And the audio path was intact all along.
    assert _heard(agent, {0: "ulaw"}).size >= sent * FRAME


async def test_ssrc_change_from_the_latched_source_is_relayed(
        engine: LocalMediaEngine, peers: Peers) -> None:
    caller, agent = await peers(seed=23), await peers(seed=24)
    call = await _call(engine, caller, agent)
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 5), call.caller_rtp))
    old = caller.ssrc
    caller.ssrc = old ^ 0xFFFF  # a transfer / media server restart, same socket
    sent += await _send(caller, _frames(caller, np.zeros(FRAME * 5), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    assert {p.ssrc for _, p in agent.received.packets} == {old, caller.ssrc}
    assert (await engine.stats("a")).stranger_packets == 0


@pytest.mark.parametrize("learn_any", [False, True], ids=["default", "learn-any-source"])
async def test_learning_from_another_ip_only_with_the_nat_option_and_only_in_the_window(
        engine: LocalMediaEngine, peers: Peers, clock: Clock,
        learn_any: bool) -> None:
    """The SDP names 127.0.0.2 (say, a private address); media comes from 127.0.0.1."""
    caller, agent = await peers(seed=25), await peers(seed=26)
    sdp_peer = await peers(STRANGER_HOST, seed=27)
    call = await _call(engine, caller, agent, caller_peer=(sdp_peer.host, sdp_peer.port),
                       learn_any_source=learn_any, learning_window=5.0)
    sent = await _send(caller, _frames(caller, _card_audio("41"), call.caller_rtp))
    if learn_any:  # within the window: latched, heard (masked)
        await _until(lambda: len(agent.received.packets) >= sent)
        heard = _heard(agent, {0: "ulaw"})
        assert heard.size >= sent * FRAME
        _assert_no_digits(heard)
        assert (await engine.stats("a")).endpoint == (caller.host, caller.port)
    else:
        await _stats_until(engine, lambda s: s.stranger_packets == sent)
        assert agent.received.packets == []
    # A re-INVITE to the same address resets nothing; after the window nobody new latches.
    await engine.configure("a", StreamConfig(peer=(caller.host, caller.port),
                                             codecs={0: "PCMU"}, masking=MaskingPolicy(),
                                             learn_any_source=learn_any))
    clock.offset += 10.0
    late = await peers(STRANGER_HOST, seed=28)  # neither the SDP IP now nor the endpoint
    await _send(late, _frames(late, np.zeros(FRAME * 3), call.caller_rtp))
    await _stats_until(engine, lambda s: s.stranger_packets == 3 + (0 if learn_any else sent))
    assert all(p.ssrc != late.ssrc for _, p in agent.received.packets)


async def test_no_usable_sdp_address_learns_only_within_the_window(
        engine: LocalMediaEngine, peers: Peers, clock: Clock) -> None:
    caller, agent = await peers(seed=29), await peers(seed=30)
    call = await _call(engine, caller, agent, caller_peer=("0.0.0.0", 9))
    clock.offset += 6.0  # the window (5 s from configure) is over
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    await _stats_until(engine, lambda s: s.stranger_packets == sent)
    assert (await engine.stats("a")).endpoint is None
    # Configuring the linked stream (the answer) re-opens the window: the caller now latches.
    await engine.configure("b", StreamConfig(peer=(agent.host, agent.port),
                                             codecs={0: "PCMU"}))
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    assert (await engine.stats("a")).endpoint == (caller.host, caller.port)


async def test_strict_source_accepts_only_the_sdp_address_and_port(
        engine: LocalMediaEngine, peers: Peers) -> None:
    caller, agent = await peers(seed=31), await peers(seed=32)
    natted = await peers(seed=33)  # same IP as the SDP address, another port
    call = await _call(engine, caller, agent, strict_source=True)
    n = await _send(natted, _frames(natted, np.zeros(FRAME * 3), call.caller_rtp))
    await _stats_until(engine, lambda s: s.stranger_packets == n)
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    assert {p.ssrc for _, p in agent.received.packets} == {caller.ssrc}


async def test_media_handover_plain_rtp_moves_within_the_sdp_ip_only(
        engine: LocalMediaEngine, peers: Peers) -> None:
    caller, agent = await peers(seed=34), await peers(seed=35)
    moved = await peers(seed=36)  # the caller after a NAT rebinding: same IP, new port
    stranger = await peers(STRANGER_HOST, seed=37)
    call = await _call(engine, caller, agent, media_handover=True)
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    n = await _send(stranger, _frames(stranger, np.zeros(FRAME * 3), call.caller_rtp))
    await _stats_until(engine, lambda s: s.stranger_packets == n)
    sent += await _send(moved, _frames(moved, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    assert (await engine.stats("a")).endpoint == (moved.host, moved.port)
    await _send(agent, _frames(agent, np.zeros(FRAME * 2), call.agent_rtp))
    await _until(lambda: len(moved.received.packets) == 2)  # replies follow the handover
    assert stranger.received.packets == []


async def test_media_handover_srtp_moves_to_whoever_authenticates(
        engine: LocalMediaEngine, peers: Peers) -> None:
    key = SrtpParams("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
    caller = await peers(srtp_send=key, seed=38)
    agent = await peers(seed=39)
    wrong = await peers(STRANGER_HOST, srtp_send=SrtpParams(key.suite, os.urandom(30)),
                        seed=40)
    call = await _call(engine, caller, agent, srtp_recv=key, media_handover=True)
    sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    await _send(wrong, _frames(wrong, np.zeros(FRAME * 3), call.caller_rtp))
    await _stats_until(engine, lambda s: s.errors == 3)
    assert (await engine.stats("a")).endpoint == (caller.host, caller.port)
    # The caller's session moves to another IP (same key, same SRTP context).
    moved = await peers(STRANGER_HOST, seed=41)
    moved._sender, moved.ssrc, moved._seq, moved._ts = (
        caller._sender, caller.ssrc, caller._seq, caller._ts)
    sent += await _send(moved, _frames(moved, np.zeros(FRAME * 3), call.caller_rtp))
    await _until(lambda: len(agent.received.packets) >= sent)
    assert (await engine.stats("a")).endpoint == (moved.host, moved.port)


# --- 4f. ports ------------------------------------------------------------------------------

async def test_ports_are_chosen_unpredictably_and_exhaustion_is_still_exact(
        media_ports: tuple[int, int]) -> None:
    engine = LocalMediaEngine(HOST, *media_ports)
    lo, hi = media_ports
    orders = [list(engine._port_order()) for _ in range(5)]
    every = list(range(lo, hi, 2))
    assert all(sorted(o) == every for o in orders)  # each even port once
    assert len({tuple(o) for o in orders}) > 1
    small = LocalMediaEngine(HOST, lo, lo + 4)
    await small.start()
    try:
        got = {(await small.allocate(f"s{i}", "c", rtcp_mux=False)).rtp_port for i in range(2)}
        assert got == {lo, lo + 2}
        with pytest.raises(PortsExhaustedError):
            await small.allocate("s3", "c", rtcp_mux=False)
    finally:
        await small.stop()


async def test_the_uninspectable_warning_names_the_payload_type_never_the_sdp_text(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """An encoding name is whatever the SDP said: even a card number. Logs get the PT only."""
    caller, agent = await peers(seed=42), await peers(seed=43)
    call = await _call(engine, caller, agent, codecs={0: "PCMU", 96: CARD})
    with capture_logs() as logs:
        sent = await _send(caller, _frames(caller, np.zeros(FRAME * 3), call.caller_rtp,
                                           pt=96))
        await _stats_until(engine, lambda s: s.uninspectable_packets == sent)
    warnings = [e for e in logs if "cannot be inspected" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["payload_type"] == 96  # once per stream
    assert CARD not in repr(logs)
    assert agent.received.packets == []


async def test_oversized_packets_on_a_masked_stream_are_dropped_and_audio_goes_on(
        engine: LocalMediaEngine, peers: Peers) -> None:
    """65 000-byte PCMU packets (8 s of audio each) from the latched caller: each would make the
    look-ahead hold seconds of audio; they are dropped and counted, the call's normal-sized audio
    still reaches the agent, and the masking still masks."""
    caller, agent = await peers(seed=21), await peers(seed=22)
    call = await _call(engine, caller, agent)
    ticks = _frames(caller, _card_audio(), call.caller_rtp)
    huge = 0

    def oversized(packet: RtpPacket) -> bytes:  # every fifth packet is followed by a huge one
        nonlocal huge
        if packet.sequence_number % 5 == 2:
            huge += 1
            _raw(caller, bytes(RtpPacket(0, (packet.sequence_number + 30000) & 0xFFFF,
                                         packet.timestamp, packet.ssrc,
                                         payload=bytes(65000))), call.caller_rtp)
        return bytes(packet)

    sent = await _send(caller, ticks, raw=oversized)
    await _until(lambda: len(agent.received.packets) >= sent)
    assert max(len(p.payload) for _, p in agent.received.packets) == FRAME
    _assert_no_digits(_heard(agent, {0: "ulaw"}))
    stats = await _stats_until(engine, lambda s: s.errors >= huge)
    assert huge > 20 and stats.errors == huge and stats.packets_in == sent
