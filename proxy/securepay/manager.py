"""Secure-pay sessions per call: caller digits in, masked events out, tokens from the gateway.

The media plane reports every key the caller presses (it masks them all regardless); only while
a session is capturing on that call do keys become card fields. When every field is valid the
session is submitted to the gateway; a gateway that is down or declines leaves the session
retryable by the agent without the caller keying again (the digits stay in the session's memory
until it ends, and only there).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from proxy.media.types import DigitEvent
from proxy.securepay.audit import AuditLog
from proxy.securepay.events import EventBus, PaymentEvent
from proxy.securepay.gateway_client import (
    GatewayDeclinedError,
    GatewayError,
    GatewayTimeoutError,
    GatewayTlsError,
    GatewayUnavailableError,
    TokenResult,
)
from proxy.securepay.session import CaptureSettings, PaymentSession, SessionError

log = structlog.get_logger("toneguard.securepay")


class Tokeniser(Protocol):
    async def tokenise(self, fields: dict[str, str], idempotency_key: str) -> TokenResult: ...


class PaymentError(LookupError):
    """Unknown call or payment, or an action the session's state forbids."""


@dataclass
class CallInfo:
    call_id: str
    agent_id: str = ""  # "" = unassigned
    recent: str = field(default="", repr=False)  # last keys outside a payment (trigger only)


