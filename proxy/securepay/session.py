"""One secure-pay capture: the caller's keys become card fields, validated as they come.

The digits exist in clear only in this object's bytearrays, which are overwritten with zeros
when a field is cleared and when the session ends. Everything it reports — events, repr,
errors — is masked: the count of digits, the brand, the Luhn verdict, and the last four digits
only once a complete number is valid.

Keys: digits fill the current field; ``#`` finishes it; ``*`` clears it. A field also finishes
by itself when it can hold no more: the card number when it reaches a length valid for its brand
and passes Luhn, the expiry at 4 digits, the security code at its brand's length.

The status changes only in ``move``, which looks the change up in ``states.TRANSITIONS`` and
tells a ``StatusObserver`` (the manager) before and after, so that masking can be switched on
before a single key is captured and no path can skip it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from proxy.securepay import cards
from proxy.securepay.states import (
    IllegalTransition,
    PaymentStatus,
    SessionError,
    Trigger,
    next_status,
)

__all__ = ["CARD", "CODE", "EXPIRY", "POSTAL", "CaptureSettings", "IllegalTransition",
           "PaymentSession", "PaymentStatus", "SessionError", "StatusObserver", "Trigger"]

CARD, EXPIRY, CODE, POSTAL = ("payment-card-number", "expiration-date", "security-code",
                              "postal-code")
MAX_LENGTH = {CARD: 19, EXPIRY: 4, CODE: 4, POSTAL: 10}


@dataclass
class _Field:
    name: str
    buffer: bytearray = field(default_factory=bytearray, repr=False)  # clear digits
    valid: bool = False
    attempts: int = 0

    def wipe(self) -> None:
        for i in range(len(self.buffer)):
            self.buffer[i] = 0
        self.buffer.clear()
        self.valid = False


@dataclass(frozen=True)
class CaptureSettings:
    inter_digit_timeout: float = 10.0
    field_timeout: float = 60.0
    max_attempts: int = 3
    accepted_brands: tuple[str, ...] = cards.ALL_BRANDS
    require_postal_code: bool = False


class StatusObserver(Protocol):
    """Told of every change of a session's status (``old`` is None for the start)."""

    def entering(self, session: PaymentSession, old: PaymentStatus | None,
                 new: PaymentStatus) -> None:
        """Before the change; raising stops it (the session keeps its status)."""

    def entered(self, session: PaymentSession, old: PaymentStatus | None,
                new: PaymentStatus) -> None:
        """After the change; must not raise."""


