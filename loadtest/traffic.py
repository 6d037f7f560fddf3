"""RTP for many calls through a relay at once, paced like real phones and timed by the kernel.

Every stream (one direction of one call) sends a 20 ms PCMU packet every 20 ms, at its own
phase within the 20 ms (1 ms slots), as independent phones would; all streams of one side share
one UDP socket, and a slot's packets leave in one ``sendmmsg``. Packets are built (and, for
SRTP streams, protected) before the clock starts, so the generator's per-packet work during the
run is a system call's share.

Latency is the relay's added delay as the kernel saw it: from just before the ``sendmmsg``
that carried a packet (an upper bound: the batch's first packet leaves then, the last a little
later) to the kernel's receive timestamp on our socket. Received packets are matched by SSRC
(one per stream) and sequence number (the tick), which the relay must keep; both are readable
in SRTP too. The generator's own lateness is reported, not hidden in the figures.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from loadtest.mmsg import BatchReceiver, BatchSender, sockaddrs, socket_drops
from proxy.media.srtp import SrtpError, SrtpReceiver, SrtpSender
from proxy.media.types import SrtpParams

PTIME = 0.02
SLOTS = 20  # phases per 20 ms
ROW = 192  # bytes per prepared packet: 12 header + 160 PCMU + SRTP trailer room
SSRC_BASE = 0x5EED0000


@dataclass
class Stream:
    """One direction of one call: ``side`` 0 sends from the caller's socket, 1 from the
    agent's; ``send_key`` protects what we send, ``recv_key`` opens what the relay sends to
    the *other* side from us (None: plain RTP)."""

    side: int
    destination: tuple[str, int]
    send_key: SrtpParams | None = None
    recv_key: SrtpParams | None = None


@dataclass
class TrafficResult:
    sent: int
    received: int
    foreign: int  # arrivals that are not one of our packets (or not as we sent them)
    generator_drops: int  # dropped by our own sockets' receive buffers (not the relay's fault)
    latencies: npt.NDArray[np.float64]  # seconds, one per matched arrival after the warm-up
    warmup_max: float  # the longest latency during the warm-up (seconds)
    lateness: npt.NDArray[np.float64]  # how late each send slot fired, seconds
    verified: int = 0  # SRTP streams whose first arrival decrypted to what was sent
    unverified: list[int] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies.size else \
            float("nan")


class Traffic:
    """Sockets for both sides, bound before the calls are set up (their ports go in SDP)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sockets = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            self.sockets.append(s)
        self.ports = [s.getsockname()[1] for s in self.sockets]
        self.receivers = [BatchReceiver(s) for s in self.sockets]

    def close(self) -> None:
        for s in self.sockets:
            s.close()

    def prepare(self, streams: Sequence[Stream], seconds: float) -> None:
        """Build (and protect) every packet of a run, before the clock starts."""
        ticks = int(seconds / PTIME)
        if not 0 < ticks < 1 << 16:
            raise ValueError("1 to 65 535 ticks (sequence numbers identify the tick)")
        self._streams = list(streams)
        self._ticks = ticks
        self._packets, self._lengths = _prepare(self._streams, ticks)
        destinations = sockaddrs([s.destination for s in streams])
        flat = self._packets.reshape(-1)
        self._senders = [BatchSender(sock, destinations, flat) for sock in self.sockets]

    def run(self, *, drain: float = 0.3, warmup: float = 1.0) -> TrafficResult:
        """Play the prepared packets in real time; then wait up to ``drain`` seconds for
        stragglers (less once every packet has arrived).

        Latency percentiles leave out the first ``warmup`` seconds: every call's media starts
        at once here, so a relay's per-stream set-up on the first packet (latching, SRTP
        stream contexts) lands in one burst no real call mix produces. Its worst case is
        reported on its own."""
        streams, ticks, lengths, senders = self._streams, self._ticks, self._lengths, \
            self._senders
        n = len(streams)
        sides = np.array([s.side for s in streams])
        # Spread phases so that each slot of each side carries the same share of streams.
        phase = np.empty(n, np.intp)
        for side in (0, 1):
            members = np.flatnonzero(sides == side)
            phase[members] = np.arange(members.size) * SLOTS // max(members.size, 1)
        groups = [[np.flatnonzero((sides == side) & (phase == slot)) for side in (0, 1)]
                  for slot in range(SLOTS)]
        tally = _Tally(streams, ticks, timed_from=min(int(warmup / PTIME), ticks - 1))
        lateness = np.zeros(ticks * SLOTS)
        drops_before = sum(socket_drops(p) for p in self.ports)

        start = time.monotonic() + 0.05
        event = 0
        for tick in range(ticks):
            for slot in range(SLOTS):
                due = start + tick * PTIME + slot * (PTIME / SLOTS)
                # Arrivals wait in our sockets meanwhile: their kernel timestamps are taken
                # on arrival, so draining late costs nothing but buffer space.
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                lateness[event] = time.monotonic() - due
                event += 1
                for side in (0, 1):
                    members = groups[slot][side]
                    if members.size == 0:
                        continue
                    tally.sent_at[tick, members] = time.time()
                    senders[side].send(members, (tick * n + members) * ROW, lengths[members])
                for receiver in self.receivers:
                    receiver.drain(tally.take)
        end = time.monotonic() + drain
        # Up to ``drain``: once everything sent has come back there is nothing left to wait
        # for (and a loaded machine gets the whole bound, not a guess, for its stragglers).
        while time.monotonic() < end and tally.arrivals.sum() < ticks * n:
            time.sleep(0.01)
            for receiver in self.receivers:
                receiver.drain(tally.take)
        result = TrafficResult(
            sent=ticks * n, received=int(tally.arrivals.sum()), foreign=tally.foreign,
            generator_drops=sum(socket_drops(p) for p in self.ports) - drops_before,
            latencies=np.concatenate(tally.latencies) if tally.latencies else np.zeros(0),
            warmup_max=tally.warmup_max,
            lateness=lateness)
        _verify(streams, self._packets, tally.first, result)
        return result


