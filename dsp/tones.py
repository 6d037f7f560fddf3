"""Tone synthesis: DTMF digits (level in dBm0 per tone, frequency error, twist, duration),
call-progress tones and seeded white noise, for tests and load tests.

Everything returns float64 linear samples on the 16-bit scale (0 dBm0 sine peak ≈ 22 827);
pass the result through :func:`dsp.g711.round_trip` to model a G.711 hop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dsp.levels import dbm0_to_amplitude, dbm0_to_power

SAMPLE_RATE = 8000

# ITU-T Q.23 frequencies: rows are the low group, columns the high group.
LOW_FREQS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
HIGH_FREQS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
DIGITS = "123A456B789C*0#D"  # row-major over (LOW_FREQS × HIGH_FREQS)


def digit_freqs(digit: str) -> tuple[float, float]:
    """(low, high) nominal frequencies of a DTMF key."""
    idx = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if idx < 0:
        raise ValueError(f"not a DTMF key: {digit!r} (expected one of {DIGITS})")
    return LOW_FREQS[idx // 4], HIGH_FREQS[idx % 4]


def samples_for_ms(ms: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of samples in ``ms`` milliseconds (rounded to nearest)."""
    return round(ms * sample_rate / 1000.0)


def sine(
    freq: float,
    duration_ms: float,
    dbm0: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    phase: float = 0.0,
) -> npt.NDArray[np.float64]:
    """A sine of ``freq`` Hz at ``dbm0`` lasting ``duration_ms``."""
    n = samples_for_ms(duration_ms, sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    return dbm0_to_amplitude(dbm0) * np.sin(2.0 * np.pi * freq * t + phase)


def dtmf_tone(
    digit: str,
    duration_ms: float,
    *,
    low_dbm0: float = -10.0,
    high_dbm0: float | None = None,
    low_error: float = 0.0,
    high_error: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
    phase: float = 0.0,
) -> npt.NDArray[np.float64]:
    """One DTMF key.

    Args:
        digit: one of ``0-9 * # A-D``.
        duration_ms: tone length.
        low_dbm0: level of the low-group tone.
        high_dbm0: level of the high-group tone (default: same as low). Twist is
            ``high_dbm0 - low_dbm0``; negative means the low group is louder ("normal" twist).
        low_error, high_error: relative frequency error, e.g. ``0.015`` for +1.5 %.
        phase: start phase of both tones, radians.
    """
    f_low, f_high = digit_freqs(digit)
    high = low_dbm0 if high_dbm0 is None else high_dbm0
    return sine(
        f_low * (1.0 + low_error), duration_ms, low_dbm0, sample_rate=sample_rate, phase=phase
    ) + sine(
        f_high * (1.0 + high_error), duration_ms, high, sample_rate=sample_rate, phase=phase
    )


def silence(duration_ms: float, sample_rate: int = SAMPLE_RATE) -> npt.NDArray[np.float64]:
    """Zero samples lasting ``duration_ms``."""
    return np.zeros(samples_for_ms(duration_ms, sample_rate), dtype=np.float64)


def dtmf_sequence(
    digits: str,
    *,
    tone_ms: float = 50.0,
    gap_ms: float = 50.0,
    lead_ms: float = 0.0,
    tail_ms: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
    **tone_kwargs: float,
) -> npt.NDArray[np.float64]:
    """Keys one after another: ``lead``, then (tone, gap) per digit, then ``tail``.

    ``tone_kwargs`` go to :func:`dtmf_tone` (levels, frequency errors).
    """
    parts = [silence(lead_ms, sample_rate)]
    for i, d in enumerate(digits):
        if i:
            parts.append(silence(gap_ms, sample_rate))
        parts.append(dtmf_tone(d, tone_ms, sample_rate=sample_rate, **tone_kwargs))
    parts.append(silence(tail_ms, sample_rate))
    return np.concatenate(parts)


def white_noise(
    n: int, dbm0: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Gaussian white noise of ``n`` samples whose total power is ``dbm0``."""
    return rng.normal(0.0, np.sqrt(dbm0_to_power(dbm0)), n)


def _cadenced(
    freqs: tuple[float, ...],
    dbm0: float,
    duration_ms: float,
    on_ms: float | None,
    off_ms: float,
    sample_rate: int,
) -> npt.NDArray[np.float64]:
    n = samples_for_ms(duration_ms, sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = sum(dbm0_to_amplitude(dbm0) * np.sin(2 * np.pi * f * t) for f in freqs)
    out = np.asarray(out, dtype=np.float64)
    if on_ms is not None:
        period = samples_for_ms(on_ms + off_ms, sample_rate)
        on = samples_for_ms(on_ms, sample_rate)
        out[(np.arange(n) % period) >= on] = 0.0
    return out


def call_progress(
    name: str, duration_ms: float, *, dbm0: float = -13.0, sample_rate: int = SAMPLE_RATE
) -> npt.NDArray[np.float64]:
    """A call-progress or fax tone (North American / ITU values), ``dbm0`` per frequency.

    ``name``: ``dial`` (350+440 Hz, continuous), ``ringback`` (440+480, 2 s on 4 s off),
    ``busy`` (480+620, 0.5/0.5 s), ``reorder`` (480+620, 0.25/0.25 s), ``sit`` (the three
    rising SIT segments 913.8, 1370.6, 1776.7 Hz, 274 ms each), ``cng`` (fax calling, 1100 Hz
    0.5 s on 3 s off), ``ced`` (fax answer, 2100 Hz continuous).
    """
    cadence: dict[str, tuple[tuple[float, ...], float | None, float]] = {
        "dial": ((350.0, 440.0), None, 0.0),
        "ringback": ((440.0, 480.0), 2000.0, 4000.0),
        "busy": ((480.0, 620.0), 500.0, 500.0),
        "reorder": ((480.0, 620.0), 250.0, 250.0),
        "cng": ((1100.0,), 500.0, 3000.0),
        "ced": ((2100.0,), None, 0.0),
    }
    if name == "sit":
        seg = [sine(f, 274.0, dbm0, sample_rate=sample_rate) for f in (913.8, 1370.6, 1776.7)]
        one = np.concatenate([*seg, silence(1000.0, sample_rate)])
        n = samples_for_ms(duration_ms, sample_rate)
        return np.resize(one, n)
    if name not in cadence:
        raise ValueError(
            f"unknown call-progress tone {name!r}: expected one of "
            f"{', '.join([*cadence, 'sit'])}"
        )
    freqs, on, off = cadence[name]
    return _cadenced(freqs, dbm0, duration_ms, on, off, sample_rate)
