"""The masking pipeline's media timeline, fast (no decoders, no sockets): where each packet is
placed when the source changes (SSRC), its clock jumps, it pauses, packets overtake each other
or are lost, and what that does to what is masked, what is late and when digits are reported.

Each test drives the pipeline directly, one ``tick`` per 20 ms, and checks what left: which
packets were masked (noise that must leave byte for byte, keys that must not), in which order,
and that everything sent did arrive. These are part of the mutation run's tests for
proxy/media/masking.py (docs/mutation.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from dsp import g711, tones
from proxy.media.masking import MAX_BUFFER_SAMPLES, WIDEN_AFTER, WIDEN_BEFORE, MaskingPipeline
from proxy.media.policy import UNMASKED, DtmfSecurityMode, MaskingPolicy
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.rtp import RtpPacket

FRAME = 160
CODECS = {0: "PCMU", 8: "PCMA", 101: "telephone-event", 13: "CN"}
LAW = {0: "ulaw", 8: "alaw"}
SILENT = MaskingPolicy().with_mode(DtmfSecurityMode.SILENCE)


def noise(frames: int, seed: int, law: str = "ulaw") -> bytes:
    """Speech-level noise (no DTMF in it: what must leave byte for byte), encoded."""
    x = tones.white_noise(frames * FRAME, -25.0, np.random.default_rng(seed))
    return g711.encode(x, law).tobytes()


def keyed(frames_before: int, frames_after: int, seed: int, law: str = "ulaw",
          digit: str = "7") -> bytes:
    """Noise, ``digit`` for 120 ms (6 frames) at -10 dBm0 over it, noise."""
    n = frames_before + 6 + frames_after
    x = tones.white_noise(n * FRAME, -25.0, np.random.default_rng(seed))
    lo = frames_before * FRAME
    x[lo:lo + 6 * FRAME] += tones.dtmf_tone(digit, 120, low_dbm0=-10, high_dbm0=-10)
    return g711.encode(x, law).tobytes()


def packets_of(codes: bytes, ssrc: int, seq: int, ts: int, pt: int = 0) -> list[RtpPacket]:
    return [RtpPacket(pt, (seq + k) & 0xFFFF, (ts + FRAME * k) & 0xFFFFFFFF, ssrc,
                      payload=codes[FRAME * k:FRAME * (k + 1)])
            for k in range(len(codes) // FRAME)]


def drive(pipeline: MaskingPipeline, ticks: list[list[RtpPacket]], drain: int = 8
          ) -> list[RtpPacket]:
    """Push each tick's packets in the order given, tick; then ``drain`` empty ticks."""
    out: list[RtpPacket] = []
    for k, packets in enumerate([*ticks, *[[] for _ in range(drain)]]):
        for p in packets:
            pipeline.push("caller", p, CODECS, k * 0.02)
        out += [q for sid, q in pipeline.tick(k * 0.02 + 0.01) if sid == "caller"]
    return out


def opened(policy: MaskingPolicy = SILENT) -> MaskingPipeline:
    pipeline = MaskingPipeline(lookahead_ms=26, seed=1)
    pipeline.open("caller", policy)
    return pipeline


def changed(out: list[RtpPacket], sent: list[RtpPacket]) -> list[int]:
    """Indexes (in ``sent``) of the packets whose payload left changed; matched by
    (SSRC, timestamp), every sent packet must have left exactly once."""
    by_id = {(p.ssrc, p.timestamp): p for p in out}
    assert len(by_id) == len(out) == len(sent)
    return [k for k, p in enumerate(sent) if by_id[(p.ssrc, p.timestamp)].payload != p.payload]


def heard(packet: RtpPacket, law: str = "ulaw") -> np.ndarray:
    return g711.decode(np.frombuffer(packet.payload, np.uint8), law).astype(np.float64)


def key_power(x: np.ndarray, digit: str = "7") -> float:
    """Energy at ``digit``'s two frequencies (Goertzel), per sample."""
    row, col = divmod(tones.DIGITS.index(digit), 4)
    n = np.arange(x.size)
    return sum(float(np.abs(np.sum(x * np.exp(-2j * np.pi * f * n / 8000))) ** 2) / x.size
               for f in (tones.LOW_FREQS[row], tones.HIGH_FREQS[col]))