class _Tally:
    """What has come back: per-stream arrival counts, latencies, first encrypted arrivals."""

    def __init__(self, streams: Sequence[Stream], ticks: int, timed_from: int) -> None:
        self.n, self.ticks, self.timed_from = len(streams), ticks, timed_from
        self.warmup_max = 0.0
        self.sent_at = np.full((ticks, self.n), np.nan)  # time.time() of each packet's batch
        self.arrivals = np.zeros(self.n, np.int64)
        self.latencies: list[npt.NDArray[np.float64]] = []
        self.foreign = 0
        self.first: dict[int, bytes] = {}
        self._wanted = np.array([s.recv_key is not None for s in streams])

    def take(self, rows: npt.NDArray[np.uint8], lengths: npt.NDArray[np.uint32],
              stamps: npt.NDArray[np.float64]) -> None:
        ssrc = rows[:, 8:12].copy().view(">u4").ravel().astype(np.int64)
        seq = rows[:, 2:4].copy().view(">u2").ravel().astype(np.int64)
        index = ssrc - SSRC_BASE
        ok = np.flatnonzero((lengths >= 12) & (index >= 0) & (index < self.n) &
                            (seq < self.ticks))
        index, seq = index[ok], seq[ok]
        delay = stamps[ok] - self.sent_at[seq, index]
        known = ~np.isnan(delay)  # a sequence number we have not sent (yet) is not ours
        self.foreign += len(rows) - int(known.sum())
        timed = known & (seq >= self.timed_from)
        self.latencies.append(delay[timed])
        if np.any(early := known & ~timed):
            self.warmup_max = max(self.warmup_max, float(delay[early].max()))
        np.add.at(self.arrivals, index[known], 1)
        keep = known & self._wanted[index]
        for i, row in zip(index[keep], ok[keep], strict=True):
            if self._wanted[i]:  # the first arrival of an encrypted stream, to verify
                self._wanted[i] = False
                self.first[int(i)] = rows[row, :lengths[row]].tobytes()


def _prepare(streams: Sequence[Stream], ticks: int
             ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """Every packet of the run, [tick, stream, byte], and each stream's packet length."""
    n = len(streams)
    packets = np.zeros((ticks, n, ROW), np.uint8)
    t = np.arange(ticks, dtype=np.uint32)[:, None]
    packets[:, :, 0] = 0x80
    packets[:, :, 2:4] = (t.astype(">u2")[:, :, None].view(np.uint8))
    packets[:, :, 4:8] = ((t * 160).astype(">u4")[:, :, None].view(np.uint8))
    ssrc = (SSRC_BASE + np.arange(n, dtype=np.uint32)).astype(">u4")
    packets[:, :, 8:12] = ssrc.view(np.uint8).reshape(1, n, 4)
    packets[:, :, 12:172] = 0xFF  # µ-law silence
    lengths = np.full(n, 172, np.intp)
    for i, stream in enumerate(streams):
        if stream.send_key is None:
            continue
        sender = SrtpSender(stream.send_key)
        for tick in range(ticks):
            wire = sender.protect(packets[tick, i, :172].tobytes())
            packets[tick, i, :len(wire)] = np.frombuffer(wire, np.uint8)
        lengths[i] = len(wire)
    return packets, lengths


def _verify(streams: Sequence[Stream], packets: npt.NDArray[np.uint8],
            first: dict[int, bytes], result: TrafficResult) -> None:
    """Decrypt the first SRTP arrival of each stream that should arrive encrypted: the relay
    really re-protected it with the key it offered (and the audio is what was sent)."""
    for index, wire in sorted(first.items()):
        key = streams[index].recv_key
        assert key is not None
        try:
            plain = SrtpReceiver(key).unprotect(wire)
        except SrtpError:
            result.unverified.append(index)
            continue
        tick = struct.unpack_from("!H", plain, 2)[0]
        sent = packets[tick, index, :172].tobytes() if streams[index].send_key is None else None
        if sent is None or plain[12:] == sent[12:]:
            result.verified += 1
        else:
            result.unverified.append(index)
