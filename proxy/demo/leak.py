"""How much DTMF reached the agent: milliseconds of audio with tone energy above a threshold.

A Hann-windowed DFT (20 ms windows, 5 ms hop) measures the level at each of the 8 DTMF
frequencies; a window where any of them exceeds ``threshold_dbm0`` counts as 5 ms of leak.
The Hann window keeps a −20 dBm0 replacement monotone at 400 Hz (297 Hz from 697 Hz, six bins)
more than 60 dB down, so the masker's own signal is never mistaken for a leak, while 2 ms of a
−10 dBm0 tone onset still reads about −30 dBm0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dsp.levels import DBM0_SINE_AMPLITUDE
from dsp.tones import HIGH_FREQS, LOW_FREQS

RATE = 8000
WINDOW = 160
HOP = 40
_FREQS = np.array(LOW_FREQS + HIGH_FREQS)
_HANN = np.hanning(WINDOW)
_N = np.arange(WINDOW)
_BASIS = np.concatenate([
    (_HANN[:, None] * np.cos(2 * np.pi * _FREQS[None, :] * _N[:, None] / RATE)),
    (_HANN[:, None] * -np.sin(2 * np.pi * _FREQS[None, :] * _N[:, None] / RATE)),
], axis=1)


def tone_levels(samples: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(windows, 8) level in dBm0 at each DTMF frequency, window i starting at i·HOP."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < WINDOW:
        x = np.concatenate([x, np.zeros(WINDOW - x.size)])
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]
    y = frames @ _BASIS
    magnitude = np.hypot(y[:, :8], y[:, 8:])
    amplitude = 2 * magnitude / _HANN.sum()
    with np.errstate(divide="ignore"):
        return 20 * np.log10(amplitude / DBM0_SINE_AMPLITUDE)


def leaked_ms(samples: npt.ArrayLike, threshold_dbm0: float = -45.0) -> float:
    """Milliseconds of ``samples`` in which any DTMF frequency is above ``threshold_dbm0``."""
    levels = tone_levels(samples)
    return float(np.sum(levels.max(axis=1) > threshold_dbm0) * HOP * 1000 / RATE)


def leaked_ms_per_window(samples: npt.ArrayLike, windows: list[tuple[int, int]],
                         threshold_dbm0: float = -45.0) -> list[float]:
    """Leak in each [start, end) sample window (e.g. one per keyed digit)."""
    x = np.asarray(samples, dtype=np.float64)
    return [leaked_ms(x[max(0, s):max(0, e)], threshold_dbm0) for s, e in windows]
