"""G.711 tables are bit-exact with the ITU-T G.191 reference (g711.c), for every input."""

import numpy as np
import pytest

from dsp import g711


def _c_short(v: int) -> int:
    """Wrap to a C short, as the reference's ``short`` arithmetic does."""
    return (v + 0x8000) % 0x10000 - 0x8000


def ref_ulaw_compress(lin: int) -> int:
    absno = ((~lin) >> 2) + 33 if lin < 0 else (lin >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x0008 - segno
    low_nibble = 0x000F - ((absno >> segno) & 0x000F)
    out = (high_nibble << 4) | low_nibble
    if lin >= 0:
        out |= 0x0080
    return out


def ref_ulaw_expand(log: int) -> int:
    sign = -1 if log < 0x0080 else 1
    mantissa = ~log
    exponent = (mantissa >> 4) & 0x0007
    segment = exponent + 1
    mantissa &= 0x000F
    step = 4 << segment
    return _c_short(sign * ((0x0080 << exponent) + step * mantissa + step // 2 - 4 * 33))


def ref_alaw_compress(lin: int) -> int:
    ix = (~lin) >> 4 if lin < 0 else lin >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if lin >= 0:
        ix |= 0x0080
    return ix ^ 0x0055


def ref_alaw_expand(log: int) -> int:
    ix = (log ^ 0x0055) & 0x007F
    iexp = ix >> 4
    mant = ix & 0x000F
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 0x0008
    if iexp > 1:
        mant <<= iexp - 1
    return _c_short(mant if log > 127 else -mant)


ALL_LINEAR = np.arange(-32768, 32768, dtype=np.int32)
ALL_CODES = np.arange(256, dtype=np.int32)


@pytest.mark.parametrize(
    ("encode", "reference"),
    [(g711.ulaw_encode, ref_ulaw_compress), (g711.alaw_encode, ref_alaw_compress)],
    ids=["ulaw", "alaw"],
)
def test_encode_matches_g191_for_all_65536_inputs(encode, reference):
    expected = np.array([reference(int(v)) for v in ALL_LINEAR], dtype=np.uint8)
    got = encode(ALL_LINEAR.astype(np.int16))
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"first mismatch at linear {ALL_LINEAR[mismatches[0]]}"


@pytest.mark.parametrize(
    ("decode", "reference"),
    [(g711.ulaw_decode, ref_ulaw_expand), (g711.alaw_decode, ref_alaw_expand)],
    ids=["ulaw", "alaw"],
)
def test_decode_matches_g191_for_all_256_codes(decode, reference):
    expected = np.array([reference(int(c)) for c in ALL_CODES], dtype=np.int16)
    np.testing.assert_array_equal(decode(ALL_CODES.astype(np.uint8)), expected)


def test_known_codes_of_silence_and_full_scale():
    assert g711.ulaw_encode([0])[0] == g711.ULAW_SILENCE == 0xFF
    assert g711.alaw_encode([0])[0] == g711.ALAW_SILENCE == 0xD5
    np.testing.assert_array_equal(g711.ulaw_decode([0x80, 0x00]), [32124, -32124])
    np.testing.assert_array_equal(g711.alaw_decode([0xAA, 0x2A]), [32256, -32256])


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_decode_then_encode_is_identity_on_codes(law):
    codes = np.arange(256, dtype=np.uint8)
    back = g711.encode(g711.decode(codes, law), law)
    if law == "ulaw":
        # 0x7F (negative zero) decodes to 0, which re-encodes as 0xFF (positive zero).
        codes = codes.copy()
        codes[0x7F] = 0xFF
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_float32_decode_equals_int16_decode(law):
    codes = np.arange(256, dtype=np.uint8).reshape(4, 64)
    np.testing.assert_array_equal(
        g711.decode(codes, law, np.float32), g711.decode(codes, law).astype(np.float32)
    )


def test_unknown_law_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown G\.711 law 'g729'"):
        g711.encode([0], "g729")
