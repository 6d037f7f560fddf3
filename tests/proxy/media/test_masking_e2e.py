"""Masking through the real media engine on loopback: caller → ToneGuard → agent (+ recorder).

Real UDP sockets and timing: the caller keys a test card in-band while telephone-event is
negotiated (the case rtpengine 10.5 leaves unmasked), over plain RTP and over SRTP; the agent
leg and the recording tap are decoded by spandsp and multimon-ng.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from dsp import g711, tones
from proxy.control import sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import parse
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.types import DigitEvent

CARD = "5555555555554444"
LOOKAHEAD_MS = 26


@pytest.fixture
async def recorder() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer().start()
    yield peer
    peer.close()


@pytest.fixture
async def engine(media_ports: tuple[int, int]) -> AsyncIterator[LocalMediaEngine]:
    engine = LocalMediaEngine("127.0.0.1", *media_ports,
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=LOOKAHEAD_MS))
    await engine.start()
    yield engine
    await engine.stop()


def _card_audio() -> np.ndarray:
    rng = np.random.default_rng(11)
    keyed = tones.dtmf_sequence(CARD, tone_ms=60, gap_ms=60, lead_ms=500, tail_ms=600,
                                low_dbm0=-12.0)
    return keyed + tones.white_noise(keyed.size, -50.0, rng)


@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
async def test_caller_card_digits_are_masked_for_agent_and_recorder(
        engine: LocalMediaEngine, recorder: RtpPeer, srtp: bool) -> None:
    digits: list[DigitEvent] = []
    registry = CallRegistry(engine, address="127.0.0.1", policy=CallPolicy(
        recording=("127.0.0.1", recorder.port)), on_digit=lambda c, t, e: digits.append(e))
    proto = "RTP/SAVP" if srtp else "RTP/AVP"
    caller_key = sdes.generate("AES_CM_128_HMAC_SHA1_80") if srtp else None
    caller = await RtpPeer(srtp_send=caller_key.params if caller_key else None,
                           seed=21).start()
    offer = await registry.handle({
        "command": "offer", "call-id": "e2e", "from-tag": "caller",
        "sdp": audio_sdp("127.0.0.1", caller.port, proto=proto,
                         crypto=[caller_key] if caller_key else None)})
    agent_key = agent_choice = None
    if srtp:
        agent_choice = sdes.offered(parse(offer["sdp"]).media[0].attributes("crypto"))[0]
        agent_key = sdes.generate(agent_choice.suite, agent_choice.tag)
    agent = await RtpPeer(srtp_send=agent_key.params if agent_key else None,
                          srtp_recv=agent_choice.params if agent_choice else None,
                          seed=22).start()
    try:
        answer = await registry.handle({
            "command": "answer", "call-id": "e2e", "from-tag": "caller", "to-tag": "agent",
            "sdp": audio_sdp("127.0.0.1", agent.port, proto=proto,
                             crypto=[agent_key] if agent_key else None)})
        assert "telephone-event" in answer["sdp"]
        if srtp:
            caller.set_srtp_recv(sdes.offered(
                parse(answer["sdp"]).media[0].attributes("crypto"))[0].params)
        audio = _card_audio()
        first_ts, started = caller._ts, asyncio.get_running_loop().time()
        sent = await caller.play(audio, media_endpoint(answer["sdp"]))
        await agent.wait_for(sent, timeout=5)
        await _until(lambda: len(digits) >= len(CARD))  # reported after the look-ahead
        heard = agent.received.audio()
        recorded = recorder.received.audio()
        assert heard.size > 0.9 * audio.size and recorded.size > 0.9 * audio.size
        for leg in (heard, recorded):
            assert spandsp_detect(leg) == ""
            assert multimon_detect(leg) == ""
            assert leaked_ms(leg) == 0.0
        assert "".join(d.digit for d in digits) == CARD
        assert all(d.source == "inband" for d in digits)
        stats = await engine.stats("e2e/caller/0")
        assert stats.packets_in == sent and stats.errors == 0
        # Arrival times (same monotonic clock as the caller's pacing): no packet left before
        # the audio one look-ahead past its end had arrived (else a tone onset could pass
        # before the detector sees it; the decoders above do not notice a short look-ahead), and
        # typically no more than the look-ahead, the packet itself and a few ticks (bounded
        # generously: the machine is shared; the figures are printed).
        delays = sorted(arrived - (started + ((p.timestamp - first_ts) % (1 << 32)) / 8000)
                        for arrived, p in agent.received.packets)
        median = delays[len(delays) // 2]
        print(f"\nadded delay ms: min {delays[0] * 1000:.1f} median {median * 1000:.1f} "
              f"max {delays[-1] * 1000:.1f}")
        assert delays[0] >= (20 + LOOKAHEAD_MS) / 1000
        assert median <= (LOOKAHEAD_MS + 20 + 3 * 20 + 100) / 1000
    finally:
        caller.close()
        agent.close()


EVENT_KEYS = "411111"
EVENT_FIRST, EVENT_EVERY, EVENT_PACKETS = 25, 12, 5  # packet indices, 20 ms each


def _tone_audio(seconds: float) -> np.ndarray:
    """What the caller says meanwhile: a steady 1 kHz tone (easy to find at the agent)."""
    rng = np.random.default_rng(5)
    n = int(seconds * 8000)
    return tones.sine(1000, int(seconds * 1000), -20.0)[:n] + tones.white_noise(n, -55.0, rng)


async def _play_with_events(caller: RtpPeer, audio: np.ndarray, dest: tuple[str, int]
                            ) -> tuple[int, int]:
    """Audio every 20 ms, and RFC 4733 events for EVENT_KEYS interleaved as a phone sends
    them (updates each 20 ms with the event's start timestamp, then three end packets);
    returns (audio packets, event packets) sent."""
    codes = g711.encode(audio, "ulaw").tobytes()
    loop = asyncio.get_running_loop()
    start, audio_sent, events_sent = loop.time(), 0, 0
    event_ts: int | None = None
    for i in range(len(codes) // 160):
        delay = start + i * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ts = caller._ts  # the timestamp this audio packet gets
        caller.send_packet(caller.next_packet(codes[160 * i:160 * i + 160], 0,
                                              marker=i == 0), dest)
        audio_sent += 1
        k, step = divmod(i - EVENT_FIRST, EVENT_EVERY)
        if i < EVENT_FIRST or k >= len(EVENT_KEYS) or step > EVENT_PACKETS:
            continue
        code = "0123456789*#".index(EVENT_KEYS[k])
        if step == 0:
            event_ts = ts
        assert event_ts is not None
        done = step == EVENT_PACKETS
        event = TelephoneEvent(code, done, 10, min(step + 1, EVENT_PACKETS) * 160)
        for _ in range(3 if done else 1):
            caller.send_packet(caller.next_packet(bytes(event), 101, marker=step == 0,
                                                  advance=0, timestamp=event_ts), dest)
            events_sent += 1
    return audio_sent, events_sent


async def _plain_call(registry: CallRegistry, caller: RtpPeer, agent: RtpPeer,
                      call_id: str) -> tuple[str, int]:
    await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "caller",
                           "sdp": audio_sdp("127.0.0.1", caller.port)})
    answer = await registry.handle({"command": "answer", "call-id": call_id,
                                    "from-tag": "caller", "to-tag": "agent",
                                    "sdp": audio_sdp("127.0.0.1", agent.port)})
    assert "telephone-event" in answer["sdp"]
    return media_endpoint(answer["sdp"])


async def _until_stats(engine: LocalMediaEngine, stream_id: str, packets_in: int) -> None:
    async with asyncio.timeout(10):
        while (await engine.stats(stream_id)).packets_in < packets_in:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "control-unmasked"])
async def test_rfc4733_events_from_a_masked_caller_never_reach_the_agent(
        engine: LocalMediaEngine, masked: bool) -> None:
    digits: list[DigitEvent] = []
    registry = CallRegistry(engine, address="127.0.0.1",
                            policy=CallPolicy(caller="offerer" if masked else "none"),
                            on_digit=lambda c, t, e: digits.append(e))
    caller, agent = await RtpPeer(seed=31).start(), await RtpPeer(seed=32).start()
    try:
        to_toneguard = await _plain_call(registry, caller, agent, "ev")
        audio = _tone_audio(2.4)
        audio_sent, events_sent = await _play_with_events(caller, audio, to_toneguard)
        await _until_stats(engine, "ev/caller/0", audio_sent + events_sent)
        # Every audio packet still reaches the agent (masked or not) ...
        await agent.wait_for(audio_sent + (0 if masked else events_sent), timeout=10)
        heard = agent.received.audio()
        assert len(agent.received.events(0)) == audio_sent
        assert heard.size >= audio.size - 160
        before_first_key = heard[:EVENT_FIRST * 160 - 400].astype(float)
        spectrum = np.abs(np.fft.rfft(before_first_key))
        assert abs(np.argmax(spectrum) * 8000 / before_first_key.size - 1000) < 20
        assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
        if masked:
            # ... but not one telephone-event packet, and no gap in the sequence numbers
            # where the events were taken out (a gap would count the keys for the agent).
            assert agent.received.events() == []
            seqs = [p.sequence_number for _, p in agent.received.packets]
            assert sorted(seqs) == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]
            await _until(lambda: len(digits) >= len(EVENT_KEYS))
            assert "".join(d.digit for d in digits) == EVENT_KEYS
            assert {d.source for d in digits} == {"rfc4733"}
        else:  # control: this sender's events really are relayed when nothing masks them
            assert len(agent.received.events()) == events_sent
    finally:
        caller.close()
        agent.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
