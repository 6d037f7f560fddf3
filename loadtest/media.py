"""The load generator's media plane: every call's two phones, in one thread, paced in real time.

Calls come and go (ramp, hold, replacement): the control plane hands each set-up call to
:class:`MediaEngine`, which plays it from its start tick for its hold time and then reports
its :class:`StreamStats`. All callers share one UDP socket and all agents another (as in
:mod:`loadtest.traffic`); each 20 ms tick is split in ``PHASES`` phases and every call sends in
its own phase, so the load is spread as independent phones would spread it. A phase's packets
leave in one ``sendmmsg`` per socket and arrivals are drained with ``recvmmsg`` carrying the
kernel's receive time (:mod:`loadtest.mmsg`).

Matching: SSRC = base + 2 × call + side names the stream; the RTP timestamp (tick × 160) names
the packet — relays keep both (sequence numbers would shift when a relay drops RFC 4733 event
packets). Latency is from just before the ``sendmmsg`` that carried a packet to the kernel's
receive stamp. Jitter is RFC 3550's interarrival jitter (J += (|D| − J)/16) over each stream's
transit times in timestamp order. Impairments (loss, jitter, reordering) are applied to what we
send, seeded; a packet delayed or held back is timed from when it really left.
"""

from __future__ import annotations

import heapq
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from loadtest.mmsg import BatchReceiver, BatchSender, sockaddrs, socket_drops
from loadtest.scenario import ImpairmentsSection
from loadtest.sources import EVENT_PT, PAYLOAD_TYPES, SAMPLES, Bank, Keying
from proxy.media.srtp import SrtpSender
from proxy.media.types import SrtpParams

PTIME = 0.02
PHASES = 10  # send phases per tick (2 ms apart)
SSRC_BASE = 0x10000000
ROW = 256  # bytes per packet slot in the send buffer and the receive rows
SNDBUF = 32 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
GRACE_TICKS = 100  # a call's stragglers still count this long (2 s) after it ends; later = lost
CALLER, AGENT = 0, 1  # sides: index of the socket a stream is sent from
_SPAN = np.arange(160)


@dataclass
class CallMedia:
    """One call as the media plane plays it (built by the runner after set-up)."""

    index: int
    ticks: int  # hold time
    codec: str
    to_relay: list[tuple[str, int]]  # per side: where that phone sends (the relay's port)
    send_keys: list[SrtpParams | None]  # per side: what we protect with
    caller_offsets: npt.NDArray[np.int64]  # per tick, into the bank
    agent_offsets: npt.NDArray[np.int64]
    keying: Keying | None = None
    key_tick: int = 0  # tick at which keying starts
    events_replace_audio: bool = False  # rfc4733 profile: a phone sends events, not audio
    record: bool = False  # keep what reaches the agent from the caller (leak check)


@dataclass
class StreamStats:
    """One direction of one call, once it has ended (side = who sent it)."""

    call: int
    side: int
    sent: int = 0  # audio packets that left our socket
    received: int = 0  # of those, arrived at the other phone
    events_sent: int = 0
    events_received: int = 0  # RFC 4733 packets the relay passed on (to the agent: a leak)
    jitter_ms: float = 0.0  # RFC 3550, at the end of the call
    latencies: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    ticks: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    start: float = 0.0  # s from the engine's start to this call's first tick
    recording: list[bytes] = field(default_factory=list)  # raw arrivals, when recorded

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass
class Counters:
    """Running totals the progress display reads (from another thread: approximate)."""

    sent: int = 0
    received: int = 0
    active: int = 0
    foreign: int = 0  # arrivals that are none of our live packets
    rtcp: int = 0


def rfc3550_jitter(transit: npt.NDArray[np.float64]) -> float:
    """Final RFC 3550 interarrival jitter (seconds) of transit times in send order (NaN =
    lost, skipped)."""
    t = transit[~np.isnan(transit)]
    if t.size < 2:
        return 0.0
    d = np.abs(np.diff(t))
    # J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16, i.e. a one-pole filter of |D|.
    return float(lfilter([1 / 16], [1, -15 / 16], d)[-1])


