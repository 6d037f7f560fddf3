"""The secure-pay capture state machine: keys in, validated fields, masked views, wiped digits."""

from __future__ import annotations

import datetime

import pytest

from proxy.securepay.session import CARD, CODE, EXPIRY, CaptureSettings, PaymentSession, Trigger

TODAY = datetime.date(2026, 11, 24)


def session(**settings: object) -> PaymentSession:
    return PaymentSession("PA1", "call-1", "agent-1", CaptureSettings(**settings), now=0.0,
                          today=lambda: TODAY)


def key_all(s: PaymentSession, keys: str, now: float = 1.0) -> list[tuple[str, str]]:
    return [s.key(k, now) for k in keys]


def test_a_visa_card_fills_every_field_and_the_agent_sees_only_masked_values() -> None:
    s = session()
    results = key_all(s, "4111111111111111")
    assert results[-1] == ("field-complete", "")  # 16 Luhn-valid digits finish by themselves
    assert s.masked()[CARD] == "••••••••••••1111" and s.brand == "visa"
    key_all(s, "#1230")  # a stray "#" after an auto-finished field is ignored
    key_all(s, "123")
    assert s.status == "ready"
    assert s.values() == {CARD: "4111111111111111", EXPIRY: "1230", CODE: "123"}
    assert "4111111111111111" not in repr(s) and "1230" not in repr(s)


def test_amex_needs_a_four_digit_code() -> None:
    s = session()
    key_all(s, "378282246310005" + "1230" + "123")
    assert s.status == "capturing" and s.current == CODE
    key_all(s, "4")
    assert s.status == "ready"


def test_star_clears_the_field_and_hash_finishes_it() -> None:
    s = session()
    key_all(s, "4111*")
    assert s.masked()[CARD] == ""
    assert key_all(s, "4111111111111112#")[-1] == ("error", "invalid-card-number")
    assert s.masked()[CARD] == "" and s.current == CARD  # asked again


def test_three_invalid_attempts_fail_the_payment_and_wipe_it() -> None:
    s = session(max_attempts=3)
    for _ in range(3):
        key_all(s, "1234#")
    assert s.status == "failed" and s.error == "invalid-card-number"
    assert all(not f.buffer for f in s.fields.values())


def test_an_expired_card_and_unaccepted_brand_are_refused() -> None:
    s = session(accepted_brands=("visa",))
    assert key_all(s, "5555555555554444")[-1] == ("error", "card-type-not-accepted")
    s = session()
    key_all(s, "4111111111111111")
    assert key_all(s, "1025")[-1] == ("error", "invalid-date")


def test_timeouts_re_ask_the_field() -> None:
    s = session(inter_digit_timeout=5.0, field_timeout=30.0)
    s.key("4", 1.0)
    assert s.poll(3.0) is None
    assert s.poll(6.5) == ("error", "timeout")
    assert s.masked()[CARD] == ""
    assert s.poll(40.0) == ("error", "timeout")  # nothing keyed at all: field timeout


def test_ending_overwrites_the_digit_buffers_in_place() -> None:
    s = session()
    key_all(s, "4111111111111111")
    buffer = s.fields[CARD].buffer
    s.move(Trigger.CANCEL)
    assert len(buffer) == 0 and s.final_last4 == "1111" and s.final_brand == "visa"


def test_recapture_lets_the_agent_ask_again() -> None:
    s = session()
    key_all(s, "4111111111111111" + "1230" + "123")
    s.recapture(EXPIRY, 2.0)
    assert s.status == "capturing" and s.current == EXPIRY and s.masked()[EXPIRY] == ""
    key_all(s, "0131")
    assert s.status == "ready"
    with pytest.raises(ValueError, match="unknown field"):
        s.recapture("pin", 3.0)


def test_no_object_holding_digits_shows_them_in_its_repr() -> None:
    from proxy.media.masking import _Digit
    from proxy.media.types import DigitEvent
    from proxy.securepay.manager import CallInfo

    s = session()
    key_all(s, "41111111")
    shown = " ".join([repr(s), repr(s.fields), repr(_Digit("7", 0)),
                      repr(CallInfo("c", recent="4111")),
                      repr(DigitEvent("st", "9", "inband", 0.0, 50.0))])
    assert "4111" not in shown and "'7'" not in shown and "'9'" not in shown
