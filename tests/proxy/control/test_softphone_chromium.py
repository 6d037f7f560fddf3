"""The agent panel's softphone end to end, in real Chromium (Debian package, via Playwright):
the panel page registers to real Kamailio (the shipped kamailio.cfg, WITH_WEBRTC) over SIP on a
WebSocket with JsSIP; a carrier (sipp, from 127.0.0.2) calls the agent; Kamailio routes the call
through ToneGuard (WebRTC toward the browser, RTP toward the carrier) and rings the page; the
agent answers in the page, starts a payment there, the caller keys a test card (card number and
expiry in-band, the security code as RFC 4733 events, from a pcap sipp plays), the token shows
in the page, the agent hangs up. What the browser heard (recorded in the page through WebAudio)
decodes to no digit with spandsp and multimon-ng, while the caller's audio did arrive."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, async_playwright, expect
from scipy.signal import resample_poly

from dsp import tones
from gateway.pki import init_pki
from proxy.api.auth import AgentDirectory
from proxy.demo.multimon import multimon_detect
from proxy.demo.simulate import TEST_CARDS
from proxy.demo.spandsp import spandsp_detect
from proxy.service.config import load_config
from proxy.service.serve import Node
from proxy.service.wav import write_wav
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.gateway.stub import running_gateway
from tests.proxy.control import chromium
from tests.proxy.control.sip_peers import (
    CARRIER_IP,
    kamailio,
    rtp_packets,
    sipp,
    stop,
    write_pcap,
)

pytestmark = [
    pytest.mark.peer,
    chromium.needs_chromium,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]
AGENT = "agent-demo"
CALLER = "02079460018"  # the caller's number (an Ofcom drama number), From user → panel label
PAN, EXPIRY, CODE = TEST_CARDS["visa"]
WAIT_MS = 20_000

# The carrier's 200 OK to a request it received (the agent's INFO, then its BYE).
OK = f"""  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:{CALLER}@[local_ip]:[local_port]>
Content-Length: 0

]]></send>"""

# The carrier: calls the agent's AOR through Kamailio, and keys the card only once the agent
# has started the payment — the page says so with an INFO (what a human caller would hear as
# "please key your card now"), so the test needs no fixed pause. Then waits for the agent's BYE.
CARRIER_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier">
  <send retrans="500"><![CDATA[
INVITE sip:{AGENT}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:{AGENT}@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{CALLER}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:{AGENT}@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
[routes]
Contact: <sip:{CALLER}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv request="INFO"/>
{OK}
  <nop><action><exec play_pcap_audio="card.pcap"/></action></nop>
  <recv request="BYE"/>
{OK}
</scenario>
"""

# Records the softphone's remote stream at 48 kHz once it plays (as test_webrtc_chromium.py).
RECORD_JS = """
() => new Promise((resolve) => {
  const start = () => {
    const stream = window.softphone.remoteStream;
    if (!stream) { setTimeout(start, 50); return; }
    window.chunks = [];
    const ctx = new AudioContext({sampleRate: 48000});
    const src = ctx.createMediaStreamSource(stream);
    const proc = ctx.createScriptProcessor(4096, 1, 1);
    proc.onaudioprocess = (e) => window.chunks.push(Array.from(e.inputBuffer.getChannelData(0)));
    src.connect(proc); proc.connect(ctx.destination);
    window.recorder = {ctx, src, proc};
    resolve(true);
  };
  start();
})
"""


@dataclass
class Softphone:
    node: Node
    api: str
    agent_key: str
    ws_port: int
    sip_secret: str


