"""Levels in dBm0 for 16-bit linear audio.

0 dBm0 is a sine 3.14 dB below the full-scale sine of G.711 (ITU-T G.711 §4, G.168); with
16-bit linear samples and spandsp's convention of full scale = 32768 that is a sine of peak
amplitude 32768 · 10^(−3.14/20) ≈ 22 832.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32768.0
DBM0_FULL_SCALE_SINE = 3.14  # dBm0 of a full-scale sine
DBM0_SINE_AMPLITUDE = FULL_SCALE * 10.0 ** (-DBM0_FULL_SCALE_SINE / 20.0)
# Mean square of a 0 dBm0 sine (A²/2): the reference power.
DBM0_POWER = DBM0_SINE_AMPLITUDE**2 / 2.0


def dbm0_to_amplitude(dbm0: float) -> float:
    """Peak amplitude of a sine at ``dbm0``."""
    return DBM0_SINE_AMPLITUDE * 10.0 ** (dbm0 / 20.0)


def power_to_dbm0(mean_square: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """dBm0 of a signal with the given mean square (−inf for silence)."""
    ms = np.asarray(mean_square, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(ms / DBM0_POWER)


def dbm0_to_power(dbm0: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean square of a signal at ``dbm0``."""
    return DBM0_POWER * 10.0 ** (np.asarray(dbm0, dtype=np.float64) / 10.0)


def level_dbm0(samples: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    """dBm0 of a block of samples along ``axis`` (mean square over that axis)."""
    x = np.asarray(samples, dtype=np.float64)
    return power_to_dbm0(np.mean(x * x, axis=axis))
