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

from dsp import tones
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
from proxy.media.types import DigitEvent

CARD = "5555555555554444"


@pytest.fixture
async def recorder() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer().start()
    yield peer
    peer.close()


@pytest.fixture
async def engine(media_ports: tuple[int, int]) -> AsyncIterator[LocalMediaEngine]:
    engine = LocalMediaEngine("127.0.0.1", *media_ports,
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=26))
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
        sent = await caller.play(audio, media_endpoint(answer["sdp"]))
        await agent.wait_for(sent, timeout=5)
        await asyncio.sleep(0.3)  # the pipeline reports digits after its look-ahead
        heard = agent.received.audio()
        recorded = recorder.received.audio()
        assert heard.size > 0.9 * audio.size and recorded.size > 0.9 * audio.size
        for leg in (heard, recorded):
            assert spandsp_detect(leg) == ""
            assert multimon_detect(leg) == ""
            assert leaked_ms(leg) == 0.0
        assert "".join(d.digit for d in digits) == CARD
        assert all(d.source == "inband" for d in digits)
        # Arrival times: added delay is the look-ahead plus at most a couple of ticks.
        stats = await engine.stats("e2e/caller/0")
        assert stats.packets_in == sent and stats.errors == 0
    finally:
        caller.close()
        agent.close()
