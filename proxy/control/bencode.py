"""Bencode (BitTorrent BEP 3), the ng protocol's native encoding.

Byte strings decode to ``str`` (UTF-8; undecodable bytes kept via ``surrogateescape`` so an SDP
round-trips byte for byte). Dictionaries are encoded with sorted keys as BEP 3 requires; on
decoding, unsorted keys are accepted (rtpengine and Kamailio do not sort them).
"""

from __future__ import annotations

from typing import TypeAlias

Value: TypeAlias = "int | str | bytes | list[Value] | dict[str, Value]"
MAX_INT_DIGITS = 20  # beyond 64 bits: no ng value needs more, and a string is ≤ 64 KiB
MAX_DEPTH = 32  # nesting beyond this is refused: a hostile message must not exhaust the stack


class BencodeError(ValueError):
    """Malformed bencode; the message says what and at which byte offset."""


def encode(value: Value) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Value, out: list[bytes]) -> None:
    if isinstance(value, bool):  # bool is an int subclass; bencode has no booleans
        raise BencodeError("cannot encode a bool (use 0/1 or a string)")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        out.append(b"%d:%s" % (len(raw), raw))
    elif isinstance(value, bytes | bytearray):
        out.append(b"%d:%s" % (len(value), bytes(value)))
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for key in sorted(value, key=lambda k: k.encode("utf-8", "surrogateescape")):
            _encode(key, out)
            _encode(value[key], out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot encode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """Decode exactly one value that spans all of ``data``."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at byte {end}")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH} at byte {i}")
    if i >= len(data):
        raise BencodeError(f"unexpected end of data at byte {i}")
    c = data[i]
    if c == ord("i"):
        end = data.find(b"e", i)
        if end < 0:
            raise BencodeError(f"unterminated integer at byte {i}")
        text = data[i + 1:end]
        if len(text) > MAX_INT_DIGITS:  # (Python refuses to convert past 4 300 digits)
            raise BencodeError(f"integer of {len(text)} digits at byte {i}")
        if not text or text in (b"-", b"-0") or (text[0:1] == b"0" and len(text) > 1) or (
                text[:2] == b"-0"):
            raise BencodeError(f"invalid integer at byte {i}")
        try:
            return int(text), end + 1
        except ValueError as exc:
            raise BencodeError(f"invalid integer at byte {i}") from exc
    if c == ord("l"):
        items = []
        i += 1
        while i < len(data) and data[i] != ord("e"):
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        if i >= len(data):
            raise BencodeError("unterminated list")
        return items, i + 1
    if c == ord("d"):
        result: dict[str, Value] = {}
        i += 1
        while i < len(data) and data[i] != ord("e"):
            key, i = _decode(data, i, depth + 1)
            if not isinstance(key, str):
                raise BencodeError(f"dictionary key is not a string at byte {i}")
            result[key], i = _decode(data, i, depth + 1)
        if i >= len(data):
            raise BencodeError("unterminated dictionary")
        return result, i + 1
    if 0x30 <= c <= 0x39:
        colon = data.find(b":", i)
        if colon < 0 or colon - i > MAX_INT_DIGITS or not data[i:colon].isdigit():
            raise BencodeError(f"invalid string length at byte {i}")
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise BencodeError(f"string at byte {i} runs past the end of the data")
        return data[start:start + length].decode("utf-8", "surrogateescape"), start + length
    raise BencodeError(f"unexpected byte {bytes([c])!r} at byte {i}")