class _Slot:
    """A call in play: its state and, per side, when each tick's packet left and arrived."""

    def __init__(self, media: CallMedia, start_tick: int, phase: int,
                 sent_at: npt.NDArray[np.float64], transit: npt.NDArray[np.float64],
                 events_received: npt.NDArray[np.int64], impaired: bool) -> None:
        self.media = media
        self.start_tick = start_tick
        self.phase = phase
        # Views into the engine's arrays (so that arrivals are matched for all calls at once).
        self.sent_at, self.transit, self.events_received = sent_at, transit, events_received
        self.events = [0, 0]
        # Per side: packets built one by one (SRTP, impairments) rather than in bulk.
        self.slow = [impaired or k is not None for k in media.send_keys]
        self.senders = [SrtpSender(k) if k else None for k in media.send_keys]
        self.seq = [random.Random(media.index * 2 + s).getrandbits(16) for s in (0, 1)]
        self.pt = PAYLOAD_TYPES[media.codec]
        self.recording: list[bytes] = []
        self.ended_at: int | None = None


class MediaEngine:
    """Plays calls in a thread; ``add`` from any thread, results through ``on_ended``."""

    def __init__(self, bank: Bank, impairments: ImpairmentsSection, *, max_calls: int,
                 max_ticks: int, total_calls: int, seed: int,
                 on_ended: Callable[[list[StreamStats]], None], host: str = "127.0.0.1"
                 ) -> None:
        self.bank = bank
        self.impairments = impairments
        self.max_ticks = max_ticks + GRACE_TICKS + 2
        self.on_ended = on_ended
        self.counters = Counters()
        self.lateness: list[float] = []  # seconds, one per phase
        # Per sendmmsg: (s since start, s from the send stamp to the call's return). Latency is
        # timed from that stamp: a generator thread that loses the CPU or the GIL in between
        # makes the relay look slower by as much, so the report shows it beside the latency.
        self.send_times: list[tuple[float, float]] = []
        self.latency_samples: list[list[npt.NDArray[np.float64]]] = [[], []]
        self._rng = random.Random(seed)
        self._sockets = []
        for _ in (CALLER, AGENT):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # A large send buffer: on loopback a datagram stays charged to its sender until
            # the receiver reads it, so a relay that reads late would block our sendmmsg (and
            # the generator would run late, for every call) instead of dropping — its loss.
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            s.bind((host, 0))
            self._sockets.append(s)
        self.ports = [s.getsockname()[1] for s in self._sockets]
        self._receivers = [BatchReceiver(s, row=ROW) for s in self._sockets]
        capacity = 2 * (max_calls + 8) + 64
        self._capacity = capacity
        self._dest_table = sockaddrs([("127.0.0.1", 9)] * capacity)
        self._buffer = np.zeros(capacity * 8 * ROW, np.uint8)
        self._senders = [BatchSender(s, self._dest_table, self._buffer, capacity * 8)
                         for s in self._sockets]
        slots = capacity // 2
        self._free_slots = list(range(slots - 1, -1, -1))
        self._slot_of = np.full(total_calls, -1, np.int64)  # call index -> slot
        # Per slot and side: when each tick's packet left, its transit time; events passed on.
        self._sent_at = np.full((slots, 2, self.max_ticks), np.nan)
        self._transit = np.full((slots, 2, self.max_ticks), np.nan)
        self._events_received = np.zeros((slots, 2), np.int64)
        self._slot_pt = np.zeros(slots, np.int64)
        self._slot_record = np.zeros(slots, np.bool_)
        self._rows = self._buffer.reshape(-1, ROW)
        self._impaired = bool(impairments.loss or impairments.jitter_ms or impairments.reorder)
        self._slots: dict[int, _Slot] = {}
        self._incoming: list[CallMedia] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._finish = threading.Event()  # play what has been added, then stop
        self._delayed: list[tuple[float, int, int, int, bytes]] = []  # (due, n, side, slot, b)
        self._held: dict[tuple[int, int], tuple[int, bytes]] = {}  # reorder: (slot, side)
        self._n = 0
        self.generator_drops_before = sum(socket_drops(p) for p in self.ports)
        self.generator_drops = 0
        self._thread = threading.Thread(target=self._run, name="loadtest-media", daemon=True)
        self.started = time.monotonic() + 0.05
        self._wall_start = time.time() + 0.05  # the same instant on the clock the stamps use
        self.tick = 0

    # --- control-plane side -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add(self, media: CallMedia) -> None:
        with self._lock:
            self._incoming.append(media)

    def stop(self, *, finish: bool) -> None:
        """``finish``: let the calls in play run to their end; else end them now."""
        (self._finish if finish else self._stop).set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        for s in self._sockets:
            s.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # --- the media thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now_tick = self.tick
            self._admit(now_tick)
            if self._stop.is_set():
                for slot in self._slots.values():
                    if slot.ended_at is None:
                        slot.ended_at = now_tick
            if (self._stop.is_set() or self._finish.is_set()) and not self._slots and \
                    not self._incoming:
                break
            for phase in range(PHASES):
                due = self.started + now_tick * PTIME + phase * PTIME / PHASES
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                self.lateness.append(max(0.0, time.monotonic() - due))
                self._send_phase(now_tick, phase)
                for receiver in self._receivers:
                    receiver.drain(self._take)
            self._retire(now_tick)
            self.tick += 1
        self.generator_drops = sum(socket_drops(p) for p in self.ports) - \
            self.generator_drops_before

    def _admit(self, tick: int) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for media in incoming:
            if not self._free_slots:
                raise RuntimeError("more calls in play than the media plane was sized for")
            number = self._free_slots.pop()
            self._sent_at[number] = np.nan
            self._transit[number] = np.nan
            self._events_received[number] = 0
            self._slot_pt[number] = PAYLOAD_TYPES[media.codec]
            self._slot_record[number] = media.record
            slot = _Slot(media, tick, media.index % PHASES, self._sent_at[number],
                         self._transit[number], self._events_received[number], self._impaired)
            for side in (CALLER, AGENT):
                entry = sockaddrs([media.to_relay[side]])
                self._dest_table[2 * number + side] = entry[0]
            self._slots[number] = slot
            self._slot_of[media.index] = number
            self.counters.active += 1

    def _packet(self, slot: _Slot, side: int, pt: int, marker: bool, ts: int,
                payload: bytes) -> bytes:
        seq = slot.seq[side]
        slot.seq[side] = (seq + 1) & 0xFFFF
        ssrc = SSRC_BASE + 2 * slot.media.index + side
        data = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload
        sender = slot.senders[side]
        return sender.protect(data) if sender is not None else data

    def _send_phase(self, tick: int, phase: int) -> None:
        # Per side: the common packet (plain RTP audio, no impairment) in bulk, as
        # (slot, local tick, bank offset, seq); the rest built one by one, as wire bytes.
        bulk: list[list[tuple[int, int, int, int]]] = [[], []]
        out: list[list[tuple[int, bytes]]] = [[], []]  # per side: (destination row, wire)
        sent_rows: list[list[tuple[int, int]]] = [[], []]  # per side: (slot, local tick)
        codes = self.bank.codes
        for number, slot in self._slots.items():
            if slot.phase != phase or slot.ended_at is not None:
                continue
            t = tick - slot.start_tick
            m = slot.media
            if t >= m.ticks:
                slot.ended_at = tick
                continue
            events: list = []
            if m.keying is not None and m.keying.events:
                events = m.keying.events.get(t - m.key_tick, [])
            for side in (CALLER, AGENT):
                offsets = m.caller_offsets if side == CALLER else m.agent_offsets
                if side == CALLER and events:
                    self._send_events(slot, number, t, events, out, sent_rows)
                    if m.events_replace_audio:
                        continue
                if not slot.slow[side]:
                    seq = slot.seq[side]
                    slot.seq[side] = (seq + 1) & 0xFFFF
                    bulk[side].append((number, t, int(offsets[t]), seq))
                    continue
                o = int(offsets[t])
                wire = self._packet(slot, side, slot.pt, t == 0, t * SAMPLES,
                                    codes[o:o + SAMPLES].tobytes())
                self._impair(slot, number, side, t, wire, out, sent_rows)
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, side, number, wire = heapq.heappop(self._delayed)
            if number not in self._slots:
                continue
            out[side].append((2 * number + side, wire))
            ts = struct.unpack_from("!I", wire, 4)[0]
            sent_rows[side].append((number, ts // SAMPLES))
        for side in (CALLER, AGENT):
            self._flush(side, bulk[side], out[side], sent_rows[side])

    def _send_events(self, slot: _Slot, number: int, t: int, events: list,
                     out: list[list[tuple[int, bytes]]],
                     sent_rows: list[list[tuple[int, int]]]) -> None:
        base = slot.media.key_tick * SAMPLES
        for e in events:
            wire = self._packet(slot, CALLER, EVENT_PT, e.marker, base + e.timestamp, e.payload)
            slot.events[CALLER] += 1
            if self.impairments.loss and self._rng.random() < self.impairments.loss:
                continue
            out[CALLER].append((2 * number + CALLER, wire))

    def _impair(self, slot: _Slot, number: int, side: int, t: int, wire: bytes,
                out: list[list[tuple[int, bytes]]],
                sent_rows: list[list[tuple[int, int]]]) -> None:
        """Send one audio packet through the scenario's impairments: lose, hold back one
        packet (reorder) or delay it (jitter); each is timed when it really leaves."""
        imp = self.impairments
        if imp.loss and self._rng.random() < imp.loss:
            return
        if imp.reorder and (number, side) not in self._held and self._rng.random() < imp.reorder:
            self._held[(number, side)] = (t, wire)
            return
        if imp.jitter_ms:
            delay = self._rng.uniform(0, imp.jitter_ms / 1000)
            self._n += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, self._n, side, number,
                                           wire))
        else:
            out[side].append((2 * number + side, wire))
            sent_rows[side].append((number, t))
        held = self._held.pop((number, side), None)
        if held is not None:  # the one held back goes out after this one
            out[side].append((2 * number + side, held[1]))
            sent_rows[side].append((number, held[0]))

    def _flush(self, side: int, bulk: list[tuple[int, int, int, int]],
               out: list[tuple[int, bytes]], rows: list[tuple[int, int]]) -> None:
        k = len(bulk)
        if not k and not out:
            return
        buf = self._rows
        destinations = np.empty(k + len(out), np.intp)
        lengths = np.empty(k + len(out), np.intp)
        if k:
            b = np.array(bulk, np.int64)
            number, t, offset, seq = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
            calls = np.array([self._slots[n].media.index for n in number.tolist()], np.int64)
            buf[:k, 0] = 0x80
            buf[:k, 1] = self._slot_pt[number] | np.where(t == 0, 0x80, 0)
            buf[:k, 2:4] = seq.astype(">u2").view(np.uint8).reshape(k, 2)
            buf[:k, 4:8] = (t * SAMPLES).astype(">u4").view(np.uint8).reshape(k, 4)
            buf[:k, 8:12] = (SSRC_BASE + 2 * calls + side).astype(">u4").view(
                np.uint8).reshape(k, 4)
            buf[:k, 12:12 + SAMPLES] = self.bank.codes[offset[:, None] + _SPAN]
            destinations[:k] = 2 * number + side
            lengths[:k] = 12 + SAMPLES
        for i, (destination, wire) in enumerate(out, start=k):
            buf[i, :len(wire)] = np.frombuffer(wire, np.uint8)
            destinations[i] = destination
            lengths[i] = len(wire)
        stamp = time.time()
        if k:
            self._sent_at[number, side, t] = stamp
        for n, tick in rows:
            self._sent_at[n, side, tick] = stamp
        self._senders[side].send(destinations, np.arange(len(destinations)) * ROW, lengths)
        self.send_times.append((stamp - self._wall_start, time.time() - stamp))
        self.counters.sent += len(destinations)

    def _take(self, rows: npt.NDArray[np.uint8], lengths: npt.NDArray[np.uint32],
              stamps: npt.NDArray[np.float64]) -> None:
        """Match a batch of arrivals to what was sent, all at once (no per-packet Python but
        for the recorded legs)."""
        self.counters.received += len(rows)
        rtcp = (rows[:, 1] >= 200) & (rows[:, 1] <= 204)
        self.counters.rtcp += int(rtcp.sum())
        pt = (rows[:, 1] & 0x7F).astype(np.int64)
        ts = rows[:, 4:8].copy().view(">u4").ravel().astype(np.int64)
        stream = rows[:, 8:12].copy().view(">u4").ravel().astype(np.int64) - SSRC_BASE
        call = stream // 2
        ok = ~rtcp & (lengths >= 12) & (call >= 0) & (call < self._slot_of.size)
        number = np.full(len(rows), -1, np.int64)
        number[ok] = self._slot_of[call[ok]]
        ok &= number >= 0
        self.counters.foreign += int((~ok & ~rtcp).sum())
        index = np.flatnonzero(ok)
        number, side, pt, tick = number[index], stream[index] % 2, pt[index], ts[index] // SAMPLES
        record = self._slot_record[number] & (side == CALLER)
        for i, n in zip(index[record].tolist(), number[record].tolist(), strict=True):
            self._slots[n].recording.append(rows[i, :lengths[i]].tobytes())
        audio = pt == self._slot_pt[number]
        np.add.at(self._events_received, (number[~audio], side[~audio]), 1)
        number, side, tick, stamp = number[audio], side[audio], tick[audio], \
            stamps[index[audio]]
        inside = tick < self.max_ticks
        number, side, tick, stamp = number[inside], side[inside], tick[inside], stamp[inside]
        sent = self._sent_at[number, side, tick]
        fresh = ~np.isnan(sent) & np.isnan(self._transit[number, side, tick])
        # Not sent (yet), or a duplicate: not one of our live packets.
        self.counters.foreign += int((~inside).sum() + (~fresh).sum())
        self._transit[number[fresh], side[fresh], tick[fresh]] = stamp[fresh] - sent[fresh]

    def _retire(self, tick: int) -> None:
        done = [n for n, s in self._slots.items()
                if s.ended_at is not None and tick - s.ended_at >= GRACE_TICKS]
        if self._stop.is_set():  # stopping: a shorter grace, the calls were cut anyway
            done = [n for n, s in self._slots.items()
                    if s.ended_at is not None and tick - s.ended_at >= GRACE_TICKS // 2]
        for number in done:
            slot = self._slots.pop(number)
            results = []
            for side in (CALLER, AGENT):
                sent = ~np.isnan(slot.sent_at[side])
                transit = slot.transit[side][sent]
                arrived = transit[~np.isnan(transit)]
                arrived_ticks = np.flatnonzero(~np.isnan(slot.transit[side]))
                results.append(StreamStats(
                    call=slot.media.index, side=side, sent=int(sent.sum()),
                    received=int(arrived.size), events_sent=slot.events[side],
                    events_received=int(slot.events_received[side]),
                    jitter_ms=1000 * rfc3550_jitter(transit), latencies=arrived,
                    ticks=arrived_ticks, start=slot.start_tick * PTIME,
                    recording=slot.recording if side == CALLER else []))
            self._slot_of[slot.media.index] = -1
            self._free_slots.append(number)
            self.counters.active -= 1
            for key in [k for k in self._held if k[0] == number]:
                del self._held[key]
            self.on_ended(results)
