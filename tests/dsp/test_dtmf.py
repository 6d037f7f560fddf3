"""The streaming multi-channel DTMF receiver: behaviour beyond the Q.24 procedure."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dsp import g711, tones
from dsp.dtmf import (
    BLOCK_SIZE,
    DetectorOutput,
    DtmfConfig,
    DtmfDetector,
    detect_digits,
    digits_in,
)

RATE = 8000


def _keyed(keys: str, **kwargs: float) -> np.ndarray:
    return tones.dtmf_sequence(keys, tone_ms=60, gap_ms=60, lead_ms=37, tail_ms=80, **kwargs)


def _stream(detector: DtmfDetector, signal: np.ndarray, chunks: list[int]) -> list:
    events = []
    pos = 0
    i = 0
    while pos < signal.shape[1]:
        n = chunks[i % len(chunks)]
        events += detector.process(signal[:, pos:pos + n]).events
        pos += n
        i += 1
    return events


def test_streaming_in_any_chunk_sizes_gives_the_same_events_as_one_call() -> None:
    signal = g711.round_trip(_keyed("4111555537828"), "ulaw").reshape(1, -1)
    whole = DtmfDetector(1).process(signal).events
    for chunks in ([160], [1], [7, 300, 0, 51], [1000]):
        assert _stream(DtmfDetector(1), signal, chunks) == whole
    assert "".join(e.digit for e in whole if e.kind == "on") == "4111555537828"


def test_channels_are_independent() -> None:
    a = _keyed("123")
    b = _keyed("9#")
    n = max(a.size, b.size)
    both = np.zeros((3, n))
    both[0, :a.size] = a
    both[2, :b.size] = b
    events = DtmfDetector(3).process(both).events + DtmfDetector(3).process(np.zeros((3, 0))).events
    by_channel = {c: "".join(e.digit for e in events if e.channel == c and e.kind == "on")
                  for c in range(3)}
    assert by_channel == {0: "123", 1: "", 2: "9#"}


def test_event_positions_are_within_10_ms_and_levels_within_1_5_db() -> None:
    low, high = -17.0, -13.5
    lead = 123
    signal = np.concatenate([np.zeros(lead), tones.dtmf_tone("8", 70, low_dbm0=low,
                                                             high_dbm0=high), np.zeros(800)])
    events = detect_digits(g711.round_trip(signal, "alaw"))
    assert [(e.digit, e.kind) for e in events] == [("8", "on"), ("8", "off")]
    on, off = events
    assert abs(on.sample - lead) <= 80
    assert abs(off.sample - (lead + 560)) <= 80
    for e in events:
        assert abs(e.low_dbm0 - low) <= 1.5
        assert abs(e.high_dbm0 - high) <= 1.5


def test_sample_positions_are_per_stream_after_a_channel_is_reset() -> None:
    detector = DtmfDetector(2)
    detector.process(np.zeros((2, 1000)))
    detector.reset(1)
    tone = np.concatenate([np.zeros(200), tones.dtmf_tone("5", 60), np.zeros(800)])
    events = detector.process(np.stack([tone, tone])).events
    starts = {e.channel: e.sample for e in events if e.kind == "on"}
    assert abs(starts[0] - 1200) <= 80
    assert abs(starts[1] - 200) <= 80


def test_reset_forgets_a_digit_in_progress() -> None:
    detector = DtmfDetector(1)
    tone = tones.dtmf_tone("7", 200).reshape(1, -1)
    detector.process(tone[:, :800])
    detector.reset(0)
    events = detector.process(np.zeros((1, 2000))).events
    assert events == []


def _covered(out: DetectorOutput, channel: int, n: int) -> npt.NDArray[np.bool_]:
    """Samples [0, n) of ``channel`` that its suspect blocks cover (each block and the
    ``reach`` before it: what the masker widens from, before its own onset allowance)."""
    covered = np.zeros(n, dtype=bool)
    reach = out.reach if out.reach is not None else np.zeros_like(out.suspect, dtype=int)
    for b, start in enumerate(out.block_starts):
        if out.suspect[b, channel]:
            covered[max(0, int(start) - int(reach[b, channel])):int(start) + BLOCK_SIZE] = True
    return covered


def test_suspect_fires_on_a_quiet_tone_and_not_on_silence_or_speechlike_noise() -> None:
    rng = np.random.default_rng(7)
    tone = tones.dtmf_tone("0", 100, low_dbm0=-40.0)
    noise = tones.white_noise(800, -20.0, rng)
    out = DtmfDetector(3).process(np.stack([tone, np.zeros(800), noise]))
    assert out.suspect.shape == (800 // BLOCK_SIZE, 3)
    # Every whole block of the tone is covered; the long-window rule judges 38 ms windows, so
    # its first flag may come a block in, reaching back over the onset.
    assert _covered(out, 0, 800)[:7 * BLOCK_SIZE].all()
    assert not out.suspect[:, 1].any()
    assert not out.suspect[:, 2].any()


def test_suspect_comes_before_the_digit_is_confirmed() -> None:
    detector = DtmfDetector(1)
    signal = np.concatenate([np.zeros(300), tones.dtmf_tone("3", 80), np.zeros(500)])
    first_suspect = None
    first_event = None
    for start in range(0, signal.size, 160):
        out = detector.process(signal[start:start + 160].reshape(1, -1))
        reach = out.reach if out.reach is not None else np.zeros_like(out.suspect, dtype=int)
        for b, s, r in zip(out.block_starts, out.suspect[:, 0], reach[:, 0], strict=True):
            if s and first_suspect is None:
                first_suspect = (int(b), int(b) - int(r))  # flagged block, covered from
        if out.events and first_event is None:
            first_event = start + 160
    assert first_suspect is not None and first_event is not None
    assert first_suspect[0] < first_event
    # Flagged within two blocks of the onset (a masker holding 26 ms still has the onset),
    # covering from no later than one block after it (the masker widens by another block).
    assert first_suspect[0] <= 300 + 2 * BLOCK_SIZE
    assert first_suspect[1] <= 300 + BLOCK_SIZE


def test_block_starts_count_complete_blocks_across_calls() -> None:
    detector = DtmfDetector(1)
    first = detector.process(np.zeros((1, 150)))
    second = detector.process(np.zeros((1, 150)))
    assert first.block_starts.tolist() == [0]
    assert second.block_starts.tolist() == [BLOCK_SIZE]  # 300 samples: 2 blocks + 96
    assert detector.samples_seen == 300


def test_int16_and_float_input_agree() -> None:
    signal = g711.round_trip(_keyed("#0*"), "ulaw")
    assert digits_in(signal) == digits_in(signal.astype(np.float64)) == "#0*"


def test_wrong_shape_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(2, n\)"):
        DtmfDetector(2).process(np.zeros((3, 160)))
    with pytest.raises(ValueError, match="channels"):
        DtmfDetector(0)
    with pytest.raises(ValueError, match="sample_rate"):
        DtmfConfig(sample_rate=16000)


def test_a_weakened_configuration_is_more_permissive() -> None:
    """The knobs work: with the frequency check off, a 4 % off-frequency key is accepted."""
    off = _keyed("5", high_error=0.04)
    assert digits_in(off) == ""
    assert digits_in(off, DtmfConfig(frequency_tolerance=None)) == "5"


def test_resize_keeps_existing_channels_and_adds_fresh_ones() -> None:
    tone = np.concatenate([tones.dtmf_tone("9", 80), np.zeros(1200)])
    detector = DtmfDetector(1)
    first = detector.process(tone[:400].reshape(1, -1)).events
    detector.resize(3)
    rest = np.zeros((3, tone.size - 400))
    rest[0] = tone[400:]
    rest[2, 200:200 + 640] = tones.dtmf_tone("4", 80)
    events = first + detector.process(rest).events
    ons = {(e.channel, e.digit) for e in events if e.kind == "on"}
    assert ons == {(0, "9"), (2, "4")}
    assert abs(next(e.sample for e in events if e.channel == 2) - 200) <= 80
