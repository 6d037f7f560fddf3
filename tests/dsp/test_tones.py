"""Synthesised tones have the frequencies, levels and lengths asked for."""

import numpy as np
import pytest

from dsp import levels, tones


def _peak_freq(x: np.ndarray, fs: int = 8000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), n=1 << 18))
    return float(np.argmax(spec) * fs / (1 << 18))


def test_digit_freqs_cover_the_keypad():
    assert tones.digit_freqs("1") == (697.0, 1209.0)
    assert tones.digit_freqs("0") == (941.0, 1336.0)
    assert tones.digit_freqs("#") == (941.0, 1477.0)
    assert tones.digit_freqs("d") == (941.0, 1633.0)


def test_bad_key_is_refused_by_name():
    with pytest.raises(ValueError, match="not a DTMF key: 'x'"):
        tones.digit_freqs("x")


def test_sine_level_matches_dbm0():
    for dbm0 in (0.0, -10.0, -30.0):
        x = tones.sine(1000.0, 1000.0, dbm0)
        assert levels.level_dbm0(x) == pytest.approx(dbm0, abs=0.01)


def test_tone_has_requested_duration_twist_and_frequency_error():
    x = tones.dtmf_tone("5", 40.0, low_dbm0=-10.0, high_dbm0=-14.0, high_error=0.02)
    assert x.size == 320
    long = tones.dtmf_tone("5", 2000.0, low_dbm0=-10.0, high_dbm0=-40.0, low_error=-0.015)
    assert _peak_freq(long) == pytest.approx(770.0 * 0.985, abs=0.5)


def test_sequence_layout():
    x = tones.dtmf_sequence("12", tone_ms=40, gap_ms=30, lead_ms=10, tail_ms=20)
    assert x.size == (10 + 40 + 30 + 40 + 20) * 8
    assert np.all(x[:80] == 0) and np.all(x[-160:] == 0)


def test_white_noise_power():
    x = tones.white_noise(80000, -20.0, np.random.default_rng(1))
    assert levels.level_dbm0(x) == pytest.approx(-20.0, abs=0.1)


@pytest.mark.parametrize("name", ["dial", "ringback", "busy", "reorder", "sit", "cng", "ced"])
def test_call_progress_tones_have_length(name):
    assert tones.call_progress(name, 1500.0).size == 12000


def test_unknown_call_progress_tone_is_refused():
    with pytest.raises(ValueError, match="unknown call-progress tone 'howler'"):
        tones.call_progress("howler", 100.0)
