"""Every payment status and every legal change of status, in one table (after h11's _state.py).

Whatever changes how a payment moves between statuses changes here and nowhere else: the
session and the manager name a ``Trigger`` and ``next_status`` looks the move up; a move the
table does not list raises ``IllegalTransition``. The status values are wire format: the REST
``Payment.status`` and the WebSocket events carry them as these exact strings, and the agent
panel shows them, so renaming a value is an API change.

    (start)        → capturing
    capturing      → ready (all fields valid) | failed (attempts exhausted, timeouts)
    ready          → submitting | failed-submit (no gateway)
    submitting     → complete (token) | failed (declined) | failed-submit (gateway error)
    failed-submit  → submitting (the agent retries, the caller need not key again)
    capturing, ready, failed-submit → capturing (the agent re-asks a field)
    cancel: from every status that is not terminal.

Digits are *captured* (caller keys become card fields) only in ``capturing``; ``ready``,
``submitting`` and ``failed-submit`` hold digits already captured but take no more keys.
"""

from __future__ import annotations

from enum import StrEnum


class SessionError(ValueError):
    """A request the session's state does not allow (message never holds digits)."""


class IllegalTransition(SessionError):
    """A trigger the transition table does not allow in the session's current status."""

    def __init__(self, status: PaymentStatus | None, trigger: Trigger) -> None:
        shown = status.value if status is not None else "(not started)"
        # "in status" is what API callers have always been told for a state conflict.
        super().__init__(f"cannot {trigger.value} a payment in status {shown}")
        self.status, self.trigger = status, trigger


class PaymentStatus(StrEnum):
    CAPTURING = "capturing"  # caller keys fill the card fields
    READY = "ready"  # every field valid; about to be (or waiting to be) submitted
    SUBMITTING = "submitting"  # the gateway is tokenising
    FAILED_SUBMIT = "failed-submit"  # gateway down/erred: the agent may retry, no re-keying
    COMPLETE = "complete"  # tokenised; digits wiped
    FAILED = "failed"  # declined or attempts exhausted; digits wiped
    CANCELLED = "cancelled"  # agent, call end or shutdown; digits wiped

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def capturing(self) -> bool:
        return self in CAPTURING_STATUSES


class Trigger(StrEnum):
    """What moves a payment (the value reads in an error message: "cannot <value> ...")."""

    START = "start"
    ALL_FIELDS_VALID = "finish capturing"
    RECAPTURE = "re-capture"
    SUBMIT = "submit"
    NO_GATEWAY = "submit without a gateway"
    GATEWAY_ERROR = "report a gateway error for"
    TOKENISED = "complete"
    DECLINED = "decline"
    ATTEMPTS_EXHAUSTED = "fail"
    CANCEL = "cancel"


TERMINAL: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.COMPLETE, PaymentStatus.FAILED, PaymentStatus.CANCELLED})

# The statuses in which caller keys become card data: masking must be on for the call.
CAPTURING_STATUSES: frozenset[PaymentStatus] = frozenset({PaymentStatus.CAPTURING})

_S, _T = PaymentStatus, Trigger

# (status, trigger) → new status. ``None`` is a session not started yet: only START leaves it.
TRANSITIONS: dict[tuple[PaymentStatus | None, Trigger], PaymentStatus] = {
    (None, _T.START): _S.CAPTURING,
    (_S.CAPTURING, _T.ALL_FIELDS_VALID): _S.READY,
    (_S.CAPTURING, _T.ATTEMPTS_EXHAUSTED): _S.FAILED,  # invalid entries or timeouts
    # The agent asks for a field again: while capturing, once all are valid, or after the
    # gateway failed (e.g. it reported a wrong expiry as an error rather than a decline).
    (_S.CAPTURING, _T.RECAPTURE): _S.CAPTURING,
    (_S.READY, _T.RECAPTURE): _S.CAPTURING,
    (_S.FAILED_SUBMIT, _T.RECAPTURE): _S.CAPTURING,
    (_S.READY, _T.SUBMIT): _S.SUBMITTING,
    (_S.FAILED_SUBMIT, _T.SUBMIT): _S.SUBMITTING,  # the agent's retry
    (_S.READY, _T.NO_GATEWAY): _S.FAILED_SUBMIT,
    (_S.FAILED_SUBMIT, _T.NO_GATEWAY): _S.FAILED_SUBMIT,
    (_S.SUBMITTING, _T.GATEWAY_ERROR): _S.FAILED_SUBMIT,
    (_S.SUBMITTING, _T.TOKENISED): _S.COMPLETE,
    (_S.SUBMITTING, _T.DECLINED): _S.FAILED,
    **{(status, _T.CANCEL): _S.CANCELLED for status in _S if status not in TERMINAL},
}


def next_status(status: PaymentStatus | None, trigger: Trigger) -> PaymentStatus:
    """The status ``trigger`` moves a payment in ``status`` to; raises IllegalTransition."""
    try:
        return TRANSITIONS[(status, trigger)]
    except KeyError as exc:
        raise IllegalTransition(status, trigger) from exc
