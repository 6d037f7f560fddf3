"""Secure-pay sessions per call: caller digits in, masked events out, tokens from the gateway.

The media plane reports every key the caller presses (it masks them all regardless); only while
a session is capturing on that call do keys become card fields. When every field is valid the
session is submitted to the gateway; a gateway that is down or declines leaves the session
retryable by the agent without the caller keying again (the digits stay in the session's memory
until it ends, and only there).

Fail closed: while any payment on a call is capturing, the call's customer audio must be masked
whatever ``unblock DTMF``, policy or re-offers say. ``on_capture(call_id, True)`` is called
before a call's first session starts capturing, and a start or re-capture whose hook raises does
not happen (no capture without masking); ``on_capture(call_id, False)`` once no session of the
call captures. Both come from the sessions' one status-change function, so no path skips them.
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
from proxy.securepay.redaction import contains_pan, redact_text
from proxy.securepay.session import CaptureSettings, PaymentSession
from proxy.securepay.states import PaymentStatus, SessionError, Trigger

log = structlog.get_logger("toneguard.securepay")


class Tokeniser(Protocol):
    async def tokenise(self, fields: dict[str, str], idempotency_key: str) -> TokenResult: ...


class PaymentError(LookupError):
    """Unknown call or payment, or an action the session's state forbids."""


class PaymentConflict(PaymentError):
    """An action the payment's status (or the call's other payment) forbids."""


class CaptureRefused(PaymentError):
    """The capture hook failed, so masking is not known to be on: the payment does not
    capture (its start or re-capture did not happen)."""


CaptureHook = Callable[[str, bool], None]


class _CaptureTracker:
    """Which sessions of each call are capturing; tells ``hook`` when a call starts and stops.

    A session counts as capturing from just before its hook call (so a hook that asks
    ``capturing(call_id)`` sees the capture it is switching masking on for) until just before
    the hook is told it stopped."""

    def __init__(self, hook: CaptureHook | None) -> None:
        self._hook = hook
        self._sids: dict[str, set[str]] = {}  # call id → sids in a capturing status

    def capturing(self, call_id: str) -> bool:
        return bool(self._sids.get(call_id))

    def entering(self, session: PaymentSession, old: PaymentStatus | None,
                 new: PaymentStatus) -> None:
        if not new.capturing or (old is not None and old.capturing):
            return
        sids = self._sids.setdefault(session.call_id, set())
        first = not sids
        sids.add(session.sid)
        if not first or self._hook is None:
            return
        try:
            self._hook(session.call_id, True)
        except Exception as exc:
            sids.discard(session.sid)
            if not sids:
                del self._sids[session.call_id]
            log.error("capture hook failed; payment not capturing", call_id=session.call_id,
                      session_id=session.sid, error_type=type(exc).__name__)
            raise CaptureRefused("masking could not be ensured for this call") from exc

    def entered(self, session: PaymentSession, old: PaymentStatus | None,
                new: PaymentStatus) -> None:
        if old is None or not old.capturing or new.capturing:
            return
        sids = self._sids.get(session.call_id)
        if sids is None or session.sid not in sids:
            return
        sids.discard(session.sid)
        if sids:
            return
        del self._sids[session.call_id]
        if self._hook is None:
            return
        try:
            self._hook(session.call_id, False)
        except Exception as exc:
            # Failing to switch masking *off* is safe (it stays on); the session must still end.
            log.error("capture hook failed to release masking", call_id=session.call_id,
                      session_id=session.sid, error_type=type(exc).__name__)


@dataclass
class CallInfo:
    call_id: str
    agent_id: str = ""  # "" = unassigned
    recent: str = field(default="", repr=False)  # last keys outside a payment (trigger only)
    caller: str = ""  # who the agent is talking to: ng metadata ``caller=``, else an address
    started_at: float = 0.0  # wall clock (Unix seconds) when the call appeared
    last_sid: str = ""  # the call's latest payment, ended or not (the agent's receipt)


