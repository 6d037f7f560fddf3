"""ITU-T G.711 µ-law and A-law companding over NumPy arrays, by table lookup.

The tables are built once, at import, by the ITU-T G.191 reference algorithm (``g711.c``:
``ulaw_compress``/``ulaw_expand``/``alaw_compress``/``alaw_expand``) evaluated vectorised over
every possible input, so encoding is one ``take`` over a 65 536-entry table and decoding one
over a 256-entry table. Linear samples are 16-bit, left-justified, as in G.191: µ-law uses the
14 most significant bits, A-law the 13.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "round_trip",
    "ulaw_decode",
    "ulaw_encode",
]

ULAW_SILENCE = 0xFF  # µ-law code of linear 0
ALAW_SILENCE = 0xD5  # A-law code of linear +8, the nearest to 0


def _all_int16() -> npt.NDArray[np.int32]:
    # Index i of an encode table is the int16 whose bit pattern is i.
    return np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)


def _ulaw_compress(lin: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    # One's complement for negatives, 14-bit right-justified, bias 33 (G.191 ulaw_compress).
    absno = np.where(lin < 0, ((~lin) >> 2) + 33, (lin >> 2) + 33)
    absno = np.minimum(absno, 0x1FFF)
    segno = np.ones_like(absno)
    i = absno >> 6
    while np.any(i):
        segno += i != 0
        i >>= 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    code = np.where(lin >= 0, code | 0x80, code)
    return code.astype(np.uint8)


def _ulaw_expand(code: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    sign = np.where(code < 0x80, -1, 1)
    mantissa = ~code
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    lin = sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)
    return lin.astype(np.int16)


def _alaw_compress(lin: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    ix = np.where(lin < 0, (~lin) >> 4, lin >> 4)  # 0 <= ix < 2048
    iexp = np.ones_like(ix)
    big = ix > 15
    shifted = ix.copy()
    while np.any(big & (shifted > 31)):
        grow = big & (shifted > 31)
        shifted = np.where(grow, shifted >> 1, shifted)
        iexp += grow
    seg_code = (shifted - 16) + (iexp << 4)
    ix = np.where(big, seg_code, ix)
    ix = np.where(lin >= 0, ix | 0x80, ix)
    return (ix ^ 0x55).astype(np.uint8)


def _alaw_expand(code: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    ix = (code ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    mant = np.where(iexp > 0, mant + 16, mant)
    mant = (mant << 4) + 8
    mant = np.where(iexp > 1, mant << np.maximum(iexp - 1, 0), mant)
    return np.where(code > 127, mant, -mant).astype(np.int16)


_CODES = np.arange(256, dtype=np.int32)
_ULAW_ENCODE = _ulaw_compress(_all_int16())
_ALAW_ENCODE = _alaw_compress(_all_int16())
_ULAW_DECODE = _ulaw_expand(_CODES)
_ALAW_DECODE = _alaw_expand(_CODES)
# float32 copies: the detector and masker work in float32 and skip a conversion per tick.
_ULAW_DECODE_F32 = _ULAW_DECODE.astype(np.float32)
_ALAW_DECODE_F32 = _ALAW_DECODE.astype(np.float32)


def ulaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Encode int16 linear samples (any shape) to µ-law bytes."""
    return _ULAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)]


def alaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Encode int16 linear samples (any shape) to A-law bytes."""
    return _ALAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)]


def ulaw_decode(codes: npt.ArrayLike, dtype: type = np.int16) -> npt.NDArray:
    """Decode µ-law bytes (any shape) to linear samples, int16 or float32."""
    table = _ULAW_DECODE_F32 if dtype is np.float32 else _ULAW_DECODE
    return table[np.asarray(codes, dtype=np.uint8)]


def alaw_decode(codes: npt.ArrayLike, dtype: type = np.int16) -> npt.NDArray:
    """Decode A-law bytes (any shape) to linear samples, int16 or float32."""
    table = _ALAW_DECODE_F32 if dtype is np.float32 else _ALAW_DECODE
    return table[np.asarray(codes, dtype=np.uint8)]


def encode(pcm: npt.ArrayLike, law: str) -> npt.NDArray[np.uint8]:
    """Encode with ``law`` = ``"ulaw"`` (PCMU) or ``"alaw"`` (PCMA)."""
    if law == "ulaw":
        return ulaw_encode(pcm)
    if law == "alaw":
        return alaw_encode(pcm)
    raise ValueError(f"unknown G.711 law {law!r}: expected 'ulaw' or 'alaw'")


def decode(codes: npt.ArrayLike, law: str, dtype: type = np.int16) -> npt.NDArray:
    """Decode with ``law`` = ``"ulaw"`` (PCMU) or ``"alaw"`` (PCMA)."""
    if law == "ulaw":
        return ulaw_decode(codes, dtype)
    if law == "alaw":
        return alaw_decode(codes, dtype)
    raise ValueError(f"unknown G.711 law {law!r}: expected 'ulaw' or 'alaw'")


def round_trip(pcm: npt.ArrayLike, law: str) -> npt.NDArray[np.int16]:
    """Encode then decode: what a G.711 hop does to linear audio."""
    clipped = np.clip(np.rint(np.asarray(pcm, dtype=np.float64)), -32768, 32767)
    return decode(encode(clipped.astype(np.int16), law), law)
