"""Fuzzing campaign, media plane: hostile RTP/RTCP/SRTP datagrams at a live call's ports.

Seeded (tests/fuzzing.py). A masked caller stream with SDES-SRTP and a plain one are attacked
on their RTP and RTCP ports from the caller's own address and from a stranger, while the real
caller keeps talking. Invariants: nothing is logged as an exception; the call still relays the
caller's audio afterwards; nothing the fuzzer sent reaches the agent (its SSRCs and payloads
never appear there); the drops are counted.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from structlog.testing import capture_logs

from dsp import g711, tones
from proxy.control import sdes
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.media.policy import MaskingPolicy
from proxy.media.rtp import RtpPacket
from proxy.media.srtp import SrtpSender
from proxy.media.types import StreamConfig
from tests import fuzzing

CALLER_SSRC = 0x0CA11E55
CODECS = {0: "PCMU", 101: "telephone-event"}


def _udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


async def _listen(sock: socket.socket, got: list[bytes], stop: asyncio.Event,
                  quiet: float = 0.5) -> None:
    """Collect what ``sock`` receives (all along, so its buffer never overflows) until ``stop``
    is set and the socket has then been quiet for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout(quiet):
                got.append(await loop.sock_recv(sock, 4096))
        except TimeoutError:
            if stop.is_set():
                return


@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
async def test_fuzzed_datagrams_at_a_live_masked_call_change_nothing_it_relays(
        media_ports: tuple[int, int], srtp: bool) -> None:
    seed = fuzzing.SEED + srtp
    rng = fuzzing.random.Random(seed)
    engine = LocalMediaEngine("127.0.0.1", *media_ports,
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=26))
    await engine.start()
    caller, agent, stranger = _udp(), _udp(), _udp("127.0.0.3")
    key = sdes.generate("AES_CM_128_HMAC_SHA1_80").params if srtp else None
    protect = SrtpSender(key).protect if key else (lambda data: data)
    audio = g711.encode(tones.sine(1000, 20 * 50, -15.0), "ulaw").tobytes()
    try:
        a = await engine.allocate("a", "c", rtcp_mux=False)
        await engine.allocate("b", "c", rtcp_mux=False)
        await engine.link("a", "b")
        await engine.configure("a", StreamConfig(peer=("127.0.0.1", caller.getsockname()[1]),
                                                 srtp_recv=key, codecs=CODECS,
                                                 masking=MaskingPolicy()))
        await engine.configure("b", StreamConfig(peer=agent.getsockname(), codecs=CODECS))
        ports = (a.rtp_port, a.rtcp_port)
        seq = 0

        def talk() -> None:  # the real caller's next 20 ms
            nonlocal seq
            payload = audio[160 * (seq % 50):160 * (seq % 50) + 160]
            caller.sendto(protect(bytes(RtpPacket(0, seq, 160 * seq, CALLER_SSRC,
                                                  payload=payload))), ("127.0.0.1", ports[0]))
            seq += 1

        talk()  # latches the caller
        sent = 0
        heard: list[bytes] = []
        stop = asyncio.Event()
        listener = asyncio.create_task(_listen(agent, heard, stop))
        with capture_logs() as logs:
            for n in range(fuzzing.INPUTS):
                data = fuzzing.rtp_like(rng, ssrc=CALLER_SSRC if rng.random() < 0.3 else 7)
                sock = caller if rng.random() < 0.5 else stranger
                sock.sendto(data, ("127.0.0.1", rng.choice(ports)))
                sent += 1
                if n % 40 == 0:
                    talk()
                    await asyncio.sleep(0.002)  # keep within the sockets' buffers
            for _ in range(10):
                talk()
                await asyncio.sleep(0.02)
            stop.set()
            await listener
        assert [e for e in logs if e.get("log_level") in ("error", "critical")
                or "exc_info" in e] == [], f"seed {seed}"
        packets = [RtpPacket.parse(d) for d in heard if len(d) >= 12 and d[1] & 0x7F < 72]
        assert packets, f"seed {seed}: the agent heard nothing"
        # Only audio in the codec the SDP named, and the real caller's last packet among it.
        # With SRTP nothing forged gets through at all; with plain RTP whatever comes from the
        # caller's own address *is* the caller's (it may use any SSRC), but a stranger's never.
        assert {p.payload_type for p in packets} == {0}, f"seed {seed}"
        assert (CALLER_SSRC, 160 * (seq - 1)) in {(p.ssrc, p.timestamp) for p in packets}
        if srtp:
            assert {p.ssrc for p in packets} == {CALLER_SSRC}, f"seed {seed}"
        stats = await engine.stats("a")
        assert stats.errors > 0 and stats.stranger_packets > 0, f"seed {seed}"
    finally:
        for s in (caller, agent, stranger):
            s.close()
        await engine.stop()