# --- a new source (SSRC change) -----------------------------------------------------------------


def test_an_ssrc_change_continues_the_timeline_and_masks_the_new_sources_key() -> None:
    old = packets_of(noise(20, 1), 111, 10, 5000)
    new = packets_of(keyed(10, 10, 2), 222, 60000, 3_000_000_000)  # key at frames 10-15
    pipeline = opened()
    out = drive(pipeline, [[p] for p in old + new])
    sent = old + new
    masked = changed(out, sent)
    assert set(range(30, 36)) <= set(masked) <= set(range(29, 38)), masked
    # Sent order kept, headers as sent, numbering continued across the change (no gap).
    assert [(p.ssrc, p.timestamp) for p in out] == [(p.ssrc, p.timestamp) for p in sent]
    assert [p.sequence_number for p in out] == [(10 + k) & 0xFFFF for k in range(len(sent))]
    assert pipeline.counters().late_packets == 0
    # The key is placed where the timeline was: 400 ms of the first source, then 200 ms.
    (event,) = pipeline.drain_events()
    assert event.digit == "7" and abs(event.start_ms - 600) <= 15, event.start_ms


def test_after_an_ssrc_change_packets_that_overtook_each_other_leave_in_media_order() -> None:
    old = packets_of(noise(20, 1), 111, 10, 5000)
    new = packets_of(noise(12, 2), 222, 700, 123_456)
    ticks = [[p] for p in old] + [[new[0]], [new[2], new[1]]] + [[p] for p in new[3:]]
    out = drive(opened(), ticks)
    assert [p.timestamp for p in out] == [p.timestamp for p in old + new]
    assert changed(out, old + new) == []
    assert [p.sequence_number for p in out] == [(10 + k) & 0xFFFF for k in range(32)]


def test_an_ssrc_change_after_a_burst_is_placed_after_the_audio_already_received() -> None:
    """The event loop stalled, then read the old source's last packets and the new source's
    first ones at once: the new source continues after everything received, nothing is
    overwritten or reordered."""
    old = packets_of(noise(24, 1), 111, 10, 5000)
    new = packets_of(noise(10, 2), 222, 700, 123_456)
    ticks = [[p] for p in old[:16]] + [old[16:] + new[:2]] + [[p] for p in new[2:]]
    pipeline = opened()
    out = drive(pipeline, ticks, drain=16)
    assert [p.timestamp for p in out] == [p.timestamp for p in old + new]
    assert changed(out, old + new) == []
    assert pipeline.counters().late_packets == 0


def test_an_ssrc_change_after_a_pause_is_inspected_not_counted_late() -> None:
    """A transfer: the old source stopped, the timeline ran on in silence, then the new source
    starts. Its audio is placed where the timeline is, inspected: noise leaves as it came,
    the key is masked and captured."""
    old = packets_of(noise(20, 1), 111, 10, 5000)
    new = packets_of(keyed(10, 10, 2), 222, 700, 123_456)
    pipeline = opened()
    out = drive(pipeline, [[p] for p in old] + [[]] * 12 + [[p] for p in new])
    assert pipeline.counters().late_packets == 0
    masked = changed(out, old + new)
    assert set(range(30, 36)) <= set(masked) <= set(range(29, 38)), masked
    assert [e.digit for e in pipeline.drain_events()] == ["7"]


def test_an_uninspectable_packet_does_not_steer_where_audio_is_placed() -> None:
    """A packet of an unnamed payload type from another SSRC (a stranger's, or garbage) is
    dropped before it touches the timeline: the audio after it, overtaking each other, keeps
    its places (placed after it, the first would have been taken for a new source)."""
    sent = packets_of(noise(20, 1), 111, 10, 5000)
    junk = RtpPacket(96, 7, 999_999, 222, payload=bytes(FRAME))
    ticks = [[p] for p in sent[:10]] + [[junk], [sent[11], sent[10]]] + [[p] for p in sent[12:]]
    pipeline = opened()
    out = drive(pipeline, ticks)
    assert [p.timestamp for p in out] == [p.timestamp for p in sent]
    assert changed(out, sent) == []
    assert pipeline.counters().late_packets == 0
    assert pipeline.counters().uninspectable_packets == 1


