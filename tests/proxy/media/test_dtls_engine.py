"""Bad input on a WebRTC leg, through the real engine on loopback (fail closed).

A scripted browser (raw UDP socket, STUN from aioice, DTLS from proxy.media.dtls as the peer)
answers a carrier's offer; then it, or a stranger, misbehaves: STUN with bad credentials, DTLS
from an address no ICE check came from, garbage and oversized records, plain RTP before the
handshake, a handshake that never finishes, checks that stop (consent). Each is dropped and
counted or fails the leg, and nothing crosses the relay unverified.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aioice import stun
from structlog.testing import capture_logs

from dsp import tones
from proxy.control.calls import CallRegistry
from proxy.control.sdp import parse
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media import dtls, ice
from proxy.media.dtls import DtlsSession, DtlsState, NodeCertificate
from proxy.media.engine import LocalMediaEngine
from proxy.media.rtp import RtpPacket
from proxy.media.srtp import SrtpReceiver, SrtpSender
from proxy.media.types import DtlsParams, StreamStats
from tests import fuzzing

BROWSER_CERT = NodeCertificate.generate()
UFRAG, PWD = "Brws", "browserpasswordbrowserpw"
LEG = "w/~/0"


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _answer_sdp(port: int) -> str:
    return "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 0", "c=IN IP4 127.0.0.1", "a=rtcp-mux", "a=mid:0",
        f"a=ice-ufrag:{UFRAG}", f"a=ice-pwd:{PWD}",
        f"a=fingerprint:sha-256 {BROWSER_CERT.fingerprint()}", "a=setup:active",
        "a=rtpmap:0 PCMU/8000", "a=sendrecv"]) + "\r\n"


@dataclass
class Browser:
    sock: socket.socket
    ufrag: str  # ToneGuard's (from its offer)
    pwd: str
    port: int  # ToneGuard's media port for the browser

    @property
    def dest(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def check(self, sock: socket.socket | None = None, *, pwd: str | None = None,
              username: str | None = None) -> bytes:
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        message.attributes["USERNAME"] = username or f"{self.ufrag}:{UFRAG}"
        message.attributes["ICE-CONTROLLING"] = 7
        message.attributes["USE-CANDIDATE"] = None
        message.add_message_integrity((pwd or self.pwd).encode())
        (sock or self.sock).sendto(bytes(message), self.dest)
        return message.transaction_id

    async def recv(self, sock: socket.socket | None = None, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(sock or self.sock, 4096)

    async def handshake(self, session: DtlsSession) -> None:
        """As DTLS client from this socket until connected (answers feed back in)."""
        for record in session.start():
            self.sock.sendto(record, self.dest)
        async with asyncio.timeout(10):
            while session.state is not DtlsState.CONNECTED:
                data = await self.recv()
                if 20 <= data[0] <= 63:
                    for record in session.receive(data):
                        self.sock.sendto(record, self.dest)
                assert session.state is not DtlsState.FAILED, session.reason


@pytest.fixture
async def engine(media_ports: tuple[int, int]) -> AsyncIterator[LocalMediaEngine]:
    engine = LocalMediaEngine("127.0.0.1", *media_ports)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def call(engine: LocalMediaEngine) -> AsyncIterator[tuple[CallRegistry, RtpPeer, Browser]]:
    registry = CallRegistry(engine, address="127.0.0.1")
    carrier = await RtpPeer(seed=61).start()
    sock = _udp()
    offer = await registry.handle({
        "command": "offer", "call-id": "w", "from-tag": "carrier",
        "sdp": audio_sdp("127.0.0.1", carrier.port, payload_types=(0,)),
        "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force"})
    m = parse(offer["sdp"]).media[0]
    browser = Browser(sock, m.attributes("ice-ufrag")[0], m.attributes("ice-pwd")[0], m.port)
    await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                           "to-tag": "browser", "sdp": _answer_sdp(sock.getsockname()[1])})
    yield registry, carrier, browser
    carrier.close()
    sock.close()


def _client(ours: NodeCertificate) -> DtlsSession:
    return DtlsSession(DtlsParams("client", (("sha-256", ours.fingerprint()),),
                                  BROWSER_CERT.certificate, BROWSER_CERT.private_key),
                       time.monotonic)


async def _stats(engine: LocalMediaEngine, predicate, stream: str = LEG,  # type: ignore[no-untyped-def]
                 timeout: float = 5.0) -> StreamStats:
    async with asyncio.timeout(timeout):
        while not predicate(stats := await engine.stats(stream)):
            await asyncio.sleep(0.02)
    return stats


def _nothing_waiting(sock: socket.socket) -> bool:
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


async def test_stun_with_bad_credentials_is_dropped_unanswered_and_does_not_latch(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser]) -> None:
    _, _, browser = call
    browser.check(pwd="not-the-password-at-all")
    browser.check(username=f"someone:{UFRAG}")
    browser.sock.sendto(b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"x" * 20, browser.dest)
    stats = await _stats(engine, lambda s: s.webrtc_dropped >= 3)
    assert stats.endpoint is None and stats.errors >= 3
    good = browser.check()
    reply = stun.parse_message(await browser.recv())  # the first answer is the good one's
    assert reply.transaction_id == good
    assert reply.check_message_integrity(browser.pwd.encode())
    assert (await engine.stats(LEG)).endpoint == browser.sock.getsockname()


async def test_dtls_from_a_stranger_is_dropped_and_the_peer_still_connects(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser]) -> None:
    registry, carrier, browser = call
    browser.check()
    await browser.recv()  # checked: latched on the browser's address
    stranger = _udp()
    try:
        intruder = _client(registry.certificate)
        for record in intruder.start():
            stranger.sendto(record, browser.dest)
        await _stats(engine, lambda s: s.webrtc_dropped >= 1)
        session = _client(registry.certificate)
        await browser.handshake(session)
        await _stats(engine, lambda s: s.dtls_failures == 0 and s.packets_out == 0)
        assert _nothing_waiting(stranger)  # nothing was ever sent to the stranger
        # The verified leg relays: carrier audio reaches the browser, SRTP with its keys.
        assert session.recv_key is not None
        receiver = SrtpReceiver(session.recv_key)
        await carrier.play(tones.sine(1000, 200, -15.0), media_endpoint(_carrier_sdp(registry)))
        packet = RtpPacket.parse(receiver.unprotect(await browser.recv()))
        assert packet.payload_type == 0
    finally:
        stranger.close()


def _carrier_sdp(registry: CallRegistry) -> str:
    local = registry.calls["w"].parties["carrier"].medias[0].local
    return audio_sdp("127.0.0.1", local.rtp_port)


async def test_garbage_oversized_and_unknown_datagrams_are_dropped_and_counted(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser]) -> None:
    registry, carrier, browser = call
    browser.check()
    await browser.recv()
    browser.sock.sendto(b"\x16" + b"\x00" * 1600, browser.dest)  # oversized "handshake"
    browser.sock.sendto(bytes([0x50]) + b"\x00" * 40, browser.dest)  # 64-127: no protocol
    browser.sock.sendto(b"\x04" + b"\x00" * 40, browser.dest)  # 4-19: no protocol
    stats = await _stats(engine, lambda s: s.webrtc_dropped >= 3)
    assert stats.dtls_failures == 0
    browser.sock.sendto(b"\x17\xfe\xfd" + b"\x00" * 8 + b"\x00\x05" + b"junk!", browser.dest)
    browser.sock.sendto(b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x40\x00" + b"short", browser.dest)
    # Plain RTP from the checked address is not relayed to the carrier.
    browser.sock.sendto(bytes(RtpPacket(0, 1, 160, 99, False, payload=b"\xff" * 160)),
                        browser.dest)
    stats = await _stats(engine, lambda s: s.webrtc_dropped >= 6)
    assert stats.packets_in == 0 and stats.dtls_failures == 0
    assert (await engine.stats("w/carrier/0")).packets_out == 0
    assert len(carrier.received.packets) == 0
    # Garbage did not wedge or fail the association: the peer keys the leg afterwards.
    await browser.handshake(_client(registry.certificate))
    assert (await engine.stats(LEG)).dtls_failures == 0


async def test_plain_rtp_before_the_handshake_is_not_relayed(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser]) -> None:
    _, carrier, browser = call
    browser.check()
    await browser.recv()
    for seq in range(5):
        browser.sock.sendto(bytes(RtpPacket(0, seq, 160 * seq, 99, False,
                                            payload=b"\xff" * 160)), browser.dest)
    stats = await _stats(engine, lambda s: s.webrtc_dropped >= 5)
    assert stats.packets_in == 0 and len(carrier.received.packets) == 0


async def test_handshake_that_never_finishes_fails_the_leg(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser],
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry, carrier, browser = call
    monkeypatch.setattr(dtls, "HANDSHAKE_TIMEOUT", 0.5)
    # A new configuration (re-answer with a new fingerprint) starts a session under the
    # shortened timeout.
    other = NodeCertificate.generate()
    await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                           "to-tag": "browser", "sdp": _answer_sdp(
                               browser.sock.getsockname()[1]).replace(
                               BROWSER_CERT.fingerprint(), other.fingerprint())})
    browser.check()
    await browser.recv()
    hello = _client(registry.certificate).start()
    browser.sock.sendto(hello[0], browser.dest)  # ClientHello, then silence
    stats = await _stats(engine, lambda s: s.dtls_failures == 1)
    assert stats.packets_out == 0
    await carrier.play(tones.sine(1000, 200, -15.0), media_endpoint(_carrier_sdp(registry)))
    stats = await _stats(engine, lambda s: s.webrtc_dropped >= 10)
    assert stats.packets_out == 0


async def test_consent_expiry_stops_media_to_the_browser_until_it_checks_again(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser],
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry, carrier, browser = call
    monkeypatch.setattr(ice, "CONSENT_TIMEOUT", 0.4)
    browser.check()
    await browser.recv()
    session = _client(registry.certificate)
    await browser.handshake(session)
    dest = media_endpoint(_carrier_sdp(registry))
    play = asyncio.create_task(carrier.play(tones.sine(1000, 4000, -15.0), dest))
    try:
        await _stats(engine, lambda s: s.packets_out >= 5)  # flowing while consent is fresh
        # No more checks: within the consent timeout plus one scan, sending stops.
        stopped = await _stats(engine, lambda s: s.webrtc_dropped >= 5, timeout=5)
        later = await _stats(engine, lambda s: s.webrtc_dropped >= stopped.webrtc_dropped + 10)
        assert later.packets_out == stopped.packets_out
        browser.check()  # the browser checks again: media resumes
        await _stats(engine, lambda s: s.packets_out >= later.packets_out + 5)
    finally:
        play.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await play


async def test_checks_before_the_answer_keep_their_latch_when_the_answer_arrives(
        engine: LocalMediaEngine) -> None:
    """A browser checks (and says hello) as soon as it has our offer; its answer may reach us
    later (through the SIP proxy, or a worker process). The answer must not undo the latch."""
    registry = CallRegistry(engine, address="127.0.0.1")
    carrier = await RtpPeer(seed=62).start()
    sock = _udp()
    try:
        offer = await registry.handle({
            "command": "offer", "call-id": "w", "from-tag": "carrier",
            "sdp": audio_sdp("127.0.0.1", carrier.port, payload_types=(0,)),
            "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force"})
        m = parse(offer["sdp"]).media[0]
        browser = Browser(sock, m.attributes("ice-ufrag")[0], m.attributes("ice-pwd")[0],
                          m.port)
        browser.check()
        await browser.recv()
        assert (await engine.stats(LEG)).endpoint == sock.getsockname()
        await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                               "to-tag": "browser", "sdp": _answer_sdp(sock.getsockname()[1])})
        assert (await engine.stats(LEG)).endpoint == sock.getsockname()
        await browser.handshake(_client(registry.certificate))  # no new check needed
    finally:
        carrier.close()
        sock.close()


def _webrtc_like(rng: random.Random, check: bytes, record: bytes) -> bytes:
    """STUN-, DTLS- or RTP-shaped hostile datagrams: mutated real checks and records, random
    bodies behind each protocol's first byte, and the RTP/RTCP campaign's inputs."""
    roll = rng.random()
    if roll < 0.25:  # a real check with bytes flipped (integrity or FINGERPRINT must catch it)
        data = bytearray(check)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if roll < 0.4:
        return bytes([rng.randrange(4)]) + rng.randbytes(rng.choice([0, 3, 19, 40, 600]))
    if roll < 0.55:  # a real record, mutated or truncated
        data = bytearray(record[:rng.randrange(1, len(record) + 1)])
        data[rng.randrange(len(data))] ^= 0xFF
        return bytes(data)
    if roll < 0.7:
        return bytes([rng.randrange(20, 64)]) + rng.randbytes(rng.choice([0, 12, 40, 1600]))
    return fuzzing.rtp_like(rng, ssrc=77)


async def test_fuzzed_datagrams_at_a_keyed_browser_leg_never_reach_the_carrier(
        engine: LocalMediaEngine, call: tuple[CallRegistry, RtpPeer, Browser]) -> None:
    """From the browser's own (checked) address and from a stranger, while the real browser
    keeps talking: the carrier hears only the browser's authenticated packets, nothing is
    logged as an error, the leg stays keyed, and the drops are counted."""
    registry, carrier, browser = call
    seed = fuzzing.SEED + 14
    rng = random.Random(seed)
    browser.check()
    await browser.recv()
    session = _client(registry.certificate)
    await browser.handshake(session)
    assert session.send_key is not None
    protect = SrtpSender(session.send_key).protect
    stranger = _udp()
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{browser.ufrag}:{UFRAG}"
    check.add_message_integrity(browser.pwd.encode())
    record = _client(registry.certificate).start()[0]
    real_ssrc, seq = 0x0B20_45E5, 0

    def talk() -> None:
        nonlocal seq
        browser.sock.sendto(protect(bytes(RtpPacket(0, seq, 160 * seq, real_ssrc,
                                                    payload=b"\x7f" * 160))), browser.dest)
        seq += 1

    try:
        with capture_logs() as logs:
            for n in range(fuzzing.INPUTS // 4):
                sock = browser.sock if rng.random() < 0.5 else stranger
                sock.sendto(_webrtc_like(rng, bytes(check), record), browser.dest)
                if n % 40 == 0:
                    talk()
                    await asyncio.sleep(0.002)
            for _ in range(10):
                talk()
                await asyncio.sleep(0.02)
            await carrier.wait_for(10, timeout=5)
            await _stats(engine, lambda s: s.packets_in >= seq - 5, stream=LEG)
        assert [e for e in logs if e.get("log_level") in ("error", "critical")
                or "exc_info" in e] == [], f"seed {seed}"
        assert {p.ssrc for _, p in carrier.received.packets} == {real_ssrc}, f"seed {seed}"
        stats = await engine.stats(LEG)
        assert stats.dtls_failures == 0 and stats.webrtc_dropped > 0, f"seed {seed}"
        assert stats.endpoint == browser.sock.getsockname()  # no stranger took the leg over
    finally:
        stranger.close()