@pytest.fixture
async def softphone_stack(tmp_path: Path, media_ports: tuple[int, int]
                          ) -> AsyncIterator[Softphone]:
    """The gateway stub (mutual TLS) and a node whose API points the panel's softphone at
    Kamailio's WebSocket (``[api] softphone_ws_url``), with SIP credentials derived from a secret
it shares with Kamailio (``softphone_secret_file``)."""
    async with running_gateway(init_pki(tmp_path / "gateway")) as gateway:
        agents = AgentDirectory()
        agent_key = agents.add(AGENT, "agent")
        ws_port = pick_tcp_port()
        sip_secret = secrets.token_urlsafe(24)
        (tmp_path / "softphone.secret").write_text(sip_secret + "\n")
        config = load_config(overrides={
            "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
            "media": {"port_min": media_ports[0], "port_max": media_ports[1]},
            "api": {"listen": "127.0.0.1:0", "softphone_ws_url": f"ws://127.0.0.1:{ws_port}",
                    "softphone_secret_file": str(tmp_path / "softphone.secret")},
            "gateway": gateway.config(),
        })
        node = await Node.start(config, agents=agents)
        assert node.api_address is not None
        try:
            yield Softphone(node, f"http://127.0.0.1:{node.api_address[1]}", agent_key,
                            ws_port, sip_secret)
        finally:
            await node.stop()


def card_pcap(path: Path) -> tuple[int, np.ndarray]:
    """The caller: a 250 Hz hum (audio the agent must hear), the card number and expiry keyed
    in-band, the security code as RFC 4733 events, then the hum again. Returns its packet count
    and its in-band audio."""
    def keyed(keys: str) -> np.ndarray:
        return tones.dtmf_sequence(keys, tone_ms=80, gap_ms=80, lead_ms=600, tail_ms=200,
                                   low_dbm0=-10.0)
    audio = np.concatenate([tones.sine(250, 1500, -18.0), keyed(PAN + "#"),
                            keyed(EXPIRY + "#")])
    packets = rtp_packets(np.clip(np.round(audio), -32768, 32767).astype(np.int16),
                          CODE + "#")
    tail = rtp_packets(np.round(tones.sine(250, 1500, -18.0)).astype(np.int16), ssrc=0x1234)
    # Continue the stream (sequence and timestamp) after the events: same SSRC, renumbered.
    last_seq = int.from_bytes(packets[-1][2:4], "big")
    last_ts = int.from_bytes(packets[-1][4:8], "big")
    for n, packet in enumerate(tail, start=1):
        packets.append(packet[:2] + ((last_seq + n) & 0xFFFF).to_bytes(2, "big")
                       + ((last_ts + 160 * n) & 0xFFFFFFFF).to_bytes(4, "big") + packet[8:])
    write_pcap(path, packets)
    return len(packets), audio


