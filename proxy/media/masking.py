"""The masking pipeline: hold each caller's audio back, find DTMF, replace it, let the rest go.

Every stream has a *media timeline* in samples, counted from the timestamp of its first packet.
Once per tick all streams advance together: each feeds the next 20 ms of its timeline (from the
packets received, silence where one is lost) into ONE shared DtmfDetector row — one decode, one
``process``, no per-packet NumPy. A stream whose next packet has not arrived yet *stalls* for
the tick (its row gets silence and its timeline waits), so network jitter delays it a little
instead of corrupting detection. A stream that has fallen behind (a burst after the event loop
was busy, an RFC 4733 key sent instead of audio: more than 40 ms received and not yet fed) gets
extra rounds within the tick until it is back to its steady depth (``_catch_up``), so no delay
is kept for the rest of the call; a sender that paused with its timestamps left contiguous is
re-based where the timeline ran on to, so what it sends next is inspected, not counted late.

A packet is released toward the agent only once the detector has seen ``lookahead`` beyond its
end: 26 ms by default, because the first 12.75 ms block lying wholly inside a tone is complete
at most two blocks (25.5 ms) after the tone's first sample, and the suspect flag fires on it.
Whatever the receiver's ``suspect`` flag (or a confirmed digit, or an RFC 4733 event)
covers — widened back by a block for the onset and forward by a block for the tail — is replaced
by the policy's signal before release; everything else leaves byte for byte as it came.
RFC 4733 events of a masked stream never leave at all. Digits found go to ``drain_events`` as
DigitEvents: an in-band tone and an RFC 4733 event for the same key count once ("both").

Fail closed: codec names are matched in any letter case (proxy.media.codecs). While a stream's
policy is effective, a packet whose payload type cannot be inspected (not PCMU, PCMA,
telephone-event or CN, or a PT its SDP did not name) is dropped and counted
(``uninspectable_packets``), never relayed; comfort noise leaves with its noise level only
(RFC 3389 spectral coefficients could shape noise into tones). With the policy not effective
(mode ``off``) such packets are relayed as they came.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace

import numpy as np
import structlog

from dsp import g711
from dsp.dtmf import BLOCK_SIZE, ONSET_LENGTHS, ONSET_TAIL, DtmfDetector, may_start_a_key
from dsp.masker import Span, covered, envelope, merge, replacement, spans_from_suspect
from dsp.tones import DIGITS
from proxy.media.codecs import LAW_OF_KIND, UNINSPECTABLE, PayloadKind, payload_kinds
from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.rfc4733 import Rfc4733Error, TelephoneEvent
from proxy.media.rtp import RTP_TS_MOD, RtpPacket
from proxy.media.types import DigitEvent, MaskingCounters

log = structlog.get_logger("toneguard.masking")
RATE = 8000
TICK_SAMPLES = 160
SILENCE_CODE = {"ulaw": 0xFF, "alaw": 0xD5}
WIDEN_BEFORE = BLOCK_SIZE + 16  # a tone can start up to a block before its first suspect block
WIDEN_AFTER = BLOCK_SIZE  # hangover for the tail
RAMP = 40  # 5 ms raised-cosine fade of the replacement at each span edge (inside the span)
DEDUPE_SAMPLES = 120 * 8  # in-band and RFC 4733 starts this close are the same key
EMIT_AFTER = 200 * 8  # wait this long after a key's start for its other copy before reporting
MAX_BUFFER_SAMPLES = 8000  # packets more than 1 s ahead of the timeline are dropped
MAX_STALL_TICKS = 3  # after 60 ms with nothing new the stream has paused: run on in silence
# ... unless a tone is in progress on it: silence run on inside a tone cuts the key in two (the
# card field gets a digit too many), so a sender that stalls mid-key (a jitter spike, a loaded
# host) is waited for this long, its detector row held meanwhile (the detector continues the
# key in it: see DtmfDetector.process). A sender that really stopped costs the wait once.
MAX_STALL_TICKS_IN_TONE = 10
# Catching up: a stream whose received-but-not-yet-inspected audio exceeds this after its tick
# is behind (an event loop that stalled and then read many packets at once, the stall of an
# RFC 4733 key sent instead of audio): the tick runs extra detector rounds until it is all
# the way back to its steady depth. Less than this is absorbed by holding a little longer
# (each catch-up round can cost a stream that is not behind a held slot, see ``_catch_up``).
CATCHUP_SLACK = 2 * TICK_SAMPLES
MAX_CATCHUP_ROUNDS = 3  # per tick: a backlog of 1 s is gone in about 0.3 s, CPU stays bounded
MAPPING_HISTORY = 16  # timeline changes kept per stream (a round may add one; see ``mapping``)


@dataclass(slots=True)  # one per packet in flight
class _Held:
    start: int  # media sample position
    length: int
    packet: RtpPacket
    kind: str  # "audio" | "event" | "cn" | "other"
    law: str | None = None
    late: bool = False  # arrived after the detector had passed its position


@dataclass
class _Digit:
    digit: str = field(repr=False)  # may be a card digit: never in a repr or traceback
    start: int = 0
    end: int | None = None
    sources: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _MaskedStream:
    stream_id: str
    row: int
    policy: MaskingPolicy
    ts0: int | None = None  # RTP timestamp at media position 0 (re-based on SSRC changes)
    ssrc: int | None = None
    law: str = "ulaw"
    media_fed: int = 0  # media samples fed to the detector
    newest_end: int = 0  # end of the newest audio received
    buffer: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # start → codes, law
    held: list[_Held] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lost: list[Span] = field(default_factory=list)  # concealed with silence (packet loss)
    # Detector-global sample G maps to media sample G - det_base + media_base (history kept
    # because stalls change the mapping and a block may predate the last change).
    mapping: list[tuple[int, int, int]] = field(default_factory=list)  # (from G, det_base, mb)
    out_seq: int | None = None
    digits: list[_Digit] = field(default_factory=list)
    event_ts: int | None = None  # timestamp of the RFC 4733 event in progress
    event_digit: _Digit | None = None  # the key press that event is (its end is set on it)
    replacement_digit: str = "0"
    masked_until: int = -1  # media end of the last sample sent masked (random mode's draws)
    stalled_ticks: int = 0  # consecutive
    tail_judged: int = 0  # newest_end when the timeline last ran on past it (``_guard_tail``)
    catching: bool = False  # behind by more than the slack: extra rounds until back (tick)
    suspect_until: int = -BLOCK_SIZE  # media end of the last block the detector suspected
    warned_uninspectable: bool = False
    codecs: dict[int, str] | None = None  # the mapping ``kinds`` was built from (identity)
    kinds: dict[int, PayloadKind] = field(default_factory=dict)

    def to_media(self, g: int) -> int:
        for start, det_base, media_base in reversed(self.mapping):
            if g >= start:
                return g - det_base + media_base
        return g - self.mapping[0][1] + self.mapping[0][2] if self.mapping else 0


@dataclass(slots=True)
class _Counts:
    """The pipeline's live counters: each field is a :class:`MaskingCounters` field of the same
    name (what ``counters()`` reports; a test checks the two match)."""

    masked_packets: int = 0
    uninspectable_packets: int = 0
    late_packets: int = 0
    dropped_events: int = 0
    stalls: int = 0
    catchup_rounds: int = 0


_COUNT_NAMES = tuple(f.name for f in fields(MaskingCounters))


def _first_gap(filled: list[tuple[int, int]], n: int) -> tuple[int, int] | None:
    """[first unfilled sample, last unfilled sample + 1) of [0, n); None if all is filled."""
    spans = merge(filled)
    if len(spans) == 1 and spans[0][0] <= 0 and spans[0][1] >= n:
        return None
    first = 0 if not spans or spans[0][0] > 0 else spans[0][1]
    last = n if not spans or spans[-1][1] < n else spans[-1][0]
    return (first, last)


class MaskingPipeline:
    """AudioPipeline that masks DTMF on every stream opened with an effective policy."""

    def __init__(self, lookahead_ms: int = 26, capacity: int = 64, seed: int | None = None) -> None:
        self._lookahead = lookahead_ms * RATE // 1000
        self._detector = DtmfDetector(capacity)
        self._streams: dict[str, _MaskedStream] = {}
        self._free_rows = list(range(capacity - 1, -1, -1))
        self._events: list[DigitEvent] = []
        self._origins: dict[int, int] = {}  # row → detector sample at its last reset
        self._random = random.Random(seed)
        self._counts = _Counts()

    # --- stream lifecycle ------------------------------------------------------------------

    def open(self, stream_id: str, policy: MaskingPolicy) -> None:
        if stream_id in self._streams:
            self.update(stream_id, policy)
            return
        if not self._free_rows:
            old = self._detector.channels
            self._detector.resize(old * 2)
            self._free_rows = list(range(old * 2 - 1, old - 1, -1))
        row = self._free_rows.pop()
        self._detector.reset(row)
        self._origins[row] = self._detector.samples_seen
        self._streams[stream_id] = _MaskedStream(stream_id, row, policy)

    def update(self, stream_id: str, policy: MaskingPolicy) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.policy = policy

    def close(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._emit_digits(stream, final=True)
            self._free_rows.append(stream.row)

    def held_packets(self, stream_id: str) -> int:
        """Packets of ``stream_id`` received and not yet released (0 for an unknown stream):
        the added delay in packets, which returns to its steady value after any disturbance."""
        stream = self._streams.get(stream_id)
        return len(stream.held) if stream is not None else 0

    # --- receive ---------------------------------------------------------------------------

    def push(self, stream_id: str, packet: RtpPacket, codecs: dict[int, str],
             now: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if codecs is not stream.codecs:  # a new configuration: classify its PTs once
            stream.codecs, stream.kinds = codecs, payload_kinds(codecs)
        kind = stream.kinds.get(packet.payload_type, UNINSPECTABLE)
        if kind is UNINSPECTABLE and stream.policy.effective:
            # Dropped before it touches the timeline: what cannot be inspected must neither
            # reach the agent nor steer how the audio around it is placed.
            self._uninspectable(stream, packet.payload_type)
            return
        if stream.ts0 is None:
            stream.ts0, stream.ssrc = packet.timestamp, packet.ssrc
        # Where the sender's audio last ended, if the timeline has run on in silence past it.
        ran_on_from = stream.newest_end if stream.media_fed > stream.newest_end else None
        offset = (packet.timestamp - stream.ts0) % RTP_TS_MOD
        start = offset - RTP_TS_MOD if offset >= RTP_TS_MOD // 2 else offset
        if (kind is PayloadKind.EVENT and packet.ssrc == stream.ssrc
                and packet.timestamp == stream.event_ts):
            # An update of the key in progress: every update carries the key's start as its
            # timestamp (RFC 4733 2.5.1.2), so it stays where the first one was placed. Seen
            # as a clock jump or a resumed pause (an event adds no audio, so the timeline ran
            # on past it), each update moved the key and, after a jump, became another press:
            # a key sent over 1 s after the last audio (silence suppression) gave four digits.
            pass
        elif packet.ssrc != stream.ssrc or abs(start - stream.newest_end) > MAX_BUFFER_SAMPLES:
            # A new source (SSRC change: transfer, re-INVITE, a new media server) or a jump in
            # its clock: continue the timeline where it is rather than treating the packet as
            # a second ahead or behind.
            resume = max(stream.newest_end, stream.media_fed)
            stream.ts0 = (packet.timestamp - resume) % RTP_TS_MOD
            stream.ssrc = packet.ssrc
            stream.event_ts = None
            start = resume
        elif (start < stream.media_fed and start >= stream.newest_end
              and self._paused(stream)
              and kind in (PayloadKind.ULAW, PayloadKind.ALAW, PayloadKind.EVENT)):
            # The sender paused with its timestamps left contiguous (two prompts played back
            # to back, a phone that stops sending without advancing its clock): the timeline
            # ran on in silence meanwhile, so this new media would count as late and be masked
            # whole without being inspected (digits keyed now would not be captured). It is
            # placed where the timeline is: nothing received is skipped, nothing old re-fed.
            stream.ts0 = (packet.timestamp - stream.media_fed) % RTP_TS_MOD
            start = stream.media_fed
        if kind is PayloadKind.ULAW or kind is PayloadKind.ALAW:
            law = LAW_OF_KIND[kind]
            n = len(packet.payload)
            late = start < stream.media_fed
            if not late:
                stream.buffer[start] = (packet.payload, law)
                stream.newest_end = max(stream.newest_end, start + n)
                if ran_on_from is not None:  # (then start >= media_fed > ran_on_from)
                    # The audio resumes after silence the timeline made up: to the spans it
                    # is a loss, bridged like one. A key cut by the stall (past the 200 ms
                    # wait) went on after it in a fragment too short to suspect by itself.
                    stream.lost = merge([*stream.lost, (ran_on_from, start)])
            else:
                self._counts.late_packets += 1
            stream.law = law
            stream.held.append(_Held(start, n, packet, "audio", law, late))
        elif kind is PayloadKind.EVENT:
            self._on_telephone_event(stream, packet, start)
            stream.held.append(_Held(start, 0, packet, "event"))
        elif kind is PayloadKind.CN:
            stream.held.append(_Held(start, 0, packet, "cn"))
        else:  # not inspectable, policy not effective (mode off): relayed unless that changes
            stream.held.append(_Held(start, 0, packet, "other"))

    def _uninspectable(self, stream: _MaskedStream, payload_type: int) -> None:
        self._counts.uninspectable_packets += 1
        if not stream.warned_uninspectable:
            stream.warned_uninspectable = True
            # The PT only: an encoding name is free text from the SDP and stays out of logs.
            log.warning("payload type cannot be inspected on a masked stream: dropped",
                        stream_id=stream.stream_id, payload_type=payload_type)

    def _on_telephone_event(self, stream: _MaskedStream, packet: RtpPacket, start: int) -> None:
        try:
            event = TelephoneEvent.parse(packet.payload)
        except Rfc4733Error:
            return
        key = event.key
        if key is None:
            return
        if stream.event_ts != packet.timestamp:
            stream.event_ts = packet.timestamp
            stream.event_digit = self._note_digit(stream, key, start, "rfc4733")
        end = start + event.duration
        # The caller may send the key in-band too: mask the audio under the event as well.
        stream.spans = merge([*stream.spans, (start - WIDEN_BEFORE, end + WIDEN_AFTER)])
        d = stream.event_digit
        if event.end and d is not None and d.digit == key:
            # This press only: a quick second press of the same key, not yet reported, once
            # took the later end too. (Its end packets repeat one duration, RFC 4733 2.5.1.4.)
            d.end = end

    def _note_digit(self, stream: _MaskedStream, key: str, start: int, source: str) -> _Digit:
        """A key seen in-band or as an event: the other copy of the same press merges into it
        (the nearest candidate of that key not yet seen from this source); repeats of a key
        from one source are separate presses. Returns the press."""
        candidates = [d for d in stream.digits if d.digit == key and source not in d.sources
                      and abs(d.start - start) <= DEDUPE_SAMPLES]
        if candidates:
            d = min(candidates, key=lambda d: abs(d.start - start))
            d.sources.add(source)
            d.start = min(d.start, start)
            return d
        d = _Digit(key, start, None, {source})
        stream.digits.append(d)
        return d

    # --- the tick --------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[str, RtpPacket]]:
        active = [s for s in self._streams.values() if s.ts0 is not None]
        if active:
            self._detect(active)
            for _ in range(MAX_CATCHUP_ROUNDS):
                if not self._catch_up(active):
                    break
        out: list[tuple[str, RtpPacket]] = []
        seen = self._detector.samples_seen
        inspected = seen - seen % BLOCK_SIZE
        for stream in active:
            out += self._release(stream, inspected)
            self._emit_digits(stream, final=False)
        return out

    def _catch_up(self, active: list[_MaskedStream]) -> bool:
        """One extra detector round if a stream is behind; False when there was none to run.

        Why: the timeline advances one slot per round. Without extra rounds, audio that
        arrived in a burst (the event loop stalled for call and payment set-up, then read
        half a second of packets at once) waited its turn one tick at a time, and the stream
        kept that delay until the call ended. In an extra round a stream with a whole slot
        received is fed it; one without *holds* (its row gets silence, its timeline does not
        move, as in a stall; a slot with newer audio after it is fed, its gap a loss, as in a
        normal round) — unless a tone is in progress on it, which 20 ms of inserted
        silence could split into two keys: then the catch-up waits for a later tick.
        """
        behind = False
        for s in active:
            # Hysteresis: a stream starts catching up beyond the slack and goes on until it
            # has no whole slot waiting (back to the steady depth, not just within the slack).
            waiting = s.newest_end - s.media_fed
            s.catching = waiting > CATCHUP_SLACK or (s.catching and waiting >= TICK_SAMPLES)
            behind = behind or s.catching
        if not behind:
            return False
        if any(s.newest_end < s.media_fed + TICK_SAMPLES and self._in_tone(s) for s in active):
            return False
        self._detect(active, catching_up=True)
        self._counts.catchup_rounds += 1
        return True

    def _paused(self, stream: _MaskedStream) -> bool:
        """Whether the stream's sender has stopped (its timeline runs on in silence), rather
        than stalled (its timeline waits for it)."""
        return stream.stalled_ticks >= (
            MAX_STALL_TICKS_IN_TONE if self._in_tone(stream) else MAX_STALL_TICKS)

    @staticmethod
    def _in_tone(stream: _MaskedStream) -> bool:
        """The detector may be inside an in-band tone of ``stream``: its last block was suspect,
        or an in-band key has started and not ended. (RFC 4733 events do not count: what they
        cover is masked whatever the detector sees, and a stream keying by events would
        otherwise keep every other stream from catching up for as long as it keys.)"""
        return stream.suspect_until > stream.media_fed - BLOCK_SIZE or any(
            d.end is None and "inband" in d.sources for d in stream.digits)

    def _detect(self, active: list[_MaskedStream], catching_up: bool = False) -> None:
        detector = self._detector
        codes = np.full((detector.channels, TICK_SAMPLES), SILENCE_CODE["ulaw"], dtype=np.uint8)
        alaw_rows = np.zeros(detector.channels, dtype=bool)
        held_rows = np.zeros(detector.channels, dtype=bool)  # stalled: the detector fills them
        g_start = detector.samples_seen
        for stream in active:
            fed = stream.media_fed
            exact = stream.buffer.get(fed)
            if exact is not None and len(exact[0]) == TICK_SAMPLES and stream.mapping and all(
                    start == fed or start >= fed + TICK_SAMPLES for start in stream.buffer):
                # The common case, kept lean: one packet fills exactly this tick's slot (what
                # the general path below would do with it, without its bookkeeping).
                payload, law = exact
                codes[stream.row] = np.frombuffer(payload, np.uint8)
                alaw_rows[stream.row] = law == "alaw"
                del stream.buffer[fed]
                stream.stalled_ticks = 0
                stream.media_fed = fed + TICK_SAMPLES
                continue
            has_data = any(start < fed + TICK_SAMPLES and start + len(c) > fed
                           for start, (c, _) in stream.buffer.items())
            if catching_up and stream.newest_end < fed + TICK_SAMPLES:
                # Not behind: hold this round (its row held, timeline where it is; not a stall
                # of the sender, so it does not count towards a pause).
                held_rows[stream.row] = True
                if stream.mapping:
                    stream.mapping.append((g_start + TICK_SAMPLES, g_start + TICK_SAMPLES, fed))
                    del stream.mapping[:-MAPPING_HISTORY]
                continue
            paused = self._paused(stream)
            if not has_data and stream.newest_end <= fed + TICK_SAMPLES and not paused:
                # Nothing for this slot and nothing after it: the stream is behind, not lossy.
                stream.stalled_ticks += 1
                held_rows[stream.row] = True
                self._counts.stalls += 1 if stream.mapping else 0
                stream.mapping.append((g_start + TICK_SAMPLES, g_start + TICK_SAMPLES, fed))
                del stream.mapping[:-MAPPING_HISTORY]
                continue
            if not stream.mapping:
                stream.mapping.append((g_start, g_start, fed))
            if paused and not has_data and stream.tail_judged != stream.newest_end:
                self._guard_tail(stream)
            stream.stalled_ticks = 0 if has_data else stream.stalled_ticks
            row = codes[stream.row]
            row[:] = SILENCE_CODE[stream.law]
            received: list[tuple[int, int]] = []  # filled [lo, hi) within this tick
            alaw_rows[stream.row] = stream.law == "alaw"
            for start in sorted(stream.buffer):
                payload, law = stream.buffer[start]
                lo, hi = max(start, fed), min(start + len(payload), fed + TICK_SAMPLES)
                if lo < hi:
                    row[lo - fed:hi - fed] = np.frombuffer(payload, np.uint8,
                                                          hi - lo, lo - start)
                    received.append((lo - fed, hi - fed))
                    alaw_rows[stream.row] = law == "alaw"
                if start + len(payload) <= fed + TICK_SAMPLES:
                    del stream.buffer[start]
            gap = _first_gap(received, TICK_SAMPLES)
            if gap is not None and not paused:
                stream.lost = merge([*stream.lost, (fed + gap[0], fed + gap[1])])
            stream.media_fed = fed + TICK_SAMPLES
        audio = np.where(alaw_rows[:, None], g711.decode(codes, "alaw", np.float32),
                         g711.decode(codes, "ulaw", np.float32))
        result = detector.process(audio, held=held_rows)
        suspect_rows = set(np.flatnonzero(result.suspect.any(axis=0)).tolist())
        for stream in active:
            if not stream.policy.detect or stream.row not in suspect_rows:
                continue
            column = result.suspect[:, stream.row]
            reach = None if result.reach is None else result.reach[:, stream.row]
            tail = None if result.tail is None else result.tail[:, stream.row]
            media_starts = np.array([stream.to_media(int(g)) for g in result.block_starts])
            last = int(np.flatnonzero(column)[-1])
            stream.suspect_until = max(stream.suspect_until,
                                       int(media_starts[last]) + result.block_size)
            stream.spans = merge([*stream.spans, *spans_from_suspect(
                media_starts, column, result.block_size, WIDEN_BEFORE, WIDEN_AFTER, reach,
                tail)])
        by_row = {s.row: s for s in active}
        for event in result.events:
            owner = by_row.get(event.channel)
            if owner is None or not owner.policy.detect:
                continue
            stream = owner
            # Events count from the row's reset; map back to the detector clock, then media.
            position = stream.to_media(event.sample + self._origins[stream.row])
            if event.kind == "on":
                self._note_digit(stream, event.digit, position, "inband")
                stream.spans = merge([*stream.spans, (position - WIDEN_BEFORE, position)])
            else:
                # This press only: the same key pressed again before the first is reported
                # must keep its own duration.
                pressed = [d for d in stream.digits if d.digit == event.digit
                           and "inband" in d.sources and d.start <= position]
                if pressed:
                    latest = max(pressed, key=lambda d: d.start)
                    latest.end = max(latest.end or 0, position)
                stream.spans = merge([*stream.spans, (position, position + WIDEN_AFTER)])

    def _guard_tail(self, stream: _MaskedStream) -> None:
        """The timeline starts to run on in silence past the sender's last audio: the detector
        will judge that audio's end followed by silence it never received. Should the sender
        only have stalled past the wait, the rest comes later (placed after the silence, or
        late and masked whole) and a key starting in the last milliseconds before the stall,
        too short to suspect on their own, went to the agent. Those milliseconds are masked
        if they could be a key's start (DTMF energy rising in them); quiet ends and steady
        sounds pass as they are."""
        end = stream.tail_judged = stream.newest_end
        lo = end - ONSET_TAIL
        tail = np.zeros(ONSET_TAIL)
        first = end  # the audio still held (what left already is not read as silence)
        for h in stream.held:
            a, b = max(h.start, lo), min(h.start + h.length, end)
            if h.kind == "audio" and not h.late and a < b and h.law is not None:
                codes = np.frombuffer(h.packet.payload, np.uint8)[a - h.start:b - h.start]
                tail[a - lo:b - lo] = g711.decode(codes, h.law)
                first = min(first, a)
        if may_start_a_key(tail[first - lo:]):
            stream.spans = merge([*stream.spans, (end - ONSET_LENGTHS[-1], end + WIDEN_AFTER)])

    def _bridge_losses(self, stream: _MaskedStream) -> None:
        """A lost packet can cut a tone into fragments too short to be suspected on their own.
        A span that reaches a loss from either side continues through it and two blocks beyond
        (any longer fragment fills a block and is suspected by itself)."""
        extra = []
        for a, b in stream.lost:
            if any(s <= a + 1 and e >= a - WIDEN_AFTER for s, e in stream.spans):
                extra.append((a, b + 2 * BLOCK_SIZE))
            if any(s <= b + WIDEN_BEFORE and e >= b for s, e in stream.spans):
                extra.append((a - 2 * BLOCK_SIZE, b))
        if extra:
            stream.spans = merge([*stream.spans, *extra])

    def _release_point(self, stream: _MaskedStream, held: _Held) -> int:
        """Media position the detector must have passed before ``held`` may leave: look-ahead
        beyond its end, and beyond any loss within that look-ahead (what follows a gap decides
        whether the audio before it was the start of a tone)."""
        need = held.start + held.length + self._lookahead
        for a, b in stream.lost:
            if a <= need and b > held.start:
                need = max(need, b + 2 * BLOCK_SIZE + 16)
        return need

    def _release(self, stream: _MaskedStream, inspected: int) -> list[tuple[str, RtpPacket]]:
        """The held packets the detector has seen far enough past (``inspected``: detector
        samples in whole blocks), masked where needed, in order."""
        done = stream.to_media(inspected)
        ready: list[_Held] = []
        waiting: list[_Held] = []
        lookahead, lossy = self._lookahead, bool(stream.lost)
        for h in stream.held:  # (every packet of every masked call, every tick: kept lean)
            need = self._release_point(stream, h) if lossy else h.start + h.length + lookahead
            (ready if need <= done else waiting).append(h)
        if not ready:
            return []
        self._bridge_losses(stream)
        stream.held = waiting
        effective = stream.policy.effective
        out = []
        if len(ready) > 1:
            ready.sort(key=lambda h: (h.start, h.packet.sequence_number))
        spans = stream.spans
        for h in ready:
            packet = h.packet
            if h.kind == "event" and effective:
                self._counts.dropped_events += 1
                continue
            if h.kind == "other" and effective:  # held while unmasked; masked since
                self._uninspectable(stream, packet.payload_type)
                continue
            if h.kind == "cn" and effective and len(packet.payload) > 1:
                packet = replace(packet, payload=packet.payload[:1])  # level only, RFC 3389
            end = h.start + h.length
            if h.kind == "audio" and effective and (h.late or (spans and any(
                    s < end and e > h.start for s, e in spans))):
                mask = covered(spans, h.start, h.length)
                if h.late:
                    mask[:] = True  # not inspected in time: never let it through unmasked
                packet = self._masked(stream, h, mask)
            if stream.out_seq is None:
                stream.out_seq = packet.sequence_number
            if packet.sequence_number != stream.out_seq:  # after a dropped event: renumber
                packet = replace(packet, sequence_number=stream.out_seq)
            stream.out_seq = (stream.out_seq + 1) & 0xFFFF
            out.append((stream.stream_id, packet))
        if stream.spans or stream.lost:  # those wholly in the released past are done with
            horizon = min((h.start for h in stream.held), default=done)
            stream.spans = [s for s in stream.spans if s[1] > horizon - BLOCK_SIZE]
            stream.lost = [s for s in stream.lost if s[1] > horizon - 4 * BLOCK_SIZE]
        return out

    def _masked(self, stream: _MaskedStream, held: _Held, mask: np.ndarray) -> RtpPacket:
        law = held.law or stream.law
        samples = g711.decode(np.frombuffer(held.packet.payload, np.uint8), law).astype(
            np.float64)
        policy = stream.policy
        mode = policy.mode.value
        if policy.mode is DtmfSecurityMode.RANDOM:
            # A new key per masked span, drawn where the span starts. (Testing only the
            # packet's first sample missed every span that starts inside a packet, which,
            # widened back by a block, is nearly all of them: "random" stayed key 0.)
            # A span that reaches back into a packet already sent (a suspicion judged late,
            # covering its whole window) starts, as far as the agent hears, at its first
            # sample actually masked: the draw follows what was sent, not the span.
            first = int(np.argmax(mask))
            if mask[first] and not self._was_masked(stream, held.start + first):
                stream.replacement_digit = self._random.choice(DIGITS)
            if mask.any():
                stream.masked_until = held.start + int(np.flatnonzero(mask)[-1]) + 1
        substitute = replacement(mode, held.start, held.length,
                                 frequency=policy.tone_frequency_hz, dbm0=policy.volume_dbm0,
                                 digit=stream.replacement_digit if policy.mode is
                                 DtmfSecurityMode.RANDOM else policy.digit)
        gain = envelope(stream.spans, held.start, held.length, RAMP)
        if held.late:
            gain = np.maximum(gain, 1.0)
        # Inside a span the original is gone entirely; only the replacement is faded in/out.
        samples = np.where(mask, substitute * gain, samples)
        self._counts.masked_packets += 1
        payload = g711.encode(samples, law).tobytes()
        p = held.packet
        return RtpPacket(p.payload_type, p.sequence_number, p.timestamp, p.ssrc, p.marker,
                         p.csrc, p.extension_profile, p.extension, payload)

    def _was_masked(self, stream: _MaskedStream, start: int) -> bool:
        return stream.masked_until == start and bool(covered(stream.spans, start - 1, 1)[0])

    # --- digits out ------------------------------------------------------------------------

    def _emit_digits(self, stream: _MaskedStream, final: bool) -> None:
        keep = []
        for d in stream.digits:
            waited = stream.media_fed - d.start
            ended = d.end is not None or waited >= 4 * EMIT_AFTER
            if final or (waited >= EMIT_AFTER and ended):
                source = "both" if len(d.sources) > 1 else next(iter(d.sources))
                end = d.end if d.end is not None else d.start
                self._events.append(DigitEvent(
                    stream.stream_id, d.digit, source,  # type: ignore[arg-type]
                    d.start / 8.0, max(0, end - d.start) / 8.0))
            else:
                keep.append(d)
        stream.digits = keep

    def drain_events(self) -> list[DigitEvent]:
        events, self._events = self._events, []
        return events

    def counters(self) -> MaskingCounters:
        return MaskingCounters(**{name: getattr(self._counts, name) for name in _COUNT_NAMES})
