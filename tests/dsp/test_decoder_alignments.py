"""The reference decoders start anywhere (issue 16): the tiers that ask their question judge it
at every alignment a decoder may use, not only at the receiver's own.

* multimon-ng sums 40 ms (884 samples at 22 050 Hz, 320.7 at 8 kHz) every 10.02 ms, a grid that
  drifts over every alignment of ours. The decoder tier now judges that window itself — 25
  eighth-block segments, 318–319 samples — ending at every eighth of a block, so none of
  multimon-ng's windows is more than 0.8 ms from one judged (``window_decoder_windows=8``).
  Control: the 38.25 ms windows at every half block (the default before) and quarter block.
* spandsp's 102-sample blocks straddle ours when it starts elsewhere; the spandsp tier asks its
  question also on blocks a quarter, half and three quarters of a block later
  (``window_spandsp_alignments=4``). Control: the receiver's blocks only.

Each decodes the masked signal (silenced where the detector says, widened as the pipeline
widens) with the real decoders started at many offsets.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

import dsp.dtmf as dtmf
from dsp import g711, tones
from dsp.dtmf import BLOCK_SIZE, FREQS, DtmfConfig, DtmfDetector
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from tests.dsp.masked import mask_spans, silenced

OFFSETS = range(0, 80, 4)  # multimon-ng's 10 ms grid at 8 kHz is 80 samples
HALF_BLOCK_WINDOWS = replace(DtmfConfig(), window_decoder_windows=2)
QUARTER_BLOCK_WINDOWS = replace(DtmfConfig(), window_decoder_windows=4)
OWN_BLOCKS_ONLY = replace(DtmfConfig(), window_spandsp_alignments=1)
GAP = 40  # the noise pauses for two blocks from here (tests/dsp/test_spandsp_tier.py)


def _crowded_key() -> npt.NDArray[np.float64]:
    """Key 9 (68 ms at −12 dBm0 per tone) with a partial 3 dB under each tone 100 Hz outside
    the pair and white noise at −9.8 dBm0, after a µ-law hop: found by a seeded search as a
    key multimon-ng hears through the half-block windows' mask at some alignments."""
    low, high = tones.digit_freqs("9")
    key = tones.dtmf_tone("9", 68.0, low_dbm0=-12.0)
    crowd = tones.sine(low - 100.0, 68.0, -14.95) + tones.sine(high + 100.0, 68.0, -14.95)
    noise = tones.white_noise(key.size, -9.79, np.random.default_rng(999))
    x = np.concatenate([np.zeros(1570), key + crowd[:key.size] + noise, np.zeros(2000)])
    return g711.round_trip(x, "ulaw").astype(np.float64)


def _multimon_hears_at(agent: npt.NDArray[np.float64]) -> list[int]:
    return [o for o in OFFSETS if multimon_detect(agent[o:])]


def test_a_crowded_key_reaches_multimon_ng_at_no_alignment() -> None:
    x = _crowded_key()
    assert multimon_detect(x) == "9"  # the reference decoder hears it from the caller
    for control in (HALF_BLOCK_WINDOWS, QUARTER_BLOCK_WINDOWS):
        assert _multimon_hears_at(silenced(x, mask_spans(x, control))), "does not bite"
    agent = silenced(x, mask_spans(x))
    assert _multimon_hears_at(agent) == []
    assert all(spandsp_detect(agent[o:]) == "" for o in OFFSETS)
    assert np.any(agent[1570:-2000] != 0.0)  # part of the key's stretch went on


def test_the_decoder_tiers_windows_are_multimon_ngs_40_ms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window the tier judges is 25 eighth-block segments (318–319 samples: multimon-ng's
    320.7 within 0.6 %), ending at each eighth of a block, and what it judges is the DFT and
    energy of exactly those samples."""
    judged: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    says = dtmf._decoder_says

    def spy(window: npt.NDArray[np.complex128], energy: npt.NDArray[np.float64],
            cfg: DtmfConfig, length: int = dtmf._LONG
            ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        # One call judges every end of every block: (channels, blocks, ends, tones).
        judged.extend((np.abs(window[:, :, t]) ** 2, energy[:, :, t])
                      for t in range(window.shape[2]))
        return says(window, energy, cfg, length)

    monkeypatch.setattr(dtmf, "_decoder_says", spy)
    x = np.random.default_rng(1).normal(0.0, 3000.0, BLOCK_SIZE * 10).astype(np.float32)
    detector = DtmfDetector(1)
    detector.process(x[None, :4 * BLOCK_SIZE])  # the history: four blocks
    judged.clear()
    detector.process(x[None, 4 * BLOCK_SIZE:])
    assert len(judged) == 8  # one window per eighth of every block
    bounds = [b * BLOCK_SIZE + s for b in range(10) for s in dtmf._EIGHTHS[:-1]] + [x.size]
    for (power, energy), end in zip(judged, dtmf._EIGHTHS[1:], strict=True):
        for j in range(6):  # the call's six blocks
            stop = (4 + j) * BLOCK_SIZE + end
            start = bounds[bounds.index(stop) - 25]
            assert 318 <= stop - start <= 319
            n = np.arange(start, stop)
            samples = x[start:stop].astype(np.float64)
            direct = np.abs(samples @ np.exp(-2j * np.pi * np.outer(n, FREQS) / 8000)) ** 2
            np.testing.assert_allclose(power[0, j], direct, rtol=1e-3)
            assert energy[0, j] == pytest.approx(float(np.sum(samples ** 2)), rel=1e-4)


def _key_in_noise_with_a_shifted_pause(digit: str, shift: int) -> npt.NDArray[np.float64]:
    """A key under white noise 15 dB above the pair, except for two blocks where the noise
    pauses — ``shift`` samples after the receiver's block boundary, where a spandsp started
    ``shift`` samples in has its own two blocks."""
    n = 60 * BLOCK_SIZE
    key_start, key_end = 30 * BLOCK_SIZE, 52 * BLOCK_SIZE
    key = np.zeros(n)
    key[key_start:key_end] = tones.dtmf_tone(digit, (key_end - key_start) / 8.0,
                                             low_dbm0=-12.0)[:key_end - key_start]
    noise = tones.white_noise(n, -12.0 + 3.0 + 15.0, np.random.default_rng(16))
    noise[GAP * BLOCK_SIZE + shift:(GAP + 2) * BLOCK_SIZE + shift] = 0.0
    x = np.concatenate([key + noise, np.zeros(2000)])
    return g711.round_trip(np.clip(x, -32000, 32000), "ulaw").astype(np.float64)


@pytest.mark.parametrize("shift", [26, 51, 77])
def test_two_blocks_a_later_spandsp_hears_are_masked(shift: int) -> None:
    for digit in "5D":
        x = _key_in_noise_with_a_shifted_pause(digit, shift)
        assert spandsp_detect(x[shift:]) == digit and multimon_detect(x) == ""
        control = silenced(x, mask_spans(x, OWN_BLOCKS_ONLY))
        assert spandsp_detect(control[shift:]) == digit, "does not bite"
        agent = silenced(x, mask_spans(x))
        assert spandsp_detect(agent[shift:]) == "" and multimon_detect(agent[shift:]) == ""
        assert np.any(agent != 0.0)  # the noise around the pause went on


def test_the_window_and_alignment_counts_are_checked() -> None:
    with pytest.raises(ValueError, match="window_decoder_windows"):
        DtmfConfig(window_decoder_windows=3)
    with pytest.raises(ValueError, match="window_spandsp_alignments"):
        DtmfConfig(window_spandsp_alignments=3)
