"""The masking pipeline's decisions, fast (no decoders, no speech corpus): which packets are
masked and which leave byte for byte, the codec law per payload kind, what is dropped (RFC 4733
events, payload types that cannot be inspected, the spectrum of comfort noise), late packets,
renumbering, and the mode ``off`` control for each.

The tone energy is measured here with a Goertzel filter at the key's two frequencies; the
independent-decoder checks (spandsp, multimon-ng, speech around the card) are test_masking.py.
These are the tests the mutation run uses for proxy/media/masking.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from structlog.testing import capture_logs

from dsp import g711, tones
from proxy.media.masking import MaskingPipeline
from proxy.media.policy import UNMASKED, DtmfSecurityMode, MaskingPolicy
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.rtp import RtpPacket

LOOKAHEAD_MS = 26
FRAME = 160
KEY_7 = (852.0, 1209.0)  # row and column of key 7
LAW = {0: "ulaw", 8: "alaw"}


def goertzel_power(x: np.ndarray, freq: float) -> float:
    n = np.arange(x.size)
    return float(np.abs(np.sum(x * np.exp(-2j * np.pi * freq * n / 8000))) ** 2) / max(x.size, 1)


def key_power(x: np.ndarray) -> float:
    return sum(goertzel_power(x, f) for f in KEY_7)


def tone_call(pt: int = 0, lead: int = 1600, tail: int = 2400) -> tuple[np.ndarray, list[
        RtpPacket]]:
    """Silence, key 7 for 120 ms at -10 dBm0, silence: 20 ms packets at ``pt``."""
    audio = np.concatenate([np.zeros(lead), tones.dtmf_tone("7", 120, low_dbm0=-10,
                                                            high_dbm0=-10), np.zeros(tail)])
    codes = g711.encode(audio, LAW[pt]).tobytes()
    return audio, [RtpPacket(pt, 100 + k, 5000 + FRAME * k, 7, payload=codes[FRAME * k:
                                                                            FRAME * (k + 1)])
                   for k in range(len(codes) // FRAME)]


def run(pipeline: MaskingPipeline, packets: list[RtpPacket | None], codecs: dict[int, str],
        extra_ticks: int = 6) -> list[RtpPacket]:
    """One packet pushed per 20 ms tick (None: nothing that tick), then ticks to drain."""
    out: list[RtpPacket] = []
    for k, p in enumerate([*packets, *[None] * extra_ticks]):
        if p is not None:
            pipeline.push("caller", p, codecs, k * 0.02)
        out += [q for sid, q in pipeline.tick(k * 0.02 + 0.01) if sid == "caller"]
    return out


def opened(policy: MaskingPolicy | None = None) -> MaskingPipeline:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS, seed=1)
    pipeline.open("caller", policy or MaskingPolicy())
    return pipeline


def decoded(packets: list[RtpPacket], pt: int) -> np.ndarray:
    return np.concatenate([g711.decode(np.frombuffer(p.payload, np.uint8), LAW[pt])
                           for p in packets if p.payload_type == pt]).astype(np.float64)


# --- what is masked, what leaves as it came ----------------------------------------------------


@pytest.mark.parametrize(("pt", "name"), [(0, "PCMU"), (8, "PCMA"), (0, "pcmu"), (8, "Pcma")])
def test_only_the_packets_under_the_tone_are_masked_in_their_own_law(pt: int, name: str) -> None:
    audio, packets = tone_call(pt)
    pipeline = opened(MaskingPolicy().with_mode(DtmfSecurityMode.SILENCE))
    out = run(pipeline, list(packets), {pt: name})
    assert [p.sequence_number for p in out] == [p.sequence_number for p in packets]
    changed = [k for k, (a, b) in enumerate(zip(out, packets, strict=True))
               if a.payload != b.payload]
    # The tone is packets 10-15; the widening reaches one packet either side at most.
    assert set(range(10, 16)) <= set(changed) <= set(range(9, 17)), changed
    # (a masked packet of silence at the span's edge may come out the same bytes; the talk-over
    # suspicion's reach covers the 38 ms window it judged, i.e. up to two packets before the
    # tone, which are silence here)
    assert len(changed) <= pipeline.counters().masked_packets <= 10
    heard = decoded(out, pt)
    # Decoded in the packet's own law, the masked region is silence (a wrong law would not be).
    assert np.max(np.abs(heard[1600:1600 + 960])) < 50
    assert key_power(heard) < 1e-4 * key_power(g711.decode(g711.encode(audio, LAW[pt]), LAW[pt]))
    # Every packet kept its header: payload type, timestamp, SSRC, marker.
    assert [(p.payload_type, p.timestamp, p.ssrc, p.marker) for p in out] == [
        (p.payload_type, p.timestamp, p.ssrc, p.marker) for p in packets]
    assert [e.digit for e in pipeline.drain_events()] == ["7"]


def test_the_tone_mode_replaces_the_key_with_a_400_hz_tone_at_its_level() -> None:
    _, packets = tone_call(8)
    policy = MaskingPolicy().with_mode(DtmfSecurityMode.TONE)
    out = run(opened(policy), list(packets), {8: "PCMA"})
    region = decoded(out, 8)[1600 + 240:1600 + 720]  # inside the span, past the fade-in
    spectrum = np.abs(np.fft.rfft(region))
    assert abs(np.argmax(spectrum) * 8000 / region.size - 400) < 20
    reference = tones.sine(400, 60, policy.volume_dbm0)
    level_db = 10 * np.log10(np.mean(region ** 2) / np.mean(reference ** 2))
    assert abs(level_db) < 1.5


def test_the_replacement_fades_in_and_out_never_above_its_level() -> None:
    """The tone replacing a key is ramped at each span edge (a hard edge splatters energy
    across the band): no sample of it is louder than the tone at full level."""
    _, packets = tone_call(0)
    policy = MaskingPolicy().with_mode(DtmfSecurityMode.TONE)
    heard = decoded(run(opened(policy), list(packets), {0: "PCMU"}), 0)
    peak = np.max(np.abs(tones.sine(400, 20, policy.volume_dbm0)))
    masked = np.flatnonzero(np.abs(heard) > 0)
    assert masked.size > 960  # the key's 120 ms and more were replaced
    assert np.max(np.abs(heard)) <= 1.05 * peak
    # The first and last 2 ms of the replacement are quieter than its full level (the ramps).
    for edge in (heard[masked[0]:masked[0] + 16], heard[masked[-1] - 15:masked[-1] + 1]):
        assert np.max(np.abs(edge)) < 0.5 * peak


@pytest.mark.parametrize("policy", [UNMASKED, MaskingPolicy(masked=False)])
def test_with_masking_off_the_key_leaves_byte_for_byte_and_is_still_reported(
        policy: MaskingPolicy) -> None:
    _, packets = tone_call(0)
    pipeline = opened(policy)
    out = run(pipeline, list(packets), {0: "PCMU"})
    assert [p.payload for p in out] == [p.payload for p in packets]
    assert pipeline.counters().masked_packets == 0
    assert [e.digit for e in pipeline.drain_events()] == ["7"]


def test_without_detection_nothing_is_found_or_masked() -> None:
    _, packets = tone_call(0)
    pipeline = opened(MaskingPolicy(detect=False))
    out = run(pipeline, list(packets), {0: "PCMU"})
    assert [p.payload for p in out] == [p.payload for p in packets]
    assert pipeline.drain_events() == []


def test_a_packet_arriving_after_its_slot_was_inspected_leaves_fully_masked() -> None:
    silence = g711.encode(np.zeros(FRAME), "ulaw").tobytes()
    speech_like = g711.encode(tones.sine(700, 20, -10.0), "ulaw").tobytes()
    packets: list[RtpPacket | None] = [RtpPacket(0, k, FRAME * k, 7, payload=silence)
                                       for k in range(12)]
    packets[3] = None  # lost ... then arrives long after its place was passed
    late = RtpPacket(0, 3, FRAME * 3, 7, payload=speech_like)
    pipeline = opened(MaskingPolicy().with_mode(DtmfSecurityMode.SILENCE))
    out = run(pipeline, [*packets, late], {0: "PCMU"})
    assert pipeline.counters().late_packets == 1
    released = [p for p in out if p.timestamp == FRAME * 3]
    assert len(released) == 1 and released[0].payload != speech_like
    assert np.max(np.abs(g711.decode(np.frombuffer(released[0].payload, np.uint8), "ulaw"))) < 50
    assert len(out) == 12


# --- what is dropped ---------------------------------------------------------------------------


def events_call(pt: int) -> list[RtpPacket]:
    silence = g711.encode(np.zeros(FRAME), "ulaw").tobytes()
    packets = []
    for k in range(12):
        packets.append(RtpPacket(0, 2 * k, FRAME * k, 1, payload=silence))
        if 2 <= k < 8:
            ev = TelephoneEvent(9, k == 7, 10, FRAME * (k - 1))
            packets.append(RtpPacket(pt, 2 * k + 1, 320, 1, payload=bytes(ev)))
    return packets


def test_rfc4733_events_never_leave_a_masked_stream_and_the_rest_is_renumbered() -> None:
    pipeline = opened()
    out = run(pipeline, list(events_call(101)), {0: "PCMU", 101: "telephone-event"})
    assert [p.payload_type for p in out] == [0] * 12
    assert [p.sequence_number for p in out] == list(range(12))
    assert pipeline.counters().dropped_events == 6
    assert [(e.digit, e.source) for e in pipeline.drain_events()] == [("9", "rfc4733")]


def test_rfc4733_events_pass_with_masking_off() -> None:
    packets = events_call(101)
    pipeline = opened(UNMASKED)
    out = run(pipeline, list(packets), {0: "PCMU", 101: "telephone-event"})
    # All of them, events included, as they came (released in media order).
    assert sorted((p.timestamp, p.payload_type, p.payload) for p in out) == sorted(
        (p.timestamp, p.payload_type, p.payload) for p in packets)
    assert pipeline.counters().dropped_events == 0


def test_audio_under_an_rfc4733_event_is_masked_too() -> None:
    _, packets = tone_call(0)
    stream: list[RtpPacket | None] = []
    for k, p in enumerate(packets):
        stream.append(p)
        if 10 <= k < 16:  # the key also as an event, over the same audio
            ev = TelephoneEvent(7, k == 15, 10, FRAME * (k - 9))
            stream.append(RtpPacket(101, 0, p.timestamp - FRAME * (k - 10), 7,
                                    payload=bytes(ev)))
    pipeline = opened(MaskingPolicy(detect=False).with_mode(DtmfSecurityMode.SILENCE))
    out = run(pipeline, stream, {0: "PCMU", 101: "telephone-event"})
    assert [p.payload_type for p in out] == [0] * len(packets)
    heard = decoded(out, 0)
    assert np.max(np.abs(heard[1600:1600 + 960])) < 50
    assert heard[:1600 - 320].tobytes() == decoded(packets, 0)[:1600 - 320].tobytes()


def test_an_uninspectable_payload_type_is_dropped_counted_and_logged_once() -> None:
    pipeline = opened()
    g722 = [RtpPacket(9, k, FRAME * k, 1, payload=bytes(FRAME)) for k in range(5)]
    with capture_logs() as logs:
        assert run(pipeline, list(g722), {9: "G722"}) == []
    assert pipeline.counters().uninspectable_packets == 5
    assert logs == [{"event": "payload type cannot be inspected on a masked stream: dropped",
                     "log_level": "warning", "stream_id": "caller", "payload_type": 9}]


def test_a_payload_type_the_sdp_did_not_name_is_dropped() -> None:
    _, packets = tone_call(8)
    pipeline = opened()
    assert run(pipeline, list(packets), {0: "PCMU"}) == []
    assert pipeline.counters().uninspectable_packets == len(packets)


def test_uninspectable_packets_pass_with_masking_off_until_masking_starts() -> None:
    pipeline = opened(UNMASKED)
    g722 = [RtpPacket(9, k, FRAME * k, 1, payload=bytes([k]) * FRAME) for k in range(3)]
    out = run(pipeline, list(g722), {9: "G722"})
    assert [p.payload for p in out] == [p.payload for p in g722]
    assert pipeline.counters().uninspectable_packets == 0
    # Held while unmasked, released after masking started: dropped then, each of them (two
    # leave in the same tick), logged once with the payload type.
    for seq in (3, 4):
        pipeline.push("caller", RtpPacket(9, seq, FRAME * 3, 1, payload=bytes(FRAME)),
                      {9: "G722"}, 0.5)
    pipeline.update("caller", MaskingPolicy())
    with capture_logs() as logs:
        later = [q for t in range(8) for _, q in pipeline.tick(0.51 + 0.02 * t)]
    assert later == []
    assert pipeline.counters().uninspectable_packets == 2
    assert logs == [{"event": "payload type cannot be inspected on a masked stream: dropped",
                     "log_level": "warning", "stream_id": "caller", "payload_type": 9}]


@pytest.mark.parametrize(("policy", "payload", "expected"), [
    (MaskingPolicy(), bytes([40, 1, 2, 3, 4]), b"("),  # level only
    (MaskingPolicy(), bytes([40]), b"("),
    (MaskingPolicy(), bytes([40, 1]), b"("),  # one spectral coefficient: dropped too
    (UNMASKED, bytes([40, 1, 2, 3, 4]), bytes([40, 1, 2, 3, 4])),
])
def test_comfort_noise_leaves_with_its_level_only_while_masked(
        policy: MaskingPolicy, payload: bytes, expected: bytes) -> None:
    silence = g711.encode(np.zeros(FRAME), "ulaw").tobytes()
    packets: list[RtpPacket | None] = [RtpPacket(0, 0, 0, 1, payload=silence),
                                       RtpPacket(13, 1, FRAME, 1, payload=payload),
                                       RtpPacket(0, 2, 2 * FRAME, 1, payload=silence)]
    out = run(opened(policy), packets, {0: "PCMU", 13: "CN"})
    assert [(p.payload_type, p.payload) for p in out] == [
        (0, silence), (13, expected), (0, silence)]


def test_packets_ready_in_the_same_tick_leave_in_media_order() -> None:
    """Comfort noise sent after a packet but read before it: both become ready in the same
    tick (the look-ahead past the same point) and leave in media order, audio first."""
    silence = g711.encode(np.zeros(FRAME), "ulaw").tobytes()
    audio = [RtpPacket(0, k, FRAME * k, 1, payload=silence) for k in range(6)]
    cn = RtpPacket(13, 6, FRAME * 6, 1, payload=bytes([40]))
    pipeline = opened()
    run(pipeline, list(audio[:5]), {0: "PCMU", 13: "CN"}, extra_ticks=0)
    pipeline.push("caller", cn, {0: "PCMU", 13: "CN"}, 0.1)
    pipeline.push("caller", audio[5], {0: "PCMU", 13: "CN"}, 0.1)
    later = [q for t in range(8) for _, q in pipeline.tick(0.11 + 0.02 * t)]
    assert [(p.payload_type, p.timestamp) for p in later][-2:] == [(0, FRAME * 5),
                                                                  (13, FRAME * 6)]


def test_a_stream_not_opened_is_ignored_and_packets_of_a_closed_one_are_gone() -> None:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    _, packets = tone_call(0)
    pipeline.push("nobody", packets[0], {0: "PCMU"}, 0.0)
    assert pipeline.tick(0.01) == []
    pipeline.open("caller", MaskingPolicy())
    pipeline.push("caller", packets[0], {0: "PCMU"}, 0.0)
    pipeline.close("caller")
    assert [pipeline.tick(0.03 + 0.02 * k) for k in range(5)] == [[]] * 5


def loudest_key(x: np.ndarray) -> str:
    """The DTMF key whose row and column frequencies carry the most energy in ``x``."""
    low = max(tones.LOW_FREQS, key=lambda f: goertzel_power(x, f))
    high = max(tones.HIGH_FREQS, key=lambda f: goertzel_power(x, f))
    return tones.DIGITS[tones.LOW_FREQS.index(low) * 4 + tones.HIGH_FREQS.index(high)]


@pytest.mark.parametrize(("policy", "heard"), [
    (MaskingPolicy().with_mode(DtmfSecurityMode.ZERO), "0"),
    (MaskingPolicy(digit="5").with_mode(DtmfSecurityMode.ZERO), "0"),
    (MaskingPolicy(digit="5").with_mode(DtmfSecurityMode.DTMF), "5"),
    (MaskingPolicy(digit="#", volume_dbm0=-12.0).with_mode(DtmfSecurityMode.DTMF), "#"),
])
def test_key_replacing_modes_put_their_key_in_place_of_the_callers(
        policy: MaskingPolicy, heard: str) -> None:
    _, packets = tone_call(0)
    out = run(opened(policy), list(packets), {0: "PCMU"})
    region = decoded(out, 0)[1600 + 240:1600 + 720]  # inside the span, past the fade-in
    assert loudest_key(region) == heard
    reference = tones.dtmf_tone(heard, 60, low_dbm0=policy.volume_dbm0,
                                high_dbm0=policy.volume_dbm0)
    assert abs(10 * np.log10(np.mean(region ** 2) / np.mean(reference ** 2))) < 1.5


def test_random_mode_replaces_each_key_press_with_one_random_key() -> None:
    seen = set()
    for seed in range(6):
        _, packets = tone_call(0)
        pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS, seed=seed)
        pipeline.open("caller", MaskingPolicy().with_mode(DtmfSecurityMode.RANDOM))
        out = run(pipeline, list(packets), {0: "PCMU"})
        heard = decoded(out, 0)
        keys = {loudest_key(heard[start:start + 240])
                for start in range(1600 + 240, 1600 + 720, 240)}
        assert len(keys) == 1  # one key for the whole press, not one per packet
        seen |= keys
    assert len(seen) > 1  # and not always the same one


def test_random_mode_draws_a_new_key_for_a_press_60_ms_after_the_last() -> None:
    """Two presses of key 7, 60 ms apart: two masked spans, the second starting inside a
    packet whose start is still in the first span's reach. Each span gets its own draw."""
    pairs = []
    for seed in range(6):
        audio = np.zeros(40 * FRAME)
        first, second = 8 * FRAME + 50, 8 * FRAME + 50 + 960 + 480
        for at in (first, second):
            audio[at:at + 960] += tones.dtmf_tone("7", 120, low_dbm0=-10, high_dbm0=-10)
        codes = g711.encode(audio, "ulaw").tobytes()
        packets = [RtpPacket(0, k, FRAME * k, 7, payload=codes[FRAME * k:FRAME * (k + 1)])
                   for k in range(40)]
        pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS, seed=seed)
        pipeline.open("caller", MaskingPolicy().with_mode(DtmfSecurityMode.RANDOM))
        heard = decoded(run(pipeline, list(packets), {0: "PCMU"}), 0)
        pairs.append(tuple(loudest_key(heard[at + 300:at + 700]) for at in (first, second)))
    assert sum(a != b for a, b in pairs) >= 4, pairs  # (1 in 16 draws the same key again)


