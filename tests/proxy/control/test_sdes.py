"""RFC 4568 a=crypto parsing, formatting and key generation per suite."""

from __future__ import annotations

import pytest

from proxy.control import sdes
from proxy.media.types import SRTP_SUITES


@pytest.mark.parametrize("suite", SRTP_SUITES)
def test_generated_keys_round_trip_through_the_crypto_line(suite: str) -> None:
    attribute = sdes.generate(suite, tag=3)
    parsed = sdes.parse_crypto(attribute.format())
    assert parsed == attribute
    assert "key_salt=<" in repr(parsed.params)  # key material hidden from logs


def test_unsupported_suites_are_skipped_and_bad_lines_raise() -> None:
    good = sdes.generate("AES_CM_128_HMAC_SHA1_80").format()
    assert sdes.parse_crypto("1 F8_128_HMAC_SHA1_80 inline:AAAA") is None
    assert [a.suite for a in sdes.offered(["1 F8_128_HMAC_SHA1_80 inline:AAAA", good])] == [
        "AES_CM_128_HMAC_SHA1_80"]
    with pytest.raises(sdes.SdesError):
        sdes.parse_crypto("x AES_CM_128_HMAC_SHA1_80 inline:AAAA")
    with pytest.raises(sdes.SdesError, match="bytes"):
        sdes.parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA")
