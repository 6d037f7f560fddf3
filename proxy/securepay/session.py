"""One secure-pay capture: the caller's keys become card fields, validated as they come.

The digits exist in clear only in this object's bytearrays, which are overwritten with zeros
when a field is cleared and when the session ends. Everything it reports — events, repr,
errors — is masked: the count of digits, the brand, the Luhn verdict, and the last four digits
only once a complete number is valid.

Keys: digits fill the current field; ``#`` finishes it; ``*`` clears it. A field also finishes
by itself when it can hold no more: the card number when it reaches a length valid for its brand
and passes Luhn, the expiry at 4 digits, the security code at its brand's length.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.securepay import cards

CARD, EXPIRY, CODE, POSTAL = ("payment-card-number", "expiration-date", "security-code",
                              "postal-code")
MAX_LENGTH = {CARD: 19, EXPIRY: 4, CODE: 4, POSTAL: 10}


class SessionError(ValueError):
    """A request the session's state does not allow (message never holds digits)."""


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


class PaymentSession:
    """States: capturing → ready (all fields valid) → submitting → complete | failed;
    cancelled at any point. ``on_change`` is called with (kind, field, error)."""

    def __init__(self, sid: str, call_id: str, agent_id: str, settings: CaptureSettings,
                 now: float, today: Callable[[], datetime.date] = datetime.date.today) -> None:
        self.sid, self.call_id, self.agent_id = sid, call_id, agent_id
        self.settings = settings
        names = [CARD, EXPIRY, CODE] + ([POSTAL] if settings.require_postal_code else [])
        self.fields = {n: _Field(n) for n in names}
        self.current: str | None = CARD
        self.status = "capturing"
        self.error = ""
        self.token = ""
        self.final_last4 = ""  # kept after the digits are wiped, for the agent's receipt
        self.final_brand = ""
        self._final_masked: dict[str, str] | None = None
        self._today = today
        self._last_digit = now
        self._field_started = now

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
                f"status={self.status!r}, current={self.current!r}, masked={self.masked()})")

    # --- input ----------------------------------------------------------------------------

    def key(self, digit: str, now: float) -> tuple[str, str]:
        """Apply one caller key; returns (what happened, error code or "")."""
        if self.status != "capturing" or self.current is None:
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
            self.end("failed", error)
        return "error", error

    def _advance(self, now: float) -> None:
        self.current = next((n for n, f in self.fields.items() if not f.valid), None)
        self._field_started = now
        if self.current is None:
            self.status = "ready"

    def recapture(self, name: str, now: float) -> None:
        """The agent asks for a field again (e.g. the caller misspoke)."""
        if name not in self.fields:
            raise SessionError(f"unknown field {name!r}")
        if self.status not in ("capturing", "ready", "failed-submit"):
            raise SessionError(f"cannot re-capture in status {self.status}")
        self.fields[name].wipe()
        self.fields[name].attempts = 0
        self._final_masked = None
        self.current = name
        self.status = "capturing"
        self._field_started = self._last_digit = now

    def poll(self, now: float) -> tuple[str, str] | None:
        """Timeouts: (event, error) when one fires."""
        if self.status != "capturing" or self.current is None:
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
        if self.status not in ("ready", "submitting"):
            raise SessionError(f"not ready to submit (status {self.status})")
        return {name: f.buffer.decode() for name, f in self.fields.items()}

    def end(self, status: str, error: str = "") -> None:
        """Finish the session and overwrite every digit buffer."""
        self.final_last4 = self.last4 or self.final_last4
        self.final_brand = self.brand or self.final_brand
        if self._final_masked is None:
            self._final_masked = self.masked()
        self.status, self.error = status, error
        self.current = None
        for f in self.fields.values():
            f.wipe()
