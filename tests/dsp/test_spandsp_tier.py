"""The long window's spandsp tier: two consecutive blocks spandsp would call the same key are
suspected, whatever the 38 ms windows around them say.

The signal no window tier can see: a keyed tone under white noise 15 dB louder than the pair,
except for two 12.75 ms blocks (aligned to the stream's blocks, as spandsp's are when it decodes
from the first sample) where the noise pauses. spandsp needs only those two blocks (the pair
carries all of their energy); every 38 ms window holds at least a block of the loud noise, so
the pair's share of it is far below what multimon-ng or any window tier needs. With the tier
off, the control, spandsp decodes the key from the masked signal.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from dsp import g711, tones
from dsp.dtmf import BLOCK_SIZE, DtmfConfig
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from tests.dsp.masked import mask_spans, silenced

NO_SPANDSP_TIER = replace(DtmfConfig(), window_spandsp_min_energy_share=None)
GAP = 40  # the noise pauses for blocks 40 and 41


def _key_in_noise_with_a_pause(digit: str, seed: int = 16) -> npt.NDArray[np.float64]:
    n = 60 * BLOCK_SIZE
    key_start, key_end = 30 * BLOCK_SIZE, 52 * BLOCK_SIZE
    key = np.zeros(n)
    key[key_start:key_end] = tones.dtmf_tone(digit, (key_end - key_start) / 8.0,
                                             low_dbm0=-12.0)[:key_end - key_start]
    noise = tones.white_noise(n, -12.0 + 3.0 + 15.0, np.random.default_rng(seed))
    noise[GAP * BLOCK_SIZE:(GAP + 2) * BLOCK_SIZE] = 0.0
    x = np.concatenate([key + noise, np.zeros(2000)])
    return g711.round_trip(np.clip(x, -32000, 32000), "ulaw").astype(np.float64)


def test_two_blocks_spandsp_hears_are_masked_where_no_window_tier_suspects() -> None:
    tried = 0
    for digit in "159D":
        x = _key_in_noise_with_a_pause(digit)
        assert spandsp_detect(x) == digit  # the two quiet blocks are enough for spandsp
        assert multimon_detect(x) == ""  # ...and no 40 ms window for multimon-ng
        control = silenced(x, mask_spans(x, NO_SPANDSP_TIER))
        assert spandsp_detect(control) == digit, digit  # the window tiers miss it
        spans = mask_spans(x)
        gap = (GAP * BLOCK_SIZE, (GAP + 2) * BLOCK_SIZE)
        assert any(s <= gap[0] and e >= gap[1] for s, e in spans), digit
        agent = silenced(x, spans)
        assert spandsp_detect(agent) == "" and multimon_detect(agent) == "", digit
        assert np.any(agent != 0.0)  # the noise around the pause went on
        tried += 1
    assert tried == 4


def test_the_spandsp_tier_needs_two_consecutive_blocks() -> None:
    """One quiet block is not a spandsp digit; the tier does not suspect it."""
    x = _key_in_noise_with_a_pause("5")
    one = x.copy()
    noise = g711.round_trip(tones.white_noise(BLOCK_SIZE, -12.0 + 3.0 + 15.0,
                                              np.random.default_rng(3)), "ulaw")
    one[(GAP + 1) * BLOCK_SIZE:(GAP + 2) * BLOCK_SIZE] += noise
    assert spandsp_detect(one) == ""
    spans = mask_spans(one)
    assert not any(s <= GAP * BLOCK_SIZE and e >= (GAP + 1) * BLOCK_SIZE for s, e in spans)