async def _tcp_listening(port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def _shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def test_agent_answers_and_takes_a_payment_in_the_panel_softphone(
        softphone_stack: Softphone, tmp_path: Path, artifacts_dir: Path) -> None:
    stack = softphone_stack
    sip_port, centre_port = pick_udp_port(), pick_udp_port()
    carrier_port, carrier_media = pick_udp_port(CARRIER_IP), pick_udp_port(CARRIER_IP)
    packets, keyed_audio = card_pcap(tmp_path / "card.pcap")
    # The same decoders do find the card in what the caller sends (so 0 below means masked).
    assert PAN + "#" + EXPIRY in spandsp_detect(keyed_audio)
    assert PAN in multimon_detect(keyed_audio)
    mic = tmp_path / "agent.wav"
    write_wav(mic, tones.sine(700, 60_000, -15.0), rate=8000)
    carrier = None
    async with kamailio(tmp_path, sip_port=sip_port, ng_port=stack.node.ng_address[1],
                        centre_port=centre_port, carrier_port=carrier_port,
                        ws_port=stack.ws_port, softphone_secret=stack.sip_secret) as kam:
        await _tcp_listening(stack.ws_port)
        async with async_playwright() as p:
            browser = await chromium.launch(p, mic)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 760})
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text)
                        if m.type == "error" or "Content Security Policy" in m.text else None)
                await page.goto(f"{stack.api}/panel")
                await expect(page.locator("#softphone")).to_be_hidden()  # until connected
                await page.fill("#key", stack.agent_key)
                await page.click("#connect")

                # Registered to Kamailio over the WebSocket (digest, with the API's credential).
                state = page.locator("#sp-state")
                await expect(state).to_have_attribute("data-state", "registered",
                                                      timeout=WAIT_MS)
                await _shot(page, artifacts_dir, "1-registered")

                # The carrier calls the agent: the page rings.
                carrier = await sipp(tmp_path, "carrier", CARRIER_XML, ip=CARRIER_IP,
                                     port=carrier_port, media_port=carrier_media,
                                     target=f"127.0.0.1:{sip_port}", timeout_s=90)
                await expect(state).to_have_attribute("data-state", "ringing", timeout=WAIT_MS)
                await expect(page.locator("#sp-peer")).to_contain_text(CALLER)
                await expect(page.locator("#sp-answer")).to_be_visible()
                await _shot(page, artifacts_dir, "2-ringing")

                # Answered in the page: in call, and the call selected for a payment.
                await page.click("#sp-answer")
                await expect(state).to_have_attribute("data-state", "in-call", timeout=WAIT_MS)
                await expect(page.locator("#sp-mute")).to_be_visible()
                await page.evaluate(RECORD_JS)
                await expect(page.locator("#call-label")).to_have_text(f"with {CALLER}",
                                                                      timeout=WAIT_MS)
                for says in ("Unmute", "Mute"):  # mute and unmute: the button says which
                    await page.click("#sp-mute")
                    await expect(page.locator("#sp-mute")).to_have_text(says)

                # The payment, started in the same page.
                await page.fill("#amount", "12.50")
                await page.click("#start")
                await expect(page.locator("#status")).to_contain_text("capturing",
                                                                      timeout=WAIT_MS)
                await _shot(page, artifacts_dir, "3-in-call-capturing")
                await page.evaluate(
                    "window.softphone.session.sendInfo('text/plain', 'key your card now')")
                await expect(page.locator("#token")).to_contain_text("tok_", timeout=40_000)
                await expect(page.locator("#prompt")).to_contain_text("card ending 1111")
                await _shot(page, artifacts_dir, "4-token")
                card_shown = await page.text_content(
                    "[data-field='payment-card-number'] .value")
                call_ids = [c.call_id for c in stack.node.payments.calls.values()]
                assert len(call_ids) == 1
                webrtc = stack.node.registry.calls[call_ids[0]]
                browser_stats = []
                for party in webrtc.parties.values():
                    for media in party.medias:
                        browser_stats.append(await stack.node.engine.stats(media.stream_id))
                chunks = await page.evaluate("window.chunks.splice(0)")
                html = await page.content()

                # The agent hangs up: the carrier gets the BYE, the phone waits for the next.
                await page.click("#sp-hangup")
                await expect(state).to_have_attribute("data-state", "registered",
                                                      timeout=WAIT_MS)
                async with asyncio.timeout(20):
                    await carrier.wait()
                errors = (await carrier.stderr.read()).decode() if carrier.stderr else ""
                assert carrier.returncode == 0, errors + kam.log.read_text()[-3000:]
                await _shot(page, artifacts_dir, "5-hung-up")
            finally:
                await browser.close()
                if carrier is not None:
                    await stop(carrier)

    assert not [m for m in problems if "Content Security Policy" in m], problems
    assert card_shown is not None and card_shown.endswith("1111") and "•" in card_shown
    assert PAN not in html and re.search(r"Token: tok_", html)
    # Media went both ways through ToneGuard's two legs (the browser's is DTLS-SRTP).
    assert len(browser_stats) == 2 and min(s.packets_in for s in browser_stats) >= 100
    assert all(s.dtls_failures == 0 for s in browser_stats)
    # What the browser heard: the caller's audio arrived (the 250 Hz hum, loud), no digit.
    recorded = np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks]) * 32768
    heard = resample_poly(recorded, 1, 6)  # 48 kHz → 8 kHz
    assert heard.size >= packets * 160 * 0.8, (heard.size, packets)
    # (The loudest thing heard is ToneGuard's masking tone where the keys were: the hum is
    # checked as a narrow band standing far above the spectrum's median.)
    power = np.abs(np.fft.rfft(heard)) ** 2
    freqs = np.fft.rfftfreq(heard.size, 1 / 8000)
    hum = power[(freqs > 245) & (freqs < 255)].max()
    assert 10 * np.log10(hum / np.median(power[(freqs > 100) & (freqs < 3400)])) > 30.0
    assert 10 * np.log10(np.mean(heard ** 2) + 1e-9) > 40.0
    assert spandsp_detect(heard) == ""
    assert multimon_detect(heard) == ""
