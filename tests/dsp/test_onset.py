"""``may_start_a_key``: the end of a sender's audio before the timeline runs on in silence is
masked when it could be a key's first milliseconds. It must see every such start (however few
samples, at any key, over line noise) and pass steady sounds (noise, speech-level noise, a
tone going on, silence), whose ends would otherwise be masked at every pause."""

from __future__ import annotations

import numpy as np
import pytest

from dsp import tones
from dsp.dtmf import ONSET_TAIL, may_start_a_key


def _line(seed: int, dbm0: float = -50.0) -> np.ndarray:
    return tones.white_noise(2 * ONSET_TAIL, dbm0, np.random.default_rng(seed))  # 64 ms


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
@pytest.mark.parametrize("onset", [2, 4, 8, 16, 24, 40, 64, 96, 120])
def test_a_key_starting_k_samples_before_the_end_is_seen(digit: str, onset: int) -> None:
    x = _line(onset)
    x[-onset:] += tones.dtmf_tone(digit, 40, low_dbm0=-12.0)[:onset]
    assert may_start_a_key(x)


@pytest.mark.parametrize("onset", [4, 16, 64])
def test_a_quiet_key_minus_25_dbm0_is_seen(onset: int) -> None:
    x = _line(onset, -60.0)
    x[-onset:] += tones.dtmf_tone("5", 40, low_dbm0=-25.0)[:onset]
    assert may_start_a_key(x)


@pytest.mark.parametrize("seed", range(40))
def test_steady_sounds_are_not_a_start(seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert not may_start_a_key(_line(seed))
    assert not may_start_a_key(_line(seed, -25.0))  # speech level
    freq = float(rng.uniform(300, 3000))
    assert not may_start_a_key(tones.sine(freq, 64, -12.0) + _line(seed))
    assert not may_start_a_key(tones.dtmf_tone("5", 64, low_dbm0=-12.0))  # a key going on
    assert not may_start_a_key(np.zeros(ONSET_TAIL))


def test_too_little_audio_is_not_judged() -> None:
    assert not may_start_a_key(np.zeros(8))
    assert not may_start_a_key(np.zeros(0))