class PaymentManager:
    def __init__(self, tokeniser: Tokeniser | None, *, settings: CaptureSettings | None = None,
                 audit: AuditLog | None = None, clock: Callable[[], float] = time.monotonic,
                 trigger_sequence: str = "", on_capture: CaptureHook | None = None) -> None:
        self._tokeniser = tokeniser
        self.settings = settings or CaptureSettings()
        self.audit = audit or AuditLog(None)
        self.bus = EventBus()
        self._clock = clock
        self.trigger_sequence = trigger_sequence  # caller keys that open a payment ("" = off)
        self.calls: dict[str, CallInfo] = {}
        self.sessions: dict[str, PaymentSession] = {}
        self._active: dict[str, str] = {}  # call id → its payment not yet ended (one at most)
        self._idempotency: dict[str, str] = {}  # Idempotency-Key → sid
        self._tasks: set[asyncio.Task[None]] = set()
        self._capture = _CaptureTracker(on_capture)
        # Told the call id whenever an assignment or a payment's status/progress changes
        # (proxy.store writes the metadata later; it never reads a digit).
        self.on_state: Callable[[str], None] | None = None
        # One counter per outcome, named by its status value (metric names depend on them).
        self.counters = {"started": 0, **{s.value: 0 for s in PaymentStatus if s.terminal},
                         "gateway_errors": 0}

    # --- calls -----------------------------------------------------------------------------

    def call_started(self, call_id: str, metadata: str = "", caller: str = "") -> None:
        """A call appeared. ``metadata`` from ng may assign it: ``agent=<id>`` (``;``/``&``
        separated key=value pairs, as SIP proxies usually pass it), and name the caller
        shown to the agent: ``caller=<number>`` (else ``caller``, e.g. the SIP source)."""
        info = self.calls.setdefault(call_id, CallInfo(call_id, started_at=time.time()))
        # Redacted like the audit log: a SIP From user is the caller's to choose, and one that
        # looks like a card number must not reach the agent as one.
        info.caller = info.caller or redact_text(caller[:64])
        fields = _metadata(metadata)
        if fields.get("caller"):
            info.caller = redact_text(fields["caller"][:64])
        if fields.get("agent"):
            info.agent_id = fields["agent"]
            self.audit.record("call.assign", actor="ng", call_id=call_id, agent_id=info.agent_id)
            self._state_changed(call_id)

    def call_renegotiated(self, call_id: str, metadata: str | None, leg_moved: bool) -> None:
        """The call was negotiated again (a re-INVITE, another branch answering): perhaps a
        transfer. An open payment never stays with an agent who may have left the call:

        - the message names an agent (``metadata`` ``agent=<id>``) other than the one assigned:
          the call, and with it its open payment (fields kept, still capturing), moves to that
          agent (a ``transferred`` event; the API now lets that agent, not the first, act);
        - a leg's media moved and the message names no agent: nobody can say who hears the
          customer now, so the open payment is cancelled (``agent-changed``; digits wiped);
        - the same agent named, or nothing moved (a hold, a codec change): nothing changes.
        """
        info = self.calls.get(call_id)
        if info is None:
            return
        named = _agent(metadata or "")
        sid = self._active.get(call_id)
        if named and named != info.agent_id:
            info.agent_id = named
            self.audit.record("call.assign", actor="ng-transfer", call_id=call_id,
                              agent_id=named)
            self._state_changed(call_id)
            if sid is not None:
                self._publish(self.sessions[sid], "transferred")
            return
        if leg_moved and not named and sid is not None:
            self.audit.record("payment.cancel", actor="ng-transfer", call_id=call_id,
                              session_id=sid)
            self._end(self.sessions[sid], Trigger.CANCEL, "agent-changed")

    def call_ended(self, call_id: str) -> None:
        sid = self._active.get(call_id)
        if sid is not None:
            self._end(self.sessions[sid], Trigger.CANCEL, "call-ended")
        self.calls.pop(call_id, None)

    def capturing(self, call_id: str) -> bool:
        """True while a payment on the call is in a capturing status (``CAPTURING_STATUSES``:
        only ``capturing``; ``ready``, ``submitting`` and ``failed-submit`` take no keys)."""
        return self._capture.capturing(call_id)

    def owner(self, call_id: str, fallback: str = "") -> str:
        """The agent the call is assigned to now (``fallback`` once the call is gone)."""
        info = self.calls.get(call_id)
        return info.agent_id if info is not None and info.agent_id else fallback

    def assign(self, call_id: str, agent_id: str, actor: str) -> CallInfo:
        info = self.calls.get(call_id)
        if info is None:
            raise PaymentError("unknown call")
        info.agent_id = agent_id
        self.audit.record("call.assign", actor=actor, call_id=call_id, agent_id=agent_id)
        self._state_changed(call_id)
        return info

    # --- sessions --------------------------------------------------------------------------

    def start(self, call_id: str, agent_id: str, *, require_postal_code: bool | None = None,
              accepted_brands: tuple[str, ...] | None = None,
              idempotency_key: str | None = None, amount: str = "",
              currency: str = "") -> PaymentSession:
        if idempotency_key and (sid := self._idempotency.get(idempotency_key)) is not None:
            return self.sessions[sid]  # a retried request gets the payment it created
        if call_id not in self.calls:
            raise PaymentError("unknown call")
        if call_id in self._active:
            raise PaymentConflict("a payment is already in progress on this call")
        settings = self.settings
        if require_postal_code is not None or accepted_brands:
            settings = CaptureSettings(
                settings.inter_digit_timeout, settings.field_timeout, settings.max_attempts,
                accepted_brands or settings.accepted_brands,
                settings.require_postal_code if require_postal_code is None
                else require_postal_code)
        sid = _session_id()
        # Raises CaptureRefused when masking cannot be switched on: then nothing is recorded.
        session = PaymentSession(sid, call_id, agent_id, settings, self._clock(),
                                 observer=self._capture)
        session.amount, session.currency = amount, currency
        self.sessions[sid] = session
        self._active[call_id] = sid
        self.calls[call_id].last_sid = sid
        if idempotency_key:
            self._idempotency[idempotency_key] = sid
        self.counters["started"] += 1
        self.audit.record("payment.start", actor=agent_id, call_id=call_id, session_id=sid,
                          **({"amount": amount, "currency": currency} if amount else {}))
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
            try:
                self.start(call_id, info.agent_id or "caller-trigger")
            except PaymentError as exc:  # called from the media plane: report, don't raise
                log.warning("caller trigger did not open a payment", call_id=call_id,
                            reason=type(exc).__name__)

    def recapture(self, call_id: str, sid: str, field: str, actor: str) -> PaymentSession:
        session = self.get(call_id, sid)
        try:
            session.recapture(field, self._clock())
        except SessionError as exc:
            raise PaymentConflict(str(exc)) from exc
        self.audit.record("payment.recapture", actor=actor, call_id=call_id, session_id=sid,
                          field=field)
        self._publish(session, "progress", field=field)
        return session

    def complete(self, call_id: str, sid: str, actor: str) -> PaymentSession:
        """Submit (or resubmit after a gateway failure)."""
        session = self.get(call_id, sid)
        if session.status not in (PaymentStatus.READY, PaymentStatus.FAILED_SUBMIT):
            raise PaymentConflict(f"cannot complete a payment in status {session.status.value}")
        self.audit.record("payment.complete", actor=actor, call_id=call_id, session_id=sid)
        self._submit(session)
        return session

    def cancel(self, call_id: str, sid: str, actor: str) -> PaymentSession:
        session = self.get(call_id, sid)
        if session.status.terminal:
            return session
        self.audit.record("payment.cancel", actor=actor, call_id=call_id, session_id=sid)
        self._end(session, Trigger.CANCEL)
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
            if not session.status.terminal:
                session.move(Trigger.CANCEL, "shutdown")
        self._active.clear()

    def resume(self, call_id: str, sid: str, agent_id: str, fields: list[str]) -> PaymentSession:
        """A payment that was open when this node stopped (restored from the shared store):
        the same sid capturing again, nothing keyed before kept (digits are never stored), so
        the caller keys again from the first field whose digits are gone — the card number.
        Masking is on before it captures (the capture hook, as for any start)."""
        if call_id not in self.calls:
            raise PaymentError("unknown call")
        settings = self.settings
        if ("postal-code" in fields) != settings.require_postal_code:
            settings = CaptureSettings(settings.inter_digit_timeout, settings.field_timeout,
                                       settings.max_attempts, settings.accepted_brands,
                                       "postal-code" in fields)
        session = PaymentSession(sid, call_id, agent_id, settings, self._clock(),
                                 observer=self._capture)
        session.error = "node-restarted"  # what the agent is shown until the next change
        self.sessions[sid] = session
        self._active[call_id] = sid
        self.audit.record("payment.resume", actor="restart", call_id=call_id, session_id=sid)
        self._publish(session, "progress", error="node-restarted")
        return session

    def _state_changed(self, call_id: str) -> None:
        if self.on_state is not None:
            self.on_state(call_id)

    # --- internals -------------------------------------------------------------------------

    def _after_change(self, session: PaymentSession) -> None:
        """A key or a timeout moved the session: it may have failed or become ready."""
        if session.status is PaymentStatus.FAILED:
            self._ended(session)
        elif session.status is PaymentStatus.READY:
            self._submit(session)

    def _submit(self, session: PaymentSession) -> None:
        if self._tokeniser is None:
            session.move(Trigger.NO_GATEWAY, "gateway-not-configured")
            self._publish(session, "error", error="gateway-not-configured")
            return
        session.move(Trigger.SUBMIT)
        self._publish(session, PaymentStatus.SUBMITTING.value)  # event type = the status
        task = asyncio.get_running_loop().create_task(self._tokenise(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tokenise(self, session: PaymentSession) -> None:
        assert self._tokeniser is not None
        if session.status is not PaymentStatus.SUBMITTING:
            return  # ended (cancelled, call gone) before the task ran: nothing was sent
        fields = session.values()
        try:
            result = await self._tokeniser.tokenise(fields, session.sid)
        except GatewayDeclinedError as exc:
            if not self._late(session, "declined"):
                self._end(session, Trigger.DECLINED, f"declined:{exc.code}")
            return
        except (GatewayUnavailableError, GatewayTimeoutError, GatewayTlsError,
                GatewayError) as exc:
            self.counters["gateway_errors"] += 1
            error = {GatewayUnavailableError: "gateway-unavailable",
                     GatewayTimeoutError: "gateway-timeout",
                     GatewayTlsError: "gateway-tls"}.get(type(exc), "gateway-error")
            self.audit.record("payment.gateway_error", call_id=session.call_id,
                              session_id=session.sid, outcome=error)
            if not self._late(session, error):
                # Retryable: the caller need not key again.
                session.move(Trigger.GATEWAY_ERROR, error)
                self._publish(session, "error", error=error)
            return
        finally:
            for key in fields:
                fields[key] = ""
        if self._late(session, "tokenised"):
            return
        session.token = result.token
        self._end(session, Trigger.TOKENISED)

    def _late(self, session: PaymentSession, outcome: str) -> bool:
        """The gateway answered after the payment ended (cancelled, call gone): the answer
        changes nothing, but is audited (a token may exist for a cancelled payment)."""
        if session.status is PaymentStatus.SUBMITTING:
            return False
        self.audit.record("payment.late_gateway_reply", call_id=session.call_id,
                          session_id=session.sid, outcome=outcome)
        return True

    def _end(self, session: PaymentSession, trigger: Trigger, error: str = "") -> None:
        session.move(trigger, error)
        self._ended(session)

    def _ended(self, session: PaymentSession) -> None:
        """Bookkeeping once a session reached a terminal status."""
        if self._active.get(session.call_id) == session.sid:
            del self._active[session.call_id]
        status = session.status
        self.counters[status.value] = self.counters.get(status.value, 0) + 1
        self.audit.record("payment.end", call_id=session.call_id, session_id=session.sid,
                          outcome=status.value, error=session.error, token=session.token,
                          last4=session.final_last4)
        self._publish(session, "result" if status is PaymentStatus.COMPLETE else "ended",
                      error=session.error)

    def _publish(self, session: PaymentSession, kind: str, *, error: str = "",
                 field: str = "") -> None:
        event = PaymentEvent(
            type=kind, call_id=session.call_id, sid=session.sid,
            agent_id=self.owner(session.call_id, session.agent_id),
            status=session.status, field=field or (session.current or ""),
            masked=session.masked(), brand=session.brand or session.final_brand, error=error,
            token=session.token,
            last4=session.last4 or session.final_last4)
        self.bus.publish(event)
        self._state_changed(session.call_id)
        log.info("payment event", kind=kind, call_id=session.call_id, session_id=session.sid,
                 status=session.status.value, error=error)


def _metadata(metadata: str) -> dict[str, str]:
    """ng ``metadata`` as SIP proxies pass it: ``;``/``&`` separated key=value pairs (the last
    of a key wins; blank values are left out)."""
    fields: dict[str, str] = {}
    for item in metadata.replace("&", ";").split(";"):
        key, _, value = item.partition("=")
        if key.strip() and value.strip():
            fields[key.strip()] = value.strip()
    return fields


def _agent(metadata: str) -> str:
    """The ``agent=<id>`` of ng ``metadata``, or ""."""
    return _metadata(metadata).get("agent", "")


def _session_id() -> str:
    """A payment id (Twilio's ``PA`` + 32 hex digits) that never looks like a card number: about
    one random id in 500 holds a Luhn-valid run of 13+ decimal digits, which every log and the
    audit trail would then redact."""
    while contains_pan(sid := "PA" + secrets.token_hex(16)):
        pass
    return sid
