"""ICE-lite responder (proxy.media.ice): authenticated checks answered, everything else refused
without a word; consent lapses 30 s after the last check (RFC 7675)."""

from __future__ import annotations

import pytest
from aioice import stun

from proxy.media import ice
from proxy.media.ice import IceLite, Verdict
from proxy.media.types import IceParams

PARAMS = IceParams("ours1234", "0123456789abcdef012345", "theirs")
SOURCE = ("127.0.0.1", 50000)


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def _check(username: str = "ours1234:theirs", password: str = PARAMS.local_pwd, *,
           nominate: bool = False, fingerprint: bool = True,
           klass: stun.Class = stun.Class.REQUEST) -> bytes:
    message = stun.Message(stun.Method.BINDING, klass)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(password.encode())
    if not fingerprint:
        message.attributes.pop("FINGERPRINT")
    return bytes(message)


def test_authenticated_check_is_answered_with_the_mapped_address() -> None:
    lite = IceLite(PARAMS, Clock())
    result = lite.handle(_check(), SOURCE)
    assert result.verdict is Verdict.CHECK
    response = stun.parse_message(result.response)
    assert response.message_class is stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == SOURCE
    assert response.check_message_integrity(PARAMS.local_pwd.encode())
    assert "FINGERPRINT" in response.attributes
    assert lite.consented(SOURCE) and not lite.consented(("127.0.0.1", 50001))


def test_use_candidate_nominates() -> None:
    assert IceLite(PARAMS, Clock()).handle(_check(nominate=True), SOURCE).verdict \
        is Verdict.NOMINATED


def test_remote_ufrag_is_not_checked_before_the_peer_named_it() -> None:
    lite = IceLite(IceParams("ours1234", PARAMS.local_pwd), Clock())
    assert lite.handle(_check("ours1234:anyone"), SOURCE).verdict is Verdict.CHECK


@pytest.mark.parametrize(("data", "reason"), [
    (_check(password="wrong-password-wrong-pw"), "MESSAGE-INTEGRITY"),
    (_check("someone:theirs"), "USERNAME"),
    (_check("ours1234:intruder"), "USERNAME"),
    (_check("ours1234"), "USERNAME"),
    (_check(fingerprint=False), "FINGERPRINT"),
    (_check(klass=stun.Class.INDICATION), "not a binding request"),
    (_check(klass=stun.Class.RESPONSE), "not a binding request"),
    (_check()[:-1], "malformed"),
    (_check()[:20], "malformed"),
    (b"\x00\x01" + b"\xff" * 30, "malformed"),
    (b"\x00\x01\x00\x00" + b"\x00" * 700, "byte STUN"),
    # PRIORITY (4-byte value) with a 2-byte body: aioice's unpacker raises struct.error.
    (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12 + b"\x00\x24\x00\x02\xaa\xbb\x00\x00",
     "malformed"),
], ids=["bad-integrity", "other-ufrag", "other-remote-ufrag", "no-colon", "no-fingerprint",
        "indication", "response", "truncated", "header-only", "garbage", "oversized",
        "short-attribute"])
def test_unauthenticated_or_malformed_stun_is_refused_silently(data: bytes, reason: str) -> None:
    lite = IceLite(PARAMS, Clock())
    result = lite.handle(data, SOURCE)
    assert result.verdict is Verdict.REFUSED and result.response == b""
    assert reason in result.reason
    assert not lite.consented(SOURCE)


def test_tampered_check_fails_fingerprint_or_integrity() -> None:
    data = bytearray(_check())
    data[30] ^= 0x01  # inside an attribute
    result = IceLite(PARAMS, Clock()).handle(bytes(data), SOURCE)
    assert result.verdict is Verdict.REFUSED


def test_consent_lapses_after_the_timeout_and_returns_with_a_check() -> None:
    clock = Clock()
    lite = IceLite(PARAMS, clock)
    lite.handle(_check(), SOURCE)
    clock.now += ice.CONSENT_TIMEOUT - 0.5
    assert lite.consented(SOURCE)
    clock.now += 1
    assert not lite.consented(SOURCE)
    lite.forget_stale()
    lite.handle(_check(), SOURCE)
    assert lite.consented(SOURCE)


def test_password_is_hidden_in_repr() -> None:
    assert PARAMS.local_pwd not in repr(PARAMS)
