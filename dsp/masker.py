"""What the agent hears instead of DTMF, and which samples must be replaced (pure NumPy).

A stream's media timeline is counted in samples from its first packet. The receiver's
``suspect`` blocks (and its confirmed digits) become *mask spans* on that timeline, widened
backwards by a block so the onset a block boundary cut is covered, and forwards by a hangover
for the tail. Replacement signals are generated from the absolute sample position, so a
monotone stays phase-continuous across packets with no state to carry.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dsp.levels import dbm0_to_amplitude
from dsp.tones import digit_freqs

RATE = 8000
Span = tuple[int, int]  # [start, end) in media samples


def spans_from_suspect(block_starts: npt.NDArray[np.int64], suspect: npt.NDArray[np.bool_],
                       block_size: int, before: int, after: int,
                       reach: npt.NDArray[np.int64] | None = None,
                       tail: npt.NDArray[np.int64] | None = None) -> list[Span]:
    """Mask spans for one stream: each suspect block widened by ``before``/``after`` samples,
    and back by its ``reach`` too (the receiver judged a window starting that much earlier);
    ``tail``, where the receiver gives it, replaces ``after`` (what its suspicion covers past
    the block's end)."""
    extra = np.zeros(len(block_starts), dtype=np.int64) if reach is None else reach
    hang = np.full(len(block_starts), after, dtype=np.int64) if tail is None else tail
    return [(int(s) - before - int(r), int(s) + block_size + int(t))
            for s, flag, r, t in zip(block_starts, suspect, extra, hang, strict=True)
            if flag]


def merge(spans: list[Span]) -> list[Span]:
    """Union of spans, sorted, overlapping or touching ones joined."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def covered(spans: list[Span], start: int, n: int) -> npt.NDArray[np.bool_]:
    """Boolean mask of the samples [start, start+n) that fall inside any span."""
    mask = np.zeros(n, dtype=bool)
    for s, e in spans:
        lo, hi = max(s, start), min(e, start + n)
        if lo < hi:
            mask[lo - start:hi - start] = True
    return mask


def envelope(spans: list[Span], start: int, n: int, ramp: int) -> npt.NDArray[np.float64]:
    """Gain of the replacement over [start, start+n): 1 inside spans, raised-cosine ramps of
    ``ramp`` samples just inside each span's edges, 0 outside. A replacement that stops dead
    splatters energy across the band (−45 dBm0 at the DTMF frequencies for a −20 dBm0 tone);
    ramped, it stays clean."""
    gain = np.zeros(n)
    t = np.arange(start, start + n)
    for s, e in spans:
        lo, hi = max(s, start), min(e, start + n)
        if lo >= hi:
            continue
        pos = t[lo - start:hi - start]
        edge = np.minimum(pos - s, e - 1 - pos) / max(ramp, 1)
        g = np.where(edge >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0, 1)))
        gain[lo - start:hi - start] = np.maximum(gain[lo - start:hi - start], g)
    return gain


def monotone(start: int, n: int, frequency: float, dbm0: float,
             rate: int = RATE) -> npt.NDArray[np.float64]:
    """A sine at ``frequency`` for samples [start, start+n), phase from the absolute position.

    ``rate`` is 8 kHz on the media path; recordings redacted at their own rate pass theirs.
    """
    t = np.arange(start, start + n, dtype=np.float64)
    return dbm0_to_amplitude(dbm0) * np.sin(2 * np.pi * frequency * t / rate)


def digit_tone(digit: str, start: int, n: int, dbm0: float,
               rate: int = RATE) -> npt.NDArray[np.float64]:
    low, high = digit_freqs(digit)
    return monotone(start, n, low, dbm0, rate) + monotone(start, n, high, dbm0, rate)


def replacement(mode: str, start: int, n: int, *, frequency: float = 400.0,
                dbm0: float = -20.0, digit: str = "0", rate: int = RATE
                ) -> npt.NDArray[np.float64]:
    """The samples that replace masked audio in DTMF-security ``mode``.

    ``tone``: a flat monotone off every DTMF frequency (400 Hz by default). ``silence`` and
    ``drop``: silence. ``zero``/``DTMF``/``random``: the tones of a replacement key (the caller
    chose ``digit``; for random the caller picks it per digit).
    """
    if mode == "tone":
        return monotone(start, n, frequency, dbm0, rate)
    if mode in ("zero", "DTMF", "random"):
        return digit_tone("0" if mode == "zero" else digit, start, n, dbm0, rate)
    return np.zeros(n)
