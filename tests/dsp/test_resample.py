"""Streaming resampling gives the one-shot result whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from dsp.resample import StreamResampler


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("chunk", [1, 999, 5000])
def test_chunked_output_equals_one_shot_resampling(rate: int, chunk: int) -> None:
    x = np.random.default_rng(rate).standard_normal((2, rate // 2 + 17))
    r = StreamResampler(rate)
    parts = [r.push(x[:, i:i + chunk]) for i in range(0, x.shape[1], chunk)]
    parts.append(r.push(np.zeros((2, 0)), final=True))
    got = np.concatenate(parts, axis=1)
    want = resample_poly(x, r.up, r.down, axis=1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_8_khz_input_passes_through_untouched() -> None:
    x = np.arange(10.0).reshape(1, -1)
    assert StreamResampler(8000).push(x) is x


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0)
