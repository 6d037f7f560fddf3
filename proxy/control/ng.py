"""ng control protocol framing and key normalisation (rtpengine-compatible).

A message is ``cookie SP dictionary``; the dictionary is bencode (first byte ``d``) or JSON
(first byte ``{``), and the reply uses the same encoding and cookie. Keys come in several
spellings (``call-id``, ``call-ID``, ``call id``...); :func:`normalise` folds them to one
canonical lower-case, hyphenated form so handlers look up one name. Flag items fold spaces to
hyphens as rtpengine does (``trust address`` == ``trust-address``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from proxy.control import bencode

Encoding = Literal["bencode", "json"]
MAX_MESSAGE = 65_535
MAX_COOKIE = 256  # rtpengine's clients send short cookies; a longer one is not a client


class NgFramingError(ValueError):
    """No usable cookie: nothing can be replied to (the datagram is dropped and counted)."""


class NgError(Exception):
    """A request that gets ``result: error`` with this ``error-reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NgMessage:
    cookie: str
    body: dict[str, Any]  # normalised
    encoding: Encoding


def canonical_key(key: str) -> str:
    return key.strip().lower().replace(" ", "-").replace("_", "-")


def canonical_flag(flag: str) -> str:
    return flag.strip().replace(" ", "-")


# Keys whose values are lists of flag-like words, folded the same way as ``flags``.
_FLAG_LISTS = ("flags", "replace", "rtcp-mux", "sdes", "supports", "osrtp")


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        k = canonical_key(key)
        if k in _FLAG_LISTS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise NgError(f"Invalid value for key '{key}': expected a list of strings")
            value = [canonical_flag(v) for v in value]
        out[k] = value
    return out


def parse_message(data: bytes) -> NgMessage:
    """Split and decode one datagram; raises NgFramingError, or NgError (reply-able)."""
    if len(data) > MAX_MESSAGE:
        raise NgFramingError("message too large")
    space = data.find(b" ", 0, MAX_COOKIE + 1)
    if space <= 0:
        raise NgFramingError("no cookie (or one over 256 bytes)")
    try:
        cookie = data[:space].decode("ascii")
    except UnicodeDecodeError as exc:
        raise NgFramingError("cookie is not ASCII") from exc
    payload = data[space + 1:]
    return NgMessage(cookie, *_decode_body(payload))


def _decode_body(payload: bytes) -> tuple[dict[str, Any], Encoding]:
    if not payload:
        raise _ReplyError("Invalid data (no payload)", "bencode")
    if payload[:1] == b"{":
        try:
            body = json.loads(payload)
            # A lone surrogate ("\ud800") decodes but could never be encoded in a reply.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeError, RecursionError) as exc:
            raise _ReplyError("Failed to parse JSON document", "json") from exc
        encoding: Encoding = "json"
    elif payload[:1] == b"d":
        try:
            body = bencode.decode(payload)
        except bencode.BencodeError as exc:
            raise _ReplyError("Could not decode bencode dictionary", "bencode") from exc
        encoding = "bencode"
    else:
        raise _ReplyError("Invalid NG data format", "bencode")
    if not isinstance(body, dict):
        raise _ReplyError("Could not decode bencode dictionary", encoding)
    try:
        return normalise(body), encoding
    except NgError as exc:
        raise _ReplyError(exc.reason, encoding) from exc


class _ReplyError(NgError):
    def __init__(self, reason: str, encoding: Encoding) -> None:
        super().__init__(reason)
        self.encoding = encoding


def error_encoding(exc: NgError) -> Encoding:
    return exc.encoding if isinstance(exc, _ReplyError) else "bencode"


def format_reply(cookie: str, reply: dict[str, Any], encoding: Encoding) -> bytes:
    if encoding == "json":
        payload = json.dumps(reply, separators=(",", ":")).encode()
    else:
        payload = bencode.encode(reply)
    return cookie.encode("ascii") + b" " + payload


def error_reply(reason: str) -> dict[str, Any]:
    return {"result": "error", "error-reason": reason}


# --- typed accessors for handlers ------------------------------------------------------

def get_str(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise NgError(f"Invalid value for key '{key}': expected a string")


def require_str(body: dict[str, Any], key: str) -> str:
    value = get_str(body, key)
    if not value:
        raise NgError(f'Dictionary contains no key "{key}"')
    return value


def get_int(body: dict[str, Any], key: str, default: int | None = None) -> int | None:
    """A bencode integer or a string of digits (Kamailio sends strings)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) <= 20:
        return int(value)
    raise NgError(f"Invalid value for key '{key}': expected an integer")


def get_float(body: dict[str, Any], key: str, default: float | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise NgError(f"Invalid value for key '{key}': expected a number") from exc


def flags(body: dict[str, Any]) -> set[str]:
    """The ``flags`` list, folded to lower case for membership tests."""
    return {f.lower() for f in body.get("flags", [])}