class PaymentManager:
    def __init__(self, tokeniser: Tokeniser | None, *, settings: CaptureSettings | None = None,
                 audit: AuditLog | None = None, clock: Callable[[], float] = time.monotonic,
                 trigger_sequence: str = "") -> None:
        self._tokeniser = tokeniser
        self.settings = settings or CaptureSettings()
        self.audit = audit or AuditLog(None)
        self.bus = EventBus()
        self._clock = clock
        self.trigger_sequence = trigger_sequence  # caller keys that open a payment ("" = off)
        self.calls: dict[str, CallInfo] = {}
        self.sessions: dict[str, PaymentSession] = {}
        self._active: dict[str, str] = {}  # call id → sid capturing on it
        self._idempotency: dict[str, str] = {}  # Idempotency-Key → sid
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {"started": 0, "complete": 0, "failed": 0, "cancelled": 0,
                         "gateway_errors": 0}

    # --- calls -----------------------------------------------------------------------------

    def call_started(self, call_id: str, metadata: str = "") -> None:
        """A call appeared. ``metadata`` from ng may assign it: ``agent=<id>`` (``;``/``&``
        separated key=value pairs, as SIP proxies usually pass it)."""
        info = self.calls.setdefault(call_id, CallInfo(call_id))
        for item in metadata.replace("&", ";").split(";"):
            key, _, value = item.partition("=")
            if key.strip() == "agent" and value.strip():
                info.agent_id = value.strip()
                self.audit.record("call.assign", actor="ng", call_id=call_id,
                                  agent_id=info.agent_id)

    def call_ended(self, call_id: str) -> None:
        sid = self._active.pop(call_id, None)
        if sid is not None:
            self._end(self.sessions[sid], "cancelled", "call-ended")
        self.calls.pop(call_id, None)

    def assign(self, call_id: str, agent_id: str, actor: str) -> CallInfo:
        info = self.calls.get(call_id)
        if info is None:
            raise PaymentError("unknown call")
        info.agent_id = agent_id
        self.audit.record("call.assign", actor=actor, call_id=call_id, agent_id=agent_id)
        return info

    # --- sessions --------------------------------------------------------------------------

    def start(self, call_id: str, agent_id: str, *, require_postal_code: bool | None = None,
              accepted_brands: tuple[str, ...] | None = None,
              idempotency_key: str | None = None) -> PaymentSession:
        if idempotency_key and (sid := self._idempotency.get(idempotency_key)) is not None:
            return self.sessions[sid]  # a retried request gets the payment it created
        if call_id not in self.calls:
            raise PaymentError("unknown call")
        if call_id in self._active:
            raise PaymentError("a payment is already in progress on this call")
        settings = self.settings
        if require_postal_code is not None or accepted_brands:
            settings = CaptureSettings(
                settings.inter_digit_timeout, settings.field_timeout, settings.max_attempts,
                accepted_brands or settings.accepted_brands,
                settings.require_postal_code if require_postal_code is None
                else require_postal_code)
        sid = "PA" + secrets.token_hex(16)
        session = PaymentSession(sid, call_id, agent_id, settings, self._clock())
        self.sessions[sid] = session
        self._active[call_id] = sid
        if idempotency_key:
            self._idempotency[idempotency_key] = sid
        self.counters["started"] += 1
        self.audit.record("payment.start", actor=agent_id, call_id=call_id, session_id=sid)
        self._publish(session, "started")
        return session

    def get(self, call_id: str, sid: str) -> PaymentSession:
        session = self.sessions.get(sid)
        if session is None or session.call_id != call_id:
            raise PaymentError("unknown payment")
        return session

    def on_digit(self, call_id: str, tag: str, event: DigitEvent) -> None:
        """A key the media plane found on the caller's stream (already masked for the agent)."""
        sid = self._active.get(call_id)
        if sid is None:
            self._watch_trigger(call_id, event.digit)
            return
        session = self.sessions[sid]
        field = session.current or ""
        what, error = session.key(event.digit, self._clock())
        if what == "ignored":
            return
        self._changed(session, what, error, field)

    def _changed(self, session: PaymentSession, what: str, error: str, field: str) -> None:
        if what in ("field-complete", "error"):
            self.audit.record("payment.field", call_id=session.call_id, session_id=session.sid,
                              field=field, outcome=error or "valid")
        self._publish(session, what, error=error, field=field)
        self._after_change(session)

    def _watch_trigger(self, call_id: str, digit: str) -> None:
        """Outside a payment, only the last few keys are kept, to spot the trigger sequence."""
        trigger = self.trigger_sequence
        info = self.calls.get(call_id)
        if not trigger or info is None:
            return
        info.recent = (info.recent + digit)[-len(trigger):]
        if info.recent == trigger:
            info.recent = ""
            self.start(call_id, info.agent_id or "caller-trigger")

    def recapture(self, call_id: str, sid: str, field: str, actor: str) -> PaymentSession:
        session = self.get(call_id, sid)
        try:
            session.recapture(field, self._clock())
        except SessionError as exc:
            raise PaymentError(str(exc)) from None
        self._active[call_id] = sid
        self.audit.record("payment.recapture", actor=actor, call_id=call_id, session_id=sid,
                          field=field)
        self._publish(session, "progress", field=field)
        return session

    def complete(self, call_id: str, sid: str, actor: str) -> PaymentSession:
        """Submit (or resubmit after a gateway failure)."""
        session = self.get(call_id, sid)
        if session.status not in ("ready", "failed-submit"):
            raise PaymentError(f"cannot complete a payment in status {session.status}")
        session.status = "ready"
        self.audit.record("payment.complete", actor=actor, call_id=call_id, session_id=sid)
        self._submit(session)
        return session

    def cancel(self, call_id: str, sid: str, actor: str) -> PaymentSession:
        session = self.get(call_id, sid)
        if session.status in ("complete", "failed", "cancelled"):
            return session
        self.audit.record("payment.cancel", actor=actor, call_id=call_id, session_id=sid)
        self._end(session, "cancelled")
        return session

    def poll(self) -> None:
        """Apply timeouts (called every second by the server)."""
        now = self._clock()
        for sid in list(self._active.values()):
            session = self.sessions[sid]
            field = session.current or ""
            fired = session.poll(now)
            if fired is not None:
                self._changed(session, fired[0], fired[1], field)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in self.sessions.values():
            if session.status not in ("complete", "failed", "cancelled"):
                session.end("cancelled", "shutdown")
        self._active.clear()

    # --- internals -------------------------------------------------------------------------

    def _after_change(self, session: PaymentSession) -> None:
        if session.status == "failed":
            self._end(session, "failed", session.error)
        elif session.status == "ready":
            self._submit(session)

    def _submit(self, session: PaymentSession) -> None:
        if self._tokeniser is None:
            session.status = "failed-submit"
            self._publish(session, "error", error="gateway-not-configured")
            return
        session.status = "submitting"
        self._publish(session, "submitting")
        task = asyncio.get_running_loop().create_task(self._tokenise(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tokenise(self, session: PaymentSession) -> None:
        assert self._tokeniser is not None
        fields = session.values()
        try:
            result = await self._tokeniser.tokenise(fields, session.sid)
        except GatewayDeclinedError as exc:
            self._end(session, "failed", f"declined:{exc.code}")
            return
        except (GatewayUnavailableError, GatewayTimeoutError, GatewayTlsError,
                GatewayError) as exc:
            self.counters["gateway_errors"] += 1
            session.status = "failed-submit"  # retryable: the caller need not key again
            error = {GatewayUnavailableError: "gateway-unavailable",
                     GatewayTimeoutError: "gateway-timeout",
                     GatewayTlsError: "gateway-tls"}.get(type(exc), "gateway-error")
            self.audit.record("payment.gateway_error", call_id=session.call_id,
                              session_id=session.sid, outcome=error)
            self._publish(session, "error", error=error)
            return
        finally:
            for key in fields:
                fields[key] = ""
        session.token = result.token
        self._end(session, "complete")

    def _end(self, session: PaymentSession, status: str, error: str = "") -> None:
        session.end(status, error)
        if self._active.get(session.call_id) == session.sid:
            del self._active[session.call_id]
        self.counters[status] = self.counters.get(status, 0) + 1
        self.audit.record("payment.end", call_id=session.call_id, session_id=session.sid,
                          outcome=status, error=error, token=session.token,
                          last4=session.final_last4)
        self._publish(session, "result" if status == "complete" else "ended", error=error)

    def _publish(self, session: PaymentSession, kind: str, *, error: str = "",
                 field: str = "") -> None:
        # Addressed to the agent the call is assigned to NOW, as the REST routes check it: a
        # call moved to another agent (or a payment a supervisor started) must not keep
        # streaming to whoever started the payment.
        info = self.calls.get(session.call_id)
        recipient = info.agent_id if info is not None and info.agent_id else session.agent_id
        event = PaymentEvent(
            type=kind, call_id=session.call_id, sid=session.sid, agent_id=recipient,
            status=session.status, field=field or (session.current or ""),
            masked=session.masked(), brand=session.brand or session.final_brand, error=error,
            token=session.token,
            last4=session.last4 or session.final_last4)
        self.bus.publish(event)
        log.info("payment event", kind=kind, call_id=session.call_id, session_id=session.sid,
                 status=session.status, error=error)
