"""multimon-ng as an independent DTMF decoder (Debian multimon-ng): a second opinion on leaks.

multimon-ng reads raw signed 16-bit mono at 22 050 Hz from stdin (``-t raw``), so 8 kHz audio is
resampled first; it prints ``DTMF: X`` per key.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

MULTIMON_RATE = 22050


class MultimonUnavailableError(RuntimeError):
    """multimon-ng is not installed (apt-get install multimon-ng)."""


def multimon_detect(samples_8k: npt.ArrayLike, timeout: float = 60.0) -> str:
    """Keys multimon-ng finds in 8 kHz 16-bit audio."""
    binary = shutil.which("multimon-ng")
    if binary is None:
        raise MultimonUnavailableError("multimon-ng not found (apt-get install multimon-ng)")
    x = np.asarray(samples_8k, dtype=np.float64)
    x = np.concatenate([np.zeros(800), x, np.zeros(1600)])  # let it settle and finish a key
    up = resample_poly(x, 441, 160)
    pcm = np.clip(np.rint(up), -32768, 32767).astype("<i2").tobytes()
    proc = subprocess.run([binary, "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=pcm,
                          capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"multimon-ng failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[:200]}")
    keys = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("DTMF: "):
            keys.append(line[6:].strip()[:1])
    return "".join(keys)
