"""Bencode round trips and rejection of malformed input."""

from __future__ import annotations

import pytest

from proxy.control.bencode import BencodeError, decode, encode


def test_round_trip_of_an_ng_offer() -> None:
    msg = {"command": "offer", "call-id": "a@b", "flags": ["trust address"], "ptime": 20,
           "sdp": "v=0\r\nm=audio 1 RTP/AVP 0\r\n", "nested": {"x": [1, -2, "é"]}}
    assert decode(encode(msg)) == msg


def test_keys_are_sorted_on_encode_and_unsorted_keys_accepted_on_decode() -> None:
    assert encode({"b": 1, "a": 2}) == b"d1:ai2e1:bi1ee"
    assert decode(b"d1:bi1e1:ai2ee") == {"b": 1, "a": 2}


@pytest.mark.parametrize("data", [b"i01e", b"i-0e", b"ie", b"5:abc", b"l", b"d1:a", b"x",
                                  b"di1ei2ee", b"i1ei2e", b"l" * 100 + b"e" * 100])
def test_malformed_input_is_refused(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(data)


def test_bytes_that_are_not_utf8_survive_a_round_trip() -> None:
    raw = b"4:\xff\xfe\x00a"
    assert encode(decode(raw)) == raw