class PaymentSession:
    """One payment's capture; its statuses and their order are ``states.TRANSITIONS``.

    Constructing a session starts it (``Trigger.START``): if the observer refuses, the
    constructor raises and no session exists."""

    def __init__(self, sid: str, call_id: str, agent_id: str, settings: CaptureSettings,
                 now: float, today: Callable[[], datetime.date] = datetime.date.today,
                 observer: StatusObserver | None = None) -> None:
        self.sid, self.call_id, self.agent_id = sid, call_id, agent_id
        self.settings = settings
        names = [CARD, EXPIRY, CODE] + ([POSTAL] if settings.require_postal_code else [])
        self.fields = {n: _Field(n) for n in names}
        self.current: str | None = CARD
        self._status: PaymentStatus | None = None
        self._observer = observer
        self.error = ""
        self.token = ""
        self.final_last4 = ""  # kept after the digits are wiped, for the agent's receipt
        self.final_brand = ""
        self.amount = ""  # what the agent said the payment is for (shown, audited; no charge)
        self.currency = ""
        self._final_masked: dict[str, str] | None = None
        self._today = today
        self._last_digit = now
        self._field_started = now
        self.move(Trigger.START)

    # --- status ---------------------------------------------------------------------------

    @property
    def status(self) -> PaymentStatus:
        assert self._status is not None  # set by the constructor's START
        return self._status

    def move(self, trigger: Trigger, error: str = "") -> PaymentStatus:
        """The one place a status changes: look it up, let the observer veto, then commit.

        A move into a terminal status also records what the agent was shown and overwrites
        every digit buffer. Raises IllegalTransition when the table does not allow it."""
        old = self._status
        new = next_status(old, trigger)
        if self._observer is not None:
            self._observer.entering(self, old, new)
        if new.terminal:
            self._finalise()
        self._status = new
        self.error = error
        if self._observer is not None:
            self._observer.entered(self, old, new)
        return new

    def _finalise(self) -> None:
        self.final_last4 = self.last4 or self.final_last4
        self.final_brand = self.brand or self.final_brand
        if self._final_masked is None:
            self._final_masked = self.masked()
        self.current = None
        for f in self.fields.values():
            f.wipe()

    # --- what may be shown ----------------------------------------------------------------

    @property
    def brand(self) -> str:
        return cards.brand_of(self.fields[CARD].buffer.decode()) or ""

    @property
    def last4(self) -> str:
        f = self.fields[CARD]
        return f.buffer[-4:].decode() if f.valid else ""

    def masked(self) -> dict[str, str]:
        if self._final_masked is not None:
            return dict(self._final_masked)  # what was shown when the session ended
        out = {}
        for name, f in self.fields.items():
            dots = "•" * len(f.buffer)
            out[name] = (dots[:-4] + self.last4) if name == CARD and f.valid else dots
        return out

    def __repr__(self) -> str:
        return (f"PaymentSession(sid={self.sid!r}, call_id={self.call_id!r}, "
                f"status={self._status and self._status.value!r}, current={self.current!r}, "
                f"masked={self.masked()})")

    # --- input ----------------------------------------------------------------------------

    def key(self, digit: str, now: float) -> tuple[str, str]:
        """Apply one caller key; returns (what happened, error code or "")."""
        if self.status is not PaymentStatus.CAPTURING or self.current is None:
            return "ignored", ""
        f = self.fields[self.current]
        self._last_digit = now
        if digit == "*":
            f.wipe()
            return "cleared", ""
        if digit == "#":
            # "#" right after a field finished by itself belongs to nothing: ignore it.
            return self._finish(f, now) if f.buffer else ("ignored", "")
        if not digit.isdigit():
            return "ignored", ""
        f.buffer.append(ord(digit))
        if self._full(f):
            return self._finish(f, now)
        return "progress", ""

    def _full(self, f: _Field) -> bool:
        text = f.buffer.decode()
        if f.name == CARD:  # 13-digit Visa and other short numbers need "#"
            return len(text) >= MAX_LENGTH[CARD] or (
                len(text) >= 15 and len(text) in cards.lengths(cards.brand_of(text))
                and cards.luhn_valid(text))
        if f.name == CODE:
            return len(text) == cards.security_code_length(self.brand or None)
        return len(text) >= MAX_LENGTH[f.name]

    def _validate(self, f: _Field) -> str:
        text = f.buffer.decode()
        if f.name == CARD:
            brand = cards.brand_of(text)
            if not cards.luhn_valid(text) or len(text) not in cards.lengths(brand):
                return "invalid-card-number"
            if brand not in self.settings.accepted_brands:
                return "card-type-not-accepted"
        elif f.name == EXPIRY:
            if not cards.expiry_valid(text, self._today()):
                return "invalid-date"
        elif f.name == CODE:
            if len(text) != cards.security_code_length(self.brand or None):
                return "invalid-security-code"
        elif f.name == POSTAL and not 3 <= len(text) <= 10:
            return "invalid-postal-code"
        return ""

    def _finish(self, f: _Field, now: float) -> tuple[str, str]:
        error = self._validate(f)
        if error:
            return self._fail_field(f, error)
        f.valid = True
        self._advance(now)
        return "field-complete", ""

    def _fail_field(self, f: _Field, error: str) -> tuple[str, str]:
        f.wipe()
        f.attempts += 1
        if f.attempts >= self.settings.max_attempts:
            self.move(Trigger.ATTEMPTS_EXHAUSTED, error)
        return "error", error

    def _advance(self, now: float) -> None:
        self.current = next((n for n, f in self.fields.items() if not f.valid), None)
        self._field_started = now
        if self.current is None:
            self.move(Trigger.ALL_FIELDS_VALID)

    def recapture(self, name: str, now: float) -> None:
        """The agent asks for a field again (e.g. the caller misspoke)."""
        if name not in self.fields:
            raise SessionError(f"unknown field {name!r}")
        # First the move (which may be refused, e.g. masking cannot be ensured), then the wipe.
        self.move(Trigger.RECAPTURE)
        self.fields[name].wipe()
        self.fields[name].attempts = 0
        self.current = name
        self._field_started = self._last_digit = now

    def poll(self, now: float) -> tuple[str, str] | None:
        """Timeouts: (event, error) when one fires."""
        if self.status is not PaymentStatus.CAPTURING or self.current is None:
            return None
        f = self.fields[self.current]
        if f.buffer and now - self._last_digit >= self.settings.inter_digit_timeout:
            return self._fail_field(f, "timeout")
        if now - self._field_started >= self.settings.field_timeout:
            self._field_started = now
            return self._fail_field(f, "timeout")
        return None

    # --- out ------------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """The clear fields, for the gateway request only (the caller must not keep them)."""
        if self.status not in (PaymentStatus.READY, PaymentStatus.SUBMITTING):
            raise SessionError(f"not ready to submit (status {self.status.value})")
        return {name: f.buffer.decode() for name, f in self.fields.items()}
