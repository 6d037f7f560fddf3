"""kill -9 a node mid-call with a WebRTC agent (aiortc: ICE, DTLS-SRTP), start it again: the
browser does not re-handshake, it keeps sending SRTP with its keys and consent checks with its
ICE credentials; the node resumes the leg from its sealed record (the keys the verified
handshake exported, the ICE credentials, the latched candidate) with the same certificate
(configured, or the node set's generated once and kept sealed in the store), so media flows
again both ways and the carrier's card is masked."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from dsp import tones
from proxy.control.ng_client import NgClient
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.dtls import NodeCertificate
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import Talker, after, cluster, hang_up, record
from tests.proxy.store.test_restart import _until

aiortc = pytest.importorskip("aiortc")
from tests.proxy.control.webrtc_peers import BrowserAgent  # noqa: E402  (needs aiortc)

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]

WEBRTC_KEYS = {"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force",
               "rtcp-mux": ["offer"], "flags": ["generate mid"]}


async def _webrtc_keys_stored(redis_server: RedisServer, call_id: str) -> bool:
    stored = await record(redis_server, call_id)
    if stored is None:
        return False
    legs = [m.get("webrtc") for p in stored["call"]["parties"] for m in p["medias"]]
    return any(leg and leg.get("keys") and leg.get("latched") for leg in legs)


def _level_db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-9))


def _fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:"))


@pytest.mark.parametrize("certificate_from", ["config", "store"])
async def test_kill_9_resumes_a_webrtc_agent_leg_without_a_handshake(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int], certificate_from: str) -> None:
    certificate = NodeCertificate.generate()
    (tmp_path / "dtls.pem").write_bytes(certificate.certificate)
    (tmp_path / "dtls.key").write_bytes(certificate.private_key)
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-web", store_url=redis_server.url, media_ports=media_ports)
        if certificate_from == "config":
            node.config.write_text(node.config.read_text().replace("[media]\n", (
                f"[media]\ndtls_certificate = \"{tmp_path / 'dtls.pem'}\"\n"
                f"dtls_private_key = \"{tmp_path / 'dtls.key'}\"\n"), 1))
        await node.start()
        await node.ready()
        carrier = await RtpPeer(seed=31).start()
        browser = BrowserAgent(tones.sine(700, 60_000, -15.0))  # the agent talks throughout
        ng = await NgClient.connect(node.ng)
        talker: Talker | None = None
        try:
            offer = await ng.request({
                "command": "offer", "call-id": "web-1", "from-tag": "carrier",
                "label": "customer", "sdp": audio_sdp("127.0.0.1", carrier.port),
                **WEBRTC_KEYS})
            assert offer["result"] == "ok", offer
            assert (certificate.fingerprint("sha-256") in offer["sdp"]) == (
                certificate_from == "config")
            answer = await ng.request({
                "command": "answer", "call-id": "web-1", "from-tag": "carrier",
                "to-tag": "browser", "label": "agent", "ICE": "remove",
                "sdp": await browser.answer(offer["sdp"])})
            assert answer["result"] == "ok", answer
            await _until(lambda: _true(browser.pc.connectionState == "connected"), 15,
                         "DTLS connected")
            talker = Talker(carrier, media_endpoint(answer["sdp"])).start()
            await browser.wait_samples(8000, timeout=10)
            await carrier.wait_for(25, timeout=10)
            await _until(lambda: _webrtc_keys_stored(redis_server, "web-1"), 10,
                         "the leg's DTLS keys and candidate stored")

            killed = await node.kill9_and_restart()
            frames_before = len(browser.frames)
            async with asyncio.timeout(15):  # both ways again: carrier ← browser, browser ←
                while (len(after(carrier.received, killed).packets) < 50
                       or sum(f.size for f in browser.frames[frames_before:]) < 8000):
                    await asyncio.sleep(0.1)
            assert browser.pc.connectionState == "connected"  # no new handshake, no failure

            keyed_from = len(browser.frames)
            await talker.say(card_audio("4111111111111111"))
            sent = talker.segments[-1][1]  # the card's packets (fillers follow)
            assert sent > 150
            await asyncio.sleep(0.5)  # the look-ahead and aiortc's jitter buffer
            heard = np.concatenate(browser.frames[keyed_from:]).astype(np.float64)
            assert heard.size >= 0.8 * sent * 160, (heard.size, sent * 160)
            assert _level_db(heard) > 20.0  # the carrier's noise and masked tones arrived
            assert spandsp_detect(heard) == ""
            assert multimon_detect(heard) == ""
            # The agent is heard by the carrier after the restart: its 700 Hz.
            voice = after(carrier.received, killed).audio()
            spectrum = np.abs(np.fft.rfft(voice[-8000:]))
            assert abs(int(np.argmax(spectrum)) - 700) < 10
            # The restarted node presents the certificate the browser was offered.
            later = await ng.request({
                "command": "offer", "call-id": "web-2", "from-tag": "carrier",
                "sdp": audio_sdp("127.0.0.1", carrier.port), **WEBRTC_KEYS})
            assert _fingerprint(later["sdp"]) == _fingerprint(offer["sdp"])
            client = redis_server.client()
            try:
                shared = await client.get("toneguard:shared:dtls-certificate")
            finally:
                await client.aclose()
            if certificate_from == "store":  # the private key is in the store only sealed
                assert shared is not None and b"CERTIFICATE" in shared
                assert b"PRIVATE KEY" not in shared
            else:
                assert shared is None
        finally:
            await hang_up([talker], ng, carrier)
            await browser.close()
        await node.stop()
        log = node.log.read_text(errors="replace")
        assert "calls restored from the store" in log
        assert "DTLS leg failed" not in log


async def _true(value: bool) -> bool:
    return value