def test_a_masked_packet_keeps_its_csrcs_and_header_extension() -> None:
    _, packets = tone_call(0)
    packets = [RtpPacket(p.payload_type, p.sequence_number, p.timestamp, p.ssrc, p.marker,
                         [11, 12], 0xBEDE, b"\x10\x2a\x00\x00", p.payload) for p in packets]
    out = run(opened(MaskingPolicy().with_mode(DtmfSecurityMode.SILENCE)), list(packets),
              {0: "PCMU"})
    masked = [q for p, q in zip(packets, out, strict=True) if p.payload != q.payload]
    assert masked
    assert all((q.csrc, q.extension_profile, q.extension) == ([11, 12], 0xBEDE,
                                                              b"\x10\x2a\x00\x00")
               for q in masked)


def test_a_late_packet_is_replaced_at_the_replacements_own_level() -> None:
    silence = g711.encode(np.zeros(FRAME), "ulaw").tobytes()
    speech_like = g711.encode(tones.sine(700, 20, -10.0), "ulaw").tobytes()
    packets: list[RtpPacket | None] = [RtpPacket(0, k, FRAME * k, 7, payload=silence)
                                       for k in range(12)]
    packets[3] = None
    late = RtpPacket(0, 3, FRAME * 3, 7, payload=speech_like)
    policy = MaskingPolicy().with_mode(DtmfSecurityMode.TONE)
    out = run(opened(policy), [*packets, late], {0: "PCMU"})
    released = [p for p in out if p.timestamp == FRAME * 3]
    assert len(released) == 1
    heard = g711.decode(np.frombuffer(released[0].payload, np.uint8), "ulaw").astype(float)
    reference = tones.sine(400, 20, policy.volume_dbm0)
    assert abs(10 * np.log10(np.mean(heard ** 2) / np.mean(reference ** 2))) < 1.5