# --- the sender's clock: jumps, packets before the first, pauses --------------------------------


@pytest.mark.parametrize(("jump", "rebased"), [
    (MAX_BUFFER_SAMPLES, False), (MAX_BUFFER_SAMPLES + 1, True), (-MAX_BUFFER_SAMPLES - 1, True),
])
def test_a_clock_jump_beyond_a_second_is_rebased_a_smaller_one_is_waited_for(
        jump: int, rebased: bool) -> None:
    sent = packets_of(noise(20, 1), 111, 10, 5000)
    after = RtpPacket(0, 30, sent[-1].timestamp + FRAME + jump, 111,
                      payload=noise(1, 3))
    pipeline = opened()
    drive(pipeline, [[p] for p in sent], drain=0)
    pipeline.push("caller", after, CODECS, 0.5)
    ticks = 0
    while pipeline.held_packets("caller"):
        pipeline.tick(0.5)
        ticks += 1
        assert ticks < 80
    # Re-based: it leaves after the look-ahead like any packet in its place. Within a second:
    # it waits for the timeline to reach it (the second in between counts as lost, run through
    # four slots a tick by catching up).
    assert (ticks <= 8) if rebased else (ticks >= 14), ticks
    assert pipeline.counters().late_packets == 0


def test_packets_from_before_the_first_one_leave_first_masked_whole_each_counted() -> None:
    sent = packets_of(noise(12, 1), 111, 10, 5000)
    pipeline = opened()
    out = drive(pipeline, [[sent[2], sent[1], sent[0]]] + [[p] for p in sent[3:]])
    assert [p.timestamp for p in out] == [p.timestamp for p in sent]
    assert pipeline.counters().late_packets == 2
    assert changed(out, sent) == [0, 1]  # not inspected in time: masked whole


@pytest.mark.parametrize("pt", [0, 8])
def test_a_packet_from_before_a_pause_arriving_after_it_is_late_the_rest_is_inspected(
        pt: int) -> None:
    law = LAW[pt]
    sent = packets_of(noise(20, 1, law) + keyed(4, 6, 2, law), 111, 10, 5000, pt)
    withheld = sent[15]
    ticks = [[p] for p in sent[:15]] + [[p] for p in sent[16:20]] + [[]] * 12
    ticks += [[withheld]] + [[p] for p in sent[20:]]
    pipeline = opened()
    out = drive(pipeline, ticks)
    assert pipeline.counters().late_packets == 1
    masked = changed(out, sent)
    # The withheld packet left masked whole; the key after the pause was inspected and masked,
    # the noise around it was not.
    assert masked[0] == 15 and set(range(24, 30)) <= set(masked[1:]) <= set(range(22, 32))
    assert np.max(np.abs(heard(next(p for p in out if p.timestamp == withheld.timestamp),
                               law))) < 50
    assert [e.digit for e in pipeline.drain_events()] == ["7"]


def test_an_rfc4733_key_after_a_pause_masks_the_audio_under_it() -> None:
    """The sender paused with contiguous timestamps and resumes with a key sent both as events
    and in-band: the event is placed where the timeline is, like the audio it describes."""
    first = packets_of(noise(20, 1), 111, 10, 5000)
    rest = packets_of(keyed(0, 10, 2), 111, 30, first[-1].timestamp + FRAME)
    ticks = [[p] for p in first] + [[]] * 12
    for k, p in enumerate(rest):
        events = [RtpPacket(101, 0, rest[0].timestamp, 111, k == 0, payload=bytes(
            TelephoneEvent(7, k == 5, 10, FRAME * (k + 1))))] if k < 6 else []
        ticks.append([*events, p])
    pipeline = opened(MaskingPolicy(detect=False).with_mode(DtmfSecurityMode.SILENCE))
    out = drive(pipeline, ticks)
    audio = [p for p in out if p.payload_type == 0]
    masked = changed(audio, first + rest)
    assert set(range(20, 26)) <= set(masked) <= set(range(19, 27)), masked
    assert pipeline.counters().late_packets == 0


