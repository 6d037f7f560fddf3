"""A WebRTC agent leg across a re-INVITE: the carrier re-offers over ng (a session refresh, as
Kamailio sends it), ToneGuard offers the browser the same DTLS fingerprint and ICE credentials,
and the browser (aiortc) answers on its live connection. The card keyed after the re-offer must
still be masked on the agent's side (spandsp, multimon-ng, the leak meter) and captured, while
the carrier's audio did arrive. Set-up as in test_webrtc_aiortc.py."""

from __future__ import annotations

import re

from dsp import tones
from proxy.control.calls import CallRegistry
from proxy.control.sdp import parse
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.types import DigitEvent
from tests.proxy.control.test_webrtc_aiortc import (
    CARD,
    WEBRTC_KEYS,
    _agent_voice,
    _card_audio,
    _level_db,
    _until,
)
from tests.proxy.control.webrtc_peers import BrowserAgent


def _dtls_and_ice(sdp: str) -> list[str]:
    return sorted(line for line in sdp.split("\r\n")
                  if line.startswith(("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:",
                                      "a=setup:")))


async def test_a_card_keyed_after_a_re_offer_is_masked_for_the_browser_agent(
        masking_engine: LocalMediaEngine) -> None:
    engine = masking_engine  # the shared fixture (tests/proxy/conftest.py)
    digits: list[DigitEvent] = []
    registry = CallRegistry(engine, address="127.0.0.1",
                            on_digit=lambda c, t, e: digits.append(e))
    carrier = await RtpPeer(seed=61).start()
    browser = BrowserAgent(_agent_voice(8.0))
    carrier_sdp = audio_sdp("127.0.0.1", carrier.port)
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "reinvite", "from-tag": "carrier",
            "sdp": carrier_sdp, **WEBRTC_KEYS})
        answer = await registry.handle({
            "command": "answer", "call-id": "reinvite", "from-tag": "carrier",
            "to-tag": "browser", "sdp": await browser.answer(offer["sdp"]), "ICE": "remove"})
        await _until(lambda: browser.pc.connectionState == "connected", timeout=15)
        dest = media_endpoint(answer["sdp"])
        # Some talk before the re-INVITE (250 Hz: far from every DTMF frequency).
        before = await carrier.play(tones.sine(250, 1000, -18.0), dest)
        await browser.wait_samples(int(0.8 * before * 160), timeout=10)

        # The carrier's re-INVITE: the same SDP, a new origin version (a session refresh).
        reoffer = await registry.handle({
            "command": "offer", "call-id": "reinvite", "from-tag": "carrier",
            "sdp": re.sub(r"^(o=\S+ \S+) 1 ", r"\1 2 ", carrier_sdp, flags=re.M),
            **WEBRTC_KEYS})
        assert _dtls_and_ice(reoffer["sdp"]) == _dtls_and_ice(offer["sdp"])
        reanswer_sdp = await browser.answer(reoffer["sdp"])  # on the live connection
        reanswer = await registry.handle({
            "command": "answer", "call-id": "reinvite", "from-tag": "carrier",
            "to-tag": "browser", "sdp": reanswer_sdp, "ICE": "remove"})
        assert media_endpoint(reanswer["sdp"]) == dest  # the carrier keeps its port
        assert parse(reanswer["sdp"]).media[0].proto == "RTP/AVP"

        heard_before = browser.heard().size
        audio = _card_audio()
        sent = await carrier.play(audio, dest)
        await browser.wait_samples(heard_before + int(0.9 * sent * 160), timeout=10)
        await _until(lambda: len(digits) >= len(CARD))
        heard = browser.heard()[heard_before:]
        # The card's audio arrived (nearly all of it, audible) ...
        assert heard.size >= 0.9 * audio.size and _level_db(heard) > 40.0
        # ... without a key the agent could hear, and the card was captured.
        assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
        assert leaked_ms(heard) == 0.0
        assert "".join(d.digit for d in digits) == CARD
        stats = await engine.stats("reinvite/~/0")
        assert stats.dtls_failures == 0
    finally:
        await browser.close()
        carrier.close()
