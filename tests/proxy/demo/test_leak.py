"""proxy.demo.leak: tone energy at DTMF frequencies, the 'no bleed' measure."""

from __future__ import annotations

import numpy as np

from dsp.tones import dtmf_tone, silence, sine
from proxy.demo.leak import leaked_ms, leaked_ms_per_window, tone_levels


def test_a_full_digit_is_measured_as_leak() -> None:
    assert leaked_ms(dtmf_tone("5", 100, low_dbm0=-30.0)) >= 80


def test_a_tone_below_threshold_is_not_leak() -> None:
    assert leaked_ms(dtmf_tone("5", 100, low_dbm0=-55.0)) == 0.0


def test_silence_and_off_band_monotone_are_not_leak() -> None:
    assert leaked_ms(silence(200)) == 0.0
    assert leaked_ms(sine(400.0, 500, -10.0)) == 0.0


def test_a_short_onset_of_a_digit_is_detected() -> None:
    x = np.concatenate([silence(100), dtmf_tone("1", 2, low_dbm0=-10.0), silence(100)])
    assert leaked_ms(x) > 0


def test_levels_read_the_tone_level_at_its_frequency() -> None:
    levels = tone_levels(sine(697.0, 100, -20.0))
    assert abs(float(np.median(levels[:, 0])) + 20.0) < 1.0


def test_leak_is_reported_per_window() -> None:
    x = np.concatenate([dtmf_tone("1", 100), silence(100)])
    first, second = leaked_ms_per_window(x, [(0, 800), (800, 1600)])
    assert first > 0 and second == 0

