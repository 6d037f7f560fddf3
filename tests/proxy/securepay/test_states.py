"""The payment status table: wire values, every legal move on a real session, illegal ones."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest

from proxy.securepay.session import CARD, CaptureSettings, PaymentSession
from proxy.securepay.states import (
    CAPTURING_STATUSES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    PaymentStatus,
    SessionError,
    Trigger,
    next_status,
)

TODAY = datetime.date(2026, 11, 24)
S, T = PaymentStatus, Trigger

# Written out again here, on purpose: a change to the table must be a change to this test too.
EXPECTED = {
    (None, T.START): S.CAPTURING,
    (S.CAPTURING, T.ALL_FIELDS_VALID): S.READY,
    (S.CAPTURING, T.ATTEMPTS_EXHAUSTED): S.FAILED,
    (S.CAPTURING, T.RECAPTURE): S.CAPTURING,
    (S.READY, T.RECAPTURE): S.CAPTURING,
    (S.FAILED_SUBMIT, T.RECAPTURE): S.CAPTURING,
    (S.READY, T.SUBMIT): S.SUBMITTING,
    (S.FAILED_SUBMIT, T.SUBMIT): S.SUBMITTING,
    (S.READY, T.NO_GATEWAY): S.FAILED_SUBMIT,
    (S.FAILED_SUBMIT, T.NO_GATEWAY): S.FAILED_SUBMIT,
    (S.SUBMITTING, T.GATEWAY_ERROR): S.FAILED_SUBMIT,
    (S.SUBMITTING, T.TOKENISED): S.COMPLETE,
    (S.SUBMITTING, T.DECLINED): S.FAILED,
    (S.CAPTURING, T.CANCEL): S.CANCELLED,
    (S.READY, T.CANCEL): S.CANCELLED,
    (S.SUBMITTING, T.CANCEL): S.CANCELLED,
    (S.FAILED_SUBMIT, T.CANCEL): S.CANCELLED,
}


class Recorder:
    """A StatusObserver that writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, PaymentStatus | None, PaymentStatus]] = []

    def entering(self, session: PaymentSession, old: PaymentStatus | None,
                 new: PaymentStatus) -> None:
        self.calls.append(("entering", old, new))

    def entered(self, session: PaymentSession, old: PaymentStatus | None,
                new: PaymentStatus) -> None:
        self.calls.append(("entered", old, new))


def _session(observer: Recorder | None = None, **settings: Any) -> PaymentSession:
    return PaymentSession("PA1", "call-1", "agent-1", CaptureSettings(**settings), now=0.0,
                          today=lambda: TODAY, observer=observer)


def _keys(s: PaymentSession, keys: str) -> None:
    for k in keys:
        s.key(k, 1.0)


def _session_in(status: PaymentStatus, observer: Recorder | None = None) -> PaymentSession:
    """A real session brought to ``status`` the way a payment gets there."""
    s = _session(observer, max_attempts=1)
    if status is S.FAILED:
        _keys(s, "1234#")  # one invalid card number with max_attempts=1
    elif status is not S.CAPTURING:
        _keys(s, "4111111111111111" + "1230" + "123")
        if status in (S.SUBMITTING, S.COMPLETE):
            s.move(T.SUBMIT)
        if status is S.FAILED_SUBMIT:
            s.move(T.NO_GATEWAY, "gateway-not-configured")
        if status is S.COMPLETE:
            s.move(T.TOKENISED)
        if status is S.CANCELLED:
            s.move(T.CANCEL)
    assert s.status is status
    return s


def test_status_values_are_the_strings_the_api_and_panel_always_used() -> None:
    assert [s.value for s in PaymentStatus] == [
        "capturing", "ready", "submitting", "failed-submit", "complete", "failed", "cancelled"]
    assert PaymentStatus("failed-submit") is S.FAILED_SUBMIT and S.COMPLETE == "complete"
    assert {S.COMPLETE, S.FAILED, S.CANCELLED} == TERMINAL
    assert [s for s in S if s.terminal] == [S.COMPLETE, S.FAILED, S.CANCELLED]
    assert {S.CAPTURING} == CAPTURING_STATUSES and [s for s in S if s.capturing] == [S.CAPTURING]


