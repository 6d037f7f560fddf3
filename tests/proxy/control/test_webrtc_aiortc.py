"""A WebRTC agent (aiortc's RTCPeerConnection: ICE, DTLS-SRTP, rtcp-mux, BUNDLE) through
ToneGuard to a carrier leg (proxy.demo.phone.RtpPeer, RTP or SDES-SRTP), the ng messages as
Kamailio sends them for a WebRTC bridge.

The carrier keys a test card in-band and as RFC 4733 events while the agent talks: audio must
arrive both ways, the card must be captured, and neither spandsp nor multimon-ng may find a
digit in what the browser heard. A wrong fingerprint fails the leg (nothing relayed either
way) without disturbing another call.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dsp import tones
from proxy.control import sdes
from proxy.control.calls import CallRegistry
from proxy.control.sdp import parse
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.dtls import NodeCertificate
from proxy.media.engine import LocalMediaEngine
from proxy.media.types import DigitEvent
from proxy.media.workers import WorkerPoolEngine
from tests.proxy.control.webrtc_peers import BrowserAgent

CARD = "4111111111111111"
EVENT_KEYS = "5555"
LOOKAHEAD_MS = 26
WEBRTC_KEYS = {"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force",
               "rtcp-mux": ["offer"], "flags": ["generate mid"]}


def _agent_voice(seconds: float) -> np.ndarray:
    """What the agent says: a steady 700 Hz tone (easy to find at the carrier)."""
    return tones.sine(700, seconds * 1000, -15.0)


def _card_audio() -> np.ndarray:
    rng = np.random.default_rng(3)
    # A speech stand-in far from every DTMF frequency (the leak meter reads 1 kHz as 941 Hz).
    lead = tones.sine(250, 600, -18.0)
    keyed = tones.dtmf_sequence(CARD, tone_ms=60, gap_ms=60, lead_ms=100, tail_ms=400,
                                low_dbm0=-12.0)
    audio = np.concatenate([lead, keyed])
    return audio + tones.white_noise(audio.size, -50.0, rng)


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _level_db(samples: np.ndarray) -> float:
    return 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-9)


@pytest.mark.parametrize("carrier_srtp", [False, True], ids=["carrier-rtp", "carrier-sdes"])
async def test_browser_agent_hears_the_carrier_masked_and_is_heard(
        masking_engine: LocalMediaEngine, carrier_srtp: bool) -> None:
    engine = masking_engine  # the shared fixture (tests/proxy/conftest.py)
    digits: list[DigitEvent] = []
    registry = CallRegistry(engine, address="127.0.0.1",
                            on_digit=lambda c, t, e: digits.append(e))
    proto = "RTP/SAVP" if carrier_srtp else "RTP/AVP"
    key = sdes.generate("AES_CM_128_HMAC_SHA1_80") if carrier_srtp else None
    carrier = await RtpPeer(srtp_send=key.params if key else None, seed=31).start()
    browser = BrowserAgent(_agent_voice(6.0))
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "webrtc", "from-tag": "carrier",
            "sdp": audio_sdp("127.0.0.1", carrier.port, proto=proto,
                             crypto=[key] if key else None), **WEBRTC_KEYS})
        answer_sdp = await browser.answer(offer["sdp"])
        answer = await registry.handle({
            "command": "answer", "call-id": "webrtc", "from-tag": "carrier",
            "to-tag": "browser", "sdp": answer_sdp, "ICE": "remove"})
        toward_carrier = parse(answer["sdp"])
        assert toward_carrier.media[0].proto == proto
        assert "candidate" not in answer["sdp"] and "fingerprint" not in answer["sdp"]
        if key:
            carrier.set_srtp_recv(sdes.offered(
                toward_carrier.media[0].attributes("crypto"))[0].params)
        await _until(lambda: browser.pc.connectionState == "connected", timeout=15)
        dest = media_endpoint(answer["sdp"])
        audio = _card_audio()
        sent = await carrier.play(audio, dest)
        for digit in EVENT_KEYS:  # then the same caller keys RFC 4733 events
            await carrier.send_event(digit, dest, duration_ms=100)
        tail = await carrier.play(tones.sine(250, 400, -18.0), dest)
        await browser.wait_samples(int(0.8 * (sent + tail) * 160), timeout=10)
        await _until(lambda: len(digits) >= len(CARD) + len(EVENT_KEYS))
        heard = browser.heard()
        # Audio did arrive: most of it, and the 250 Hz lead is audible (not all silence).
        assert heard.size >= 0.8 * (audio.size + 3200)
        assert _level_db(heard) > 40.0
        assert spandsp_detect(heard) == ""
        assert multimon_detect(heard) == ""
        assert leaked_ms(heard) == 0.0
        assert "".join(d.digit for d in digits) == CARD + EVENT_KEYS
        # The agent is heard by the carrier: its 700 Hz, through DTLS-SRTP → RTP/SDES.
        await carrier.wait_for(100, timeout=10)
        voice = carrier.received.audio()
        spectrum = np.abs(np.fft.rfft(voice[-8000:]))
        assert abs(np.argmax(spectrum) - 700) < 10  # a 1 s window: 1 Hz bins
        browser_stats = await engine.stats("webrtc/~/0")
        assert browser_stats.dtls_failures == 0 and browser_stats.packets_in >= 100
    finally:
        await browser.close()
        carrier.close()


async def test_browser_offer_to_a_plain_carrier_we_are_dtls_client(
        masking_engine: LocalMediaEngine) -> None:
    engine = masking_engine  # the shared fixture (tests/proxy/conftest.py)
    registry = CallRegistry(engine, address="127.0.0.1")
    browser = BrowserAgent(_agent_voice(3.0))
    carrier = await RtpPeer(seed=41).start()
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "out", "from-tag": "browser",
            "sdp": await browser.offer(), "transport-protocol": "RTP/AVP", "ICE": "remove",
            "rtcp-mux": ["demux"]})
        assert parse(offer["sdp"]).media[0].proto == "RTP/AVP"
        assert "ice-ufrag" not in offer["sdp"] and "fingerprint" not in offer["sdp"]
        answer = await registry.handle({
            "command": "answer", "call-id": "out", "from-tag": "browser", "to-tag": "carrier",
            "sdp": audio_sdp("127.0.0.1", carrier.port, payload_types=(0, 8))})
        assert "a=setup:active" in answer["sdp"]
        await browser.accept(answer["sdp"])
        await _until(lambda: browser.pc.connectionState == "connected", timeout=15)
        sent = await carrier.play(tones.sine(1000, 2000, -15.0), media_endpoint(offer["sdp"]))
        await browser.wait_samples(int(0.8 * sent * 160), timeout=10)
        await carrier.wait_for(50, timeout=10)
        assert _level_db(browser.heard()) > 40.0
        stats = await engine.stats("out/browser/0")
        assert stats.dtls_failures == 0 and stats.packets_in >= 50
    finally:
        await browser.close()
        carrier.close()


async def test_wrong_fingerprint_fails_the_leg_and_no_media_crosses(
        masking_engine: LocalMediaEngine) -> None:
    """The browser's answer names another certificate's fingerprint (a man in the middle's
    view): the handshake completes on the wire but fails verification; nothing reaches either
    side, while a plain call beside it is relayed."""
    engine = masking_engine  # the shared fixture (tests/proxy/conftest.py)
    registry = CallRegistry(engine, address="127.0.0.1")
    carrier = await RtpPeer(seed=51).start()
    browser = BrowserAgent(_agent_voice(4.0))
    other_a, other_b = await RtpPeer(seed=52).start(), await RtpPeer(seed=53).start()
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "mitm", "from-tag": "carrier",
            "sdp": audio_sdp("127.0.0.1", carrier.port), **WEBRTC_KEYS})
        answer_sdp = await browser.answer(offer["sdp"])
        forged = NodeCertificate.generate()
        lines = [line if not line.startswith("a=fingerprint:") else
                 f"a=fingerprint:sha-256 {forged.fingerprint()}"
                 for line in answer_sdp.split("\r\n")
                 if not line.startswith("a=fingerprint:sha-") or "sha-256" in line]
        answer = await registry.handle({
            "command": "answer", "call-id": "mitm", "from-tag": "carrier",
            "to-tag": "browser", "sdp": "\r\n".join(lines)})
        # Another call on the same engine, plain RTP.
        await registry.handle({"command": "offer", "call-id": "plain", "from-tag": "a",
                               "sdp": audio_sdp("127.0.0.1", other_a.port)})
        a2 = await registry.handle({"command": "answer", "call-id": "plain", "from-tag": "a",
                                    "to-tag": "b", "sdp": audio_sdp("127.0.0.1", other_b.port)})
        await _until(lambda: browser.pc.connectionState in ("connected", "failed"), 15)
        await asyncio.gather(
            carrier.play(tones.sine(1000, 1500, -15.0), media_endpoint(answer["sdp"])),
            other_a.play(tones.sine(1000, 1500, -15.0), media_endpoint(a2["sdp"])))
        await other_b.wait_for(50, timeout=10)  # the other call is untouched
        stats = await engine.stats("mitm/~/0")
        assert stats.dtls_failures == 1
        assert stats.packets_out == 0  # nothing sent to the unverified browser
        assert stats.webrtc_dropped > 0
        assert browser.heard().size == 0
        carrier_stats = await engine.stats("mitm/carrier/0")
        assert carrier_stats.packets_out == 0 and len(carrier.received.packets) == 0
        assert (await engine.stats("plain/a/0")).packets_in >= 50
    finally:
        await browser.close()
        carrier.close()
        other_a.close()
        other_b.close()


async def test_browser_agent_through_worker_processes(media_ports: tuple[int, int]) -> None:
    """The DTLS parameters (certificate included) cross to a worker process with the stream's
    configuration; the handshake, ICE and relay run there."""
    engine = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2, tick_ms=20,
                              idle_timeout=60, lookahead_ms=LOOKAHEAD_MS)
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1")
    carrier = await RtpPeer(seed=81).start()
    browser = BrowserAgent(_agent_voice(4.0))
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "pool", "from-tag": "carrier",
            "sdp": audio_sdp("127.0.0.1", carrier.port), **WEBRTC_KEYS})
        answer = await registry.handle({
            "command": "answer", "call-id": "pool", "from-tag": "carrier",
            "to-tag": "browser", "sdp": await browser.answer(offer["sdp"])})
        await _until(lambda: browser.pc.connectionState == "connected", timeout=15)
        sent = await carrier.play(tones.sine(250, 2000, -15.0), media_endpoint(answer["sdp"]))
        await browser.wait_samples(int(0.8 * sent * 160), timeout=10)
        await carrier.wait_for(50, timeout=10)
        assert _level_db(browser.heard()) > 40.0
        assert (await engine.stats("pool/~/0")).dtls_failures == 0
    finally:
        await browser.close()
        carrier.close()
        await engine.stop()
