"""The long window's decoder tier: a key is suspected wherever multimon-ng would call it one.

The mixture the harmonic rule cannot see: a key at −12 dBm0 per tone with a partial 3 dB below
each tone, 100 Hz off (as a voiced sound's next harmonic would be), and white noise — the pair
still carries enough of a 40 ms window for multimon-ng to decode it. The suspicion as it was
before the decoder tier (the nominal second tier instead) is the control: it must miss it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from dsp import g711, tones
from dsp.dtmf import DtmfConfig, DtmfDetector
from proxy.demo.multimon import multimon_detect

BEFORE = replace(DtmfConfig(), window_decoder_min_energy_share=None,
                 window_accurate_frequency_hz=4.0)


def _crowded_key(digit: str, tone_ms: float = 60.0, seed: int = 16) -> npt.NDArray[np.float64]:
    """``digit`` with a partial 3 dB under each tone, 100 Hz outside the pair, and noise at
    −12 dBm0, between 250 ms of silence, after a µ-law hop."""
    low, high = tones.digit_freqs(digit)
    key = tones.dtmf_tone(digit, tone_ms, low_dbm0=-12.0)
    crowd = (tones.sine(low - 100.0, tone_ms, -15.0) + tones.sine(high + 100.0, tone_ms, -15.0))
    noise = tones.white_noise(key.size, -12.0, np.random.default_rng(seed))
    pad = np.zeros(2000)
    x = np.concatenate([pad, key + crowd[:key.size] + noise, pad])
    return g711.round_trip(x, "ulaw").astype(np.float64)


def _suspect_blocks(x: npt.NDArray[np.float64], config: DtmfConfig | None = None) -> int:
    """Suspect blocks of one signal fed in 20 ms ticks, as the media plane feeds it."""
    detector = DtmfDetector(1, config)
    return sum(int(detector.process(x[None, t:t + 160]).suspect.sum())
               for t in range(0, x.size, 160))


def test_every_crowded_key_multimon_hears_is_suspected() -> None:
    """All 16 keys: wherever multimon-ng decodes the crowded key, it is suspected; where the
    crowding partial lands on another key's tone multimon-ng hears nothing (nor must we)."""
    heard = missed_before = 0
    for digit in tones.DIGITS:
        x = _crowded_key(digit)
        if multimon_detect(x) != digit:
            continue
        heard += 1
        assert _suspect_blocks(x) >= 2, digit
        missed_before += _suspect_blocks(x, BEFORE) == 0
    assert heard >= 10  # the reference decoder hears most of them
    assert missed_before >= 8  # the control: the rule before missed most of those


def test_the_decoder_tier_alone_is_what_suspects_the_crowded_key() -> None:
    x = _crowded_key("5")
    assert _suspect_blocks(x, replace(DtmfConfig(), window_decoder_min_energy_share=None)) == 0
    assert _suspect_blocks(x) >= 2
    # ...also when it asks for two consecutive windows (the cheaper setting): a key lasts.
    assert _suspect_blocks(x, replace(DtmfConfig(), window_decoder_consecutive=2)) >= 2


def test_reset_forgets_the_decoder_tiers_windows() -> None:
    """The decoder tier's windows reach three blocks back: after a reset, the crowded key's
    first blocks have no history (silence instead), so the suspicion starts later than on an
    unbroken stream, and still comes."""
    x = _crowded_key("5", tone_ms=120.0)
    onset = 2000 // 102 + 1  # the first block wholly inside the key
    whole = DtmfDetector(1)
    unbroken = np.concatenate([whole.process(x[None, t:t + 102 * 4]).suspect[:, 0]
                               for t in range(0, x.size - 102 * 4, 102 * 4)])
    detector = DtmfDetector(1)
    detector.process(x[None, :(onset + 2) * 102])
    detector.reset(0)
    after = detector.process(x[None, (onset + 2) * 102:(onset + 10) * 102]).suspect[:, 0]
    assert unbroken[onset + 2:onset + 10].any()
    assert not after[:2].any()  # no window yet spans two blocks of the key after the reset
    assert after.any()


def test_the_decoder_tier_counts_one_or_two_windows() -> None:
    with pytest.raises(ValueError, match="window_decoder_consecutive"):
        DtmfConfig(window_decoder_consecutive=3)
