"""dsp.masker: spans from suspect blocks, coverage, envelopes and replacement signals."""

from __future__ import annotations

import numpy as np

from dsp.masker import covered, envelope, merge, monotone, replacement, spans_from_suspect
from proxy.demo.leak import leaked_ms


def test_suspect_blocks_become_widened_spans() -> None:
    starts = np.array([0, 100, 200, 300], dtype=np.int64)
    suspect = np.array([False, True, True, False])
    spans = merge(spans_from_suspect(starts, suspect, 100, before=100, after=40))
    assert spans == [(0, 340)]


def test_a_suspect_blocks_reach_widens_its_span_back_by_that_much() -> None:
    starts = np.array([1000, 1100, 1200], dtype=np.int64)
    suspect = np.array([False, True, True])
    reach = np.array([0, 0, 250], dtype=np.int64)  # the last block judged a longer window
    spans = spans_from_suspect(starts, suspect, 100, before=10, after=20, reach=reach)
    assert spans == [(1090, 1220), (940, 1320)]


def test_merge_joins_overlapping_and_touching_spans_only() -> None:
    assert merge([(50, 60), (0, 10), (10, 20), (30, 40)]) == [(0, 20), (30, 40), (50, 60)]


def test_covered_marks_exactly_the_samples_inside_spans() -> None:
    mask = covered([(5, 8), (18, 40)], 0, 20)
    assert np.flatnonzero(mask).tolist() == [5, 6, 7, 18, 19]


def test_envelope_is_one_inside_zero_outside_and_ramped_at_edges() -> None:
    gain = envelope([(10, 90)], 0, 100, ramp=8)
    assert np.all(gain[:10] == 0) and np.all(gain[90:] == 0)
    assert np.all(gain[20:80] == 1)
    assert 0 <= gain[10] < gain[14] < 1


def test_monotone_is_phase_continuous_across_packets() -> None:
    whole = monotone(0, 320, 400.0, -20.0)
    parts = np.concatenate([monotone(0, 160, 400.0, -20.0), monotone(160, 160, 400.0, -20.0)])
    assert np.allclose(whole, parts)


def test_tone_replacement_has_no_energy_at_dtmf_frequencies() -> None:
    assert leaked_ms(replacement("tone", 0, 8000, dbm0=-20.0)) == 0.0


def test_silence_and_drop_replace_with_zeros() -> None:
    assert not np.any(replacement("silence", 0, 160))
    assert not np.any(replacement("drop", 0, 160))


def test_zero_mode_replaces_with_the_tones_of_key_zero() -> None:
    out = replacement("zero", 0, 8000, dbm0=-10.0)
    assert leaked_ms(out) > 900
