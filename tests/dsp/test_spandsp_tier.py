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
from dsp.dtmf import BLOCK_SIZE, DtmfConfig, DtmfDetector
from dsp.masker import Span, merge, spans_from_suspect
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from proxy.media.masking import WIDEN_AFTER, WIDEN_BEFORE

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


def _spans(x: npt.NDArray[np.float64], config: DtmfConfig | None = None) -> list[Span]:
    detector = DtmfDetector(1, config)
    spans: list[Span] = []
    for t in range(0, x.size, 160):
        out = detector.process(x[None, t:t + 160])
        reach = None if out.reach is None else out.reach[:, 0]
        tail = None if out.tail is None else out.tail[:, 0]
        spans += spans_from_suspect(out.block_starts, out.suspect[:, 0], out.block_size,
                                    WIDEN_BEFORE, WIDEN_AFTER, reach, tail)
    return merge(spans)


def _silenced(x: npt.NDArray[np.float64], spans: list[Span]) -> npt.NDArray[np.float64]:
    out = x.copy()
    for s, e in spans:
        out[max(0, s):max(0, e)] = 0.0
    return out


def test_two_blocks_spandsp_hears_are_masked_where_no_window_tier_suspects() -> None:
    tried = 0
    for digit in "159D":
        x = _key_in_noise_with_a_pause(digit)
        assert spandsp_detect(x) == digit  # the two quiet blocks are enough for spandsp
        assert multimon_detect(x) == ""  # ...and no 40 ms window for multimon-ng
        control = _silenced(x, _spans(x, NO_SPANDSP_TIER))
        assert spandsp_detect(control) == digit, digit  # the window tiers miss it
        spans = _spans(x)
        gap = (GAP * BLOCK_SIZE, (GAP + 2) * BLOCK_SIZE)
        assert any(s <= gap[0] and e >= gap[1] for s, e in spans), digit
        agent = _silenced(x, spans)
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
    spans = _spans(one)
    assert not any(s <= GAP * BLOCK_SIZE and e >= (GAP + 1) * BLOCK_SIZE for s, e in spans)
