"""A tiny RTP/SRTP endpoint for tests, the demo and benchmarks: a phone at either end.

It sends 8 kHz audio (G.711, 20 ms packets, paced on the event loop clock) and optional RFC 4733
events, and records what arrives (payloads with arrival times) so the caller can decode what the
other party actually heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dsp import g711
from proxy.media.rtp import RtpPacket, RtpParseError, is_rtcp
from proxy.media.srtp import SrtpError, SrtpReceiver, SrtpSender
from proxy.media.types import SrtpParams

PTIME = 0.02
SAMPLES = 160
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
LAWS = {"PCMU": "ulaw", "PCMA": "alaw"}


@dataclass
class Received:
    packets: list[tuple[float, RtpPacket]] = field(default_factory=list)
    rtcp: int = 0
    errors: int = 0

    def audio(self, codec: str = "PCMU", payload_type: int | None = None) -> npt.NDArray:
        """The received audio stream, in sequence order, lost packets as silence."""
        pt = PAYLOAD_TYPES[codec] if payload_type is None else payload_type
        packets = sorted((p for _, p in self.packets if p.payload_type == pt),
                         key=lambda p: p.timestamp)
        if not packets:
            return np.zeros(0, dtype=np.int16)
        start = packets[0].timestamp
        end = packets[-1].timestamp + len(packets[-1].payload)
        out = np.zeros((end - start) % (1 << 32), dtype=np.int16)
        for p in packets:
            offset = (p.timestamp - start) % (1 << 32)
            samples = g711.decode(np.frombuffer(p.payload, np.uint8), LAWS[codec])
            out[offset:offset + samples.size] = samples[: max(0, out.size - offset)]
        return out

    def events(self, payload_type: int = 101) -> list[RtpPacket]:
        return [p for _, p in self.packets if p.payload_type == payload_type]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, peer: RtpPeer) -> None:
        self._peer = peer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._peer._on_datagram(data)


class RtpPeer:
    """One RTP endpoint bound on loopback."""

    def __init__(self, host: str = "127.0.0.1", *, codec: str = "PCMU",
                 srtp_send: SrtpParams | None = None, srtp_recv: SrtpParams | None = None,
                 ssrc: int | None = None, seed: int = 1, sequence: int | None = None) -> None:
        self.host = host
        self.codec = codec
        self._sender = SrtpSender(srtp_send) if srtp_send else None
        self._receiver = SrtpReceiver(srtp_recv) if srtp_recv else None
        rng = random.Random(seed)
        self.ssrc = ssrc if ssrc is not None else rng.getrandbits(32)
        self._seq = rng.getrandbits(16)
        if sequence is not None:  # e.g. just below 65 535, for a rollover within seconds
            self._seq = sequence & 0xFFFF
        self._ts = rng.getrandbits(32)
        self.received = Received()
        self.arrived = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def set_srtp_recv(self, params: SrtpParams | None) -> None:
        """The key the other side sends with (known once its SDP arrives)."""
        self._receiver = SrtpReceiver(params) if params else None

    async def start(self, port: int = 0) -> RtpPeer:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, port))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _on_datagram(self, data: bytes) -> None:
        if is_rtcp(data):
            self.received.rtcp += 1
            return
        if self._receiver is not None:
            try:
                data = self._receiver.unprotect(data)
            except SrtpError:
                self.received.errors += 1
                return
        try:
            packet = RtpPacket.parse(data)
        except RtpParseError:
            self.received.errors += 1
            return
        self.received.packets.append((time.monotonic(), packet))
        self.arrived.set()

    def send_packet(self, packet: RtpPacket, dest: tuple[str, int]) -> None:
        data = bytes(packet)
        if self._sender is not None:
            data = self._sender.protect(data)
        assert self._transport is not None
        self._transport.sendto(data, dest)

    def next_packet(self, payload: bytes, payload_type: int, *, marker: bool = False,
                    advance: int = SAMPLES, timestamp: int | None = None) -> RtpPacket:
        packet = RtpPacket(payload_type=payload_type, sequence_number=self._seq,
                           timestamp=self._ts if timestamp is None else timestamp,
                           ssrc=self.ssrc, marker=marker, payload=payload)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + advance) & 0xFFFFFFFF
        return packet

    def skip(self, ms: float) -> None:
        """Let the sampling clock run on ``ms`` without sending (a pause between two
        :meth:`play` calls, as DTX or a hold): the next timestamp shows the time that passed,
        as RFC 3550 asks of a real phone."""
        self._ts = (self._ts + round(ms * 8)) & 0xFFFFFFFF

    async def play(self, audio: npt.ArrayLike, dest: tuple[str, int], *,
                   loss: float = 0.0, reorder: float = 0.0, seed: int = 7) -> int:
        """Send 16-bit audio as 20 ms G.711 packets paced in real time; returns packets sent."""
        codes = g711.encode(np.asarray(audio), LAWS[self.codec]).tobytes()
        pt = PAYLOAD_TYPES[self.codec]
        rng = random.Random(seed)
        loop = asyncio.get_running_loop()
        start = loop.time()
        held: RtpPacket | None = None
        sent = 0
        for i in range(0, len(codes) - SAMPLES + 1, SAMPLES):
            packet = self.next_packet(codes[i:i + SAMPLES], pt, marker=i == 0)
            delay = start + (i // SAMPLES) * PTIME - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if rng.random() < loss:
                continue
            if held is None and rng.random() < reorder:
                held = packet  # goes out after the next one
                continue
            self.send_packet(packet, dest)
            sent += 1
            if held is not None:
                self.send_packet(held, dest)
                sent += 1
                held = None
        if held is not None:
            self.send_packet(held, dest)
            sent += 1
        return sent

    async def send_event(self, digit: str, dest: tuple[str, int], *, duration_ms: int = 100,
                         volume: int = 10, payload_type: int = 101) -> None:
        """One RFC 4733 event: updates every 20 ms, then three end packets, one timestamp."""
        code = "0123456789*#ABCD".index(digit)
        timestamp = self._ts
        loop = asyncio.get_running_loop()
        start = loop.time()
        steps = max(1, duration_ms // 20)
        for step in range(1, steps + 1):
            payload = struct.pack("!BBH", code, volume & 0x3F, step * SAMPLES)
            self.send_packet(self.next_packet(payload, payload_type, marker=step == 1,
                                              advance=0, timestamp=timestamp), dest)
            with contextlib.suppress(Exception):
                await asyncio.sleep(max(0.0, start + step * PTIME - loop.time()))
        end = struct.pack("!BBH", code, 0x80 | (volume & 0x3F), steps * SAMPLES)
        for _ in range(3):
            self.send_packet(self.next_packet(end, payload_type, advance=0,
                                              timestamp=timestamp), dest)
        self._ts = (timestamp + steps * SAMPLES) & 0xFFFFFFFF

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` packets have arrived (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            while len(self.received.packets) < count:
                self.arrived.clear()
                await self.arrived.wait()