def test_the_table_is_exactly_the_documented_moves() -> None:
    assert TRANSITIONS == EXPECTED


def test_the_only_way_out_of_a_terminal_status_is_none() -> None:
    assert not any(status in TERMINAL for status, _ in TRANSITIONS)


@pytest.mark.parametrize(("status", "trigger", "new"),
                         [(s, t, n) for (s, t), n in EXPECTED.items() if s is not None],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_every_legal_move_on_a_real_session(status: PaymentStatus, trigger: Trigger,
                                             new: PaymentStatus) -> None:
    observer = Recorder()
    s = _session_in(status, observer)
    observer.calls.clear()
    assert s.move(trigger, "why") is new
    assert s.status is new and s.error == "why"
    assert observer.calls == [("entering", status, new), ("entered", status, new)]
    if new.terminal:  # digits overwritten, what the agent saw kept
        assert all(not f.buffer for f in s.fields.values()) and s.current is None
    else:
        assert s.fields[CARD].buffer or status is S.CAPTURING  # digits kept for a retry


def test_constructing_a_session_is_its_start() -> None:
    observer = Recorder()
    s = _session(observer)
    assert s.status is S.CAPTURING
    assert observer.calls == [("entering", None, S.CAPTURING), ("entered", None, S.CAPTURING)]


def test_the_session_moves_itself_only_through_the_table() -> None:
    observer = Recorder()
    s = _session(observer, max_attempts=1)
    _keys(s, "4111111111111111" + "1230" + "123")
    s.recapture("expiration-date", 2.0)
    _keys(s, "1230")
    _keys(s, "1#")  # field finished; "#" ignored; nothing else to key
    moves = [(old, new) for kind, old, new in observer.calls if kind == "entered"]
    assert moves == [(None, S.CAPTURING), (S.CAPTURING, S.READY), (S.READY, S.CAPTURING),
                     (S.CAPTURING, S.READY)]
    with pytest.raises(AttributeError):
        s.status = S.COMPLETE  # type: ignore[misc]  # no back door around the table


ILLEGAL = [(s, t) for s, t in itertools.product(list(S), list(T)) if (s, t) not in EXPECTED]


@pytest.mark.parametrize(("status", "trigger"), ILLEGAL,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_an_illegal_move_raises_and_changes_nothing(status: PaymentStatus,
                                                    trigger: Trigger) -> None:
    observer = Recorder()
    s = _session_in(status, observer)
    observer.calls.clear()
    before = (s.masked(), s.current, s.error)
    with pytest.raises(IllegalTransition) as caught:
        s.move(trigger)
    assert isinstance(caught.value, SessionError)
    assert caught.value.status is status and caught.value.trigger is trigger
    assert f"in status {status.value}" in str(caught.value)
    assert s.status is status and (s.masked(), s.current, s.error) == before
    assert observer.calls == []  # nobody was told of a move that did not happen


def test_start_is_legal_only_once() -> None:
    assert next_status(None, T.START) is S.CAPTURING
    for trigger in T:
        if trigger is not T.START:
            with pytest.raises(IllegalTransition, match=r"\(not started\)"):
                next_status(None, trigger)
    with pytest.raises(IllegalTransition):
        next_status(S.CAPTURING, T.START)


def test_recapture_after_the_payment_ended_is_refused_and_keeps_the_receipt() -> None:
    s = _session_in(S.COMPLETE)
    shown = s.masked()
    with pytest.raises(IllegalTransition, match="cannot re-capture a payment in status complete"):
        s.recapture("expiration-date", 5.0)
    assert s.masked() == shown and s.final_last4 == "1111"


def test_an_observer_that_refuses_leaves_the_session_as_it_was() -> None:
    class Refuses(Recorder):
        def entering(self, session: PaymentSession, old: PaymentStatus | None,
                     new: PaymentStatus) -> None:
            if new is S.CAPTURING and old is not None:
                raise RuntimeError("no")

    observer = Refuses()
    s = _session(observer)
    _keys(s, "4111111111111111" + "1230" + "123")
    with pytest.raises(RuntimeError):
        s.recapture("security-code", 2.0)
    assert s.status is S.READY and s.current is None
    assert s.fields["security-code"].buffer == bytearray(b"123")  # not wiped by a refused move