# --- loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("early", "straggler"), [(False, False), (True, False), (False, True)],
                         ids=["in-time", "next-one-early", "with-a-straggler"])
def test_a_key_cut_by_a_lost_packet_is_masked_on_both_sides_of_the_loss(
        early: bool, straggler: bool) -> None:
    """A key starting in the last 10 ms of a packet, the next packet lost: the fragment before
    the loss is shorter than a detector block and is not suspected by itself. The packet holding
    it waits until the detector has seen past the loss, which decides that it began a key.
    ``early``: the packet after the loss arrives with the one before it (jitter). ``straggler``:
    a long-delayed copy of an old packet arrives as the loss is noticed, so packets leave (the
    straggler, masked whole) while the fragment is still held: the loss must outlive that."""
    x = tones.white_noise(30 * FRAME, -25.0, np.random.default_rng(5))
    start = 10 * FRAME + 80
    x[start:start + 960] += tones.dtmf_tone("7", 120, low_dbm0=-10, high_dbm0=-10)
    sent = packets_of(g711.encode(x, "ulaw").tobytes(), 111, 10, 5000)
    ticks = [[p] for p in sent[:11]] + [[]] + [[p] for p in sent[12:]]
    if early:
        ticks[10], ticks[12] = [sent[10], sent[12]], []
    if straggler:
        ticks[12].append(sent[3])
    pipeline = opened()
    out = drive(pipeline, ticks)
    fragment = next(p for p in out if p.timestamp == sent[10].timestamp)
    assert key_power(heard(fragment)[80:]) < 1e-3 * key_power(heard(sent[10])[80:])
    assert len(out) == len(sent) - 1 + straggler
    assert pipeline.counters().late_packets == straggler


# --- RFC 4733: the span an event masks, the duration reported -----------------------------------


@pytest.mark.parametrize(("begin", "length", "masked"), [
    (10 * FRAME + 40, 560, 6),  # the span ends 62 samples into a packet
    (10 * FRAME + WIDEN_BEFORE, FRAME * 5 - WIDEN_BEFORE - WIDEN_AFTER, 5),  # on packet edges
])
def test_an_rfc4733_event_masks_exactly_its_duration_widened_by_a_block_each_side(
        begin: int, length: int, masked: int) -> None:
    """With the detector off, only the event decides: the samples replaced are those from
    WIDEN_BEFORE before its start to WIDEN_AFTER after its end, no more, no fewer, and only the
    packets with a sample in that span are masked. (A span is kept until every packet it
    reaches has left; one that ends or starts on a packet's edge does not reach it.)"""
    sent = packets_of(noise(24, 4), 111, 10, 5000)
    ticks: list[list[RtpPacket]] = []
    for k, p in enumerate(sent):
        extra = []
        if 11 <= k <= 14:  # 4 updates, 20 ms apart; the last two are the end, repeated
            duration = (160, 320, length, length)[k - 11]
            extra = [RtpPacket(101, 0, 5000 + begin, 111, k == 11, payload=bytes(
                TelephoneEvent(4, k >= 13, 10, duration)))]
        ticks.append([p, *extra])
    pipeline = opened(MaskingPolicy(detect=False).with_mode(DtmfSecurityMode.SILENCE))
    out = drive(pipeline, ticks)
    audio = [p for p in out if p.payload_type == 0]
    assert len(audio) == len(sent) and len(out) == len(sent)  # every event dropped
    before = np.concatenate([np.frombuffer(p.payload, np.uint8) for p in sent])
    after = np.concatenate([np.frombuffer(p.payload, np.uint8) for p in audio])
    replaced = np.flatnonzero(before != after)
    assert replaced[0] == begin - WIDEN_BEFORE
    assert replaced[-1] + 1 == begin + length + WIDEN_AFTER
    assert pipeline.counters().masked_packets == masked
    (event,) = pipeline.drain_events()
    assert (event.digit, event.source) == ("4", "rfc4733")
    assert (event.start_ms, event.duration_ms) == (begin / 8, length / 8)


def test_each_rfc4733_key_reports_its_own_duration() -> None:
    """Two keys in a row, of different lengths: each end sets its own key's duration (repeated
    end packets, as RFC 4733 sends them, do not shorten it)."""
    sent = packets_of(noise(40, 6), 111, 10, 5000)
    ticks = [[p] for p in sent]
    for code, first, slots in ((1, 4, 5), (2, 14, 8)):
        ts = sent[first].timestamp
        for n in range(slots + 2):  # the end three times
            ev = TelephoneEvent(code, n >= slots - 1, 10, FRAME * min(n + 1, slots))
            ticks[first + n].append(RtpPacket(101, 0, ts, 111, n == 0, payload=bytes(ev)))
    pipeline = opened()
    drive(pipeline, ticks, drain=20)
    events = pipeline.drain_events()
    assert [(e.digit, e.start_ms, e.duration_ms) for e in events] == [
        ("1", 4 * 20.0, 5 * 20.0), ("2", 14 * 20.0, 8 * 20.0)]


@pytest.mark.parametrize(("pt", "payload"), [
    (101, bytes(TelephoneEvent(4, False, 10, FRAME))), (13, bytes([40])), (9, bytes(FRAME)),
])
def test_a_packet_without_audio_waits_for_the_look_ahead_past_its_position_no_longer(
        pt: int, payload: bytes) -> None:
    """RFC 4733, comfort noise, an uninspectable payload type with masking off: no audio, so
    each is held until the detector has inspected the look-ahead past its own position. At
    media position 2342 that point (2550, 25 whole blocks) is reached one tick before it is
    for position 2343."""
    sent = packets_of(noise(30, 1), 111, 10, 5000)
    ticks = [[p] for p in sent]
    ticks[12] += [RtpPacket(pt, 0, 5000 + position, 111, payload=payload)
                  for position in (2342, 2343)]
    pipeline = opened(UNMASKED)
    left = {}
    for k, packets in enumerate(ticks):
        for p in packets:
            pipeline.push("caller", p, {**CODECS, 9: "G722"}, k * 0.02)
        left |= {q.timestamp - 5000: k for _, q in pipeline.tick(k * 0.02) if q.payload_type == pt}
    assert left[2343] == left[2342] + 1, left


@pytest.mark.parametrize("keys", [(1, 2), (1, 1)])
def test_quick_rfc4733_key_presses_each_report_their_own_duration(
        keys: tuple[int, int]) -> None:
    """Two 40 ms presses 40 ms apart, both reported (200 ms after each start) only after the
    second has ended: the second's end must not extend the first, also when it is the same
    key. (It did for the same key: the first press was reported 120 ms long.)"""
    sent = packets_of(noise(40, 6), 111, 10, 5000)
    ticks = [[p] for p in sent]
    for code, first in zip(keys, (4, 8), strict=True):
        for n in range(5):  # an update, then the end three times
            ev = TelephoneEvent(code, n >= 1, 10, FRAME * min(n + 1, 2))
            ticks[first + n].append(RtpPacket(101, 0, sent[first].timestamp, 111, n == 0,
                                              payload=bytes(ev)))
    pipeline = opened()
    drive(pipeline, ticks, drain=20)
    assert [(e.digit, e.start_ms, e.duration_ms) for e in pipeline.drain_events()] == [
        (str(keys[0]), 80.0, 40.0), (str(keys[1]), 160.0, 40.0)]


def test_a_long_rfc4733_key_is_reported_once_it_ends_with_its_whole_duration() -> None:
    """A key held for 600 ms: its updates are not its end; it is reported when the end comes,
    600 ms long (not 200 ms after it began, with the duration so far)."""
    sent = packets_of(noise(60, 6), 111, 10, 5000)
    ticks = [[p] for p in sent]
    for n in range(33):  # 30 updates, then the end three times
        ev = TelephoneEvent(5, n >= 30, 10, FRAME * min(n + 1, 30))
        ticks[4 + n].append(RtpPacket(101, 0, sent[4].timestamp, 111, n == 0,
                                      payload=bytes(ev)))
    pipeline = opened()
    out = drive(pipeline, ticks[:30], drain=0)
    assert pipeline.drain_events() == []  # 440 ms in, not ended: not reported yet
    drive(pipeline, ticks[30:], drain=20)
    assert [(e.digit, e.start_ms, e.duration_ms) for e in pipeline.drain_events()] == [
        ("5", 80.0, 600.0)]
    assert [p.payload_type for p in out] == [0] * len(out)


def test_the_tone_mode_uses_the_policys_frequency() -> None:
    sent = packets_of(keyed(10, 10, 9), 111, 10, 5000)
    policy = MaskingPolicy(tone_frequency_hz=1000.0).with_mode(DtmfSecurityMode.TONE)
    out = drive(opened(policy), [[p] for p in sent])
    region = np.concatenate([heard(p) for p in out[11:15]])  # inside the key, past the fade
    spectrum = np.abs(np.fft.rfft(region))
    assert abs(np.argmax(spectrum) * 8000 / region.size - 1000) < 20


# --- a call that switches law, late packets counted, state that ends ----------------------------


def test_a_key_across_a_law_switch_is_masked_in_each_packets_own_law() -> None:
    """The caller's side switches PCMU to PCMA in the middle of a key (a re-INVITE): packets
    of both laws are held at once, and each is masked in its own law."""
    mu = packets_of(keyed(10, 0, 7, "ulaw"), 111, 10, 5000, 0)[:13]  # key begins at frame 10
    rest = keyed(10, 10, 7, "alaw")[13 * FRAME:]
    a = packets_of(rest, 111, 23, 5000 + 13 * FRAME, 8)
    sent = mu + a
    out = drive(opened(), [[p] for p in sent])
    assert [p.payload_type for p in out] == [p.payload_type for p in sent]
    for p in out[10:16]:
        assert np.max(np.abs(heard(p, LAW[p.payload_type]))) < 50, p.payload_type


def test_the_masked_stream_forgets_spans_and_losses_it_has_released() -> None:
    """Masking state is bounded over a long call: spans and losses wholly in the released past
    are dropped (a call with a key and a loss every second would otherwise grow them for its
    whole length, and every packet's check with them)."""
    sent = packets_of(b"".join(keyed(10, 34, s) for s in range(3)), 111, 10, 5000)
    lost = {22, 72, 122}
    pipeline = opened()
    out = drive(pipeline, [[] if k in lost else [p] for k, p in enumerate(sent)], drain=30)
    assert len(out) == len(sent) - len(lost)
    assert [e.digit for e in pipeline.drain_events()] == ["7", "7", "7"]
    stream = pipeline._streams["caller"]
    assert stream.spans == [] and stream.lost == []


def test_late_packets_are_masked_whole_with_masking_on_and_pass_with_it_off() -> None:
    sent = packets_of(noise(16, 8), 111, 10, 5000)
    for policy, masked in ((SILENT, [4, 5]), (UNMASKED, [])):
        pipeline = opened(policy)
        ticks = [[p] for p in sent]
        ticks[4] = ticks[5] = []
        ticks[10] += [sent[4], sent[5]]
        out = drive(pipeline, ticks)
        assert pipeline.counters().late_packets == 2
        assert changed(out, sent) == masked


def test_two_packets_swapped_within_a_tick_are_not_a_loss() -> None:
    """Packet k+2 read just before k+1, in one tick: nothing is missing when the detector gets
    there, so nothing counts as lost (a loss holds the packets around it longer and bridges
    spans across it). Each tick releases what it releases with the two in order."""
    codes = noise(40, 11)
    sent = packets_of(codes, 0x51, 10, 5000)

    def release_ticks(order: list[RtpPacket]) -> list[list[int]]:
        pipeline = opened()
        ticks = [[p] for p in order[:20]] + [[order[20], order[21]]] + [[p] for p in order[22:]]
        out = []
        for k, packets in enumerate([*ticks, *[[] for _ in range(8)]]):
            for p in packets:
                pipeline.push("caller", p, CODECS, k * 0.02)
            out.append([q.sequence_number for sid, q in pipeline.tick(k * 0.02 + 0.01)
                        if sid == "caller"])
        return out

    swapped = [*sent[:20], sent[21], sent[20], *sent[22:]]
    assert release_ticks(swapped) == release_ticks(sent)
