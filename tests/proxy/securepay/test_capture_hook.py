"""Fail-closed masking hook: ``on_capture`` is told when a call starts and stops capturing card
digits; a hook that fails means no capture. The hook here is a recording list (the call
registry's wiring is tested with the registry)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from proxy.media.types import DigitEvent
from proxy.securepay.gateway_client import GatewayUnavailableError, TokenResult
from proxy.securepay.manager import CaptureRefused, PaymentError, PaymentManager
from proxy.securepay.session import CARD, EXPIRY, CaptureSettings
from proxy.securepay.states import PaymentStatus

PAN = "4111111111111111"
CARD_KEYS = PAN + "1230" + "123"  # card, expiry (far future), security code


class Hook:
    """Records (call id, on, what ``capturing()`` said during the call); fails on demand."""

    def __init__(self) -> None:
        self.manager: PaymentManager | None = None
        self.calls: list[tuple[str, bool, bool]] = []
        self.fail_on: set[bool] = set()

    def __call__(self, call_id: str, on: bool) -> None:
        assert self.manager is not None
        self.calls.append((call_id, on, self.manager.capturing(call_id)))
        if on in self.fail_on:
            raise RuntimeError(f"registry refused {PAN}")  # a careless message: must not leak


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _manager(hook: Hook, tokeniser: object = None, **settings: Any) -> PaymentManager:
    manager = PaymentManager(tokeniser, on_capture=hook,  # type: ignore[arg-type]
                             settings=CaptureSettings(**settings) if settings else None,
                             clock=Clock(), trigger_sequence="*9")
    hook.manager = manager
    for call_id in ("c1", "c2"):
        manager.call_started(call_id, "agent=agent-1")
    return manager


def _key(manager: PaymentManager, call_id: str, keys: str) -> None:
    for k in keys:
        manager.on_digit(call_id, "caller", DigitEvent("s1", k, "inband", 0.0, 60.0))


def test_capturing_means_the_capturing_status_only() -> None:
    hook = Hook()
    m = _manager(hook)
    assert not m.capturing("c1")
    p = m.start("c1", "agent-1")
    assert m.capturing("c1") and not m.capturing("c2")
    _key(m, "c1", CARD_KEYS)  # → ready → (no gateway) failed-submit: digits held, none taken
    assert p.status is PaymentStatus.FAILED_SUBMIT and not m.capturing("c1")
    m.recapture("c1", p.sid, EXPIRY, "agent-1")
    assert p.status is PaymentStatus.CAPTURING and m.capturing("c1")


def test_start_ready_recapture_cancel_switch_masking_on_and_off_in_order() -> None:
    hook = Hook()
    m = _manager(hook)
    p = m.start("c1", "agent-1")
    # On before the session captures, and capturing() already says so to the hook.
    assert hook.calls == [("c1", True, True)]
    _key(m, "c1", CARD_KEYS)
    assert hook.calls[-1] == ("c1", False, False)  # ready: nothing more is captured
    m.recapture("c1", p.sid, EXPIRY, "agent-1")
    m.recapture("c1", p.sid, CARD, "agent-1")  # capturing → capturing: already on
    m.cancel("c1", p.sid, "agent-1")
    assert hook.calls == [("c1", True, True), ("c1", False, False), ("c1", True, True),
                          ("c1", False, False)]
    assert p.status is PaymentStatus.CANCELLED and not m.capturing("c1")


def test_each_call_is_told_apart() -> None:
    hook = Hook()
    m = _manager(hook)
    p1, p2 = m.start("c1", "agent-1"), m.start("c2", "agent-1")
    m.cancel("c1", p1.sid, "agent-1")
    assert m.capturing("c2") and not m.capturing("c1")
    m.call_ended("c2")
    assert p2.status is PaymentStatus.CANCELLED and p2.error == "call-ended"
    assert hook.calls == [("c1", True, True), ("c2", True, True), ("c1", False, False),
                          ("c2", False, False)]


@pytest.mark.parametrize("how", ["cancel", "call-ended", "timeout", "invalid-entries"])
def test_every_way_a_capture_ends_releases_masking(how: str) -> None:
    hook = Hook()
    m = _manager(hook, inter_digit_timeout=5.0, field_timeout=30.0, max_attempts=2)
    p = m.start("c1", "agent-1")
    if how == "cancel":
        m.cancel("c1", p.sid, "agent-1")
    elif how == "call-ended":
        m.call_ended("c1")
    elif how == "timeout":
        clock = m._clock
        assert isinstance(clock, Clock)
        for _ in range(2):
            clock.now += 31.0
            m.poll()
    else:
        _key(m, "c1", "1234#1234#")
    assert p.status.terminal and hook.calls == [("c1", True, True), ("c1", False, False)]
    assert not m.capturing("c1") and all(not f.buffer for f in p.fields.values())


async def test_shutdown_releases_masking() -> None:
    hook = Hook()
    m = _manager(hook)
    p = m.start("c1", "agent-1")
    await m.close()
    assert p.status is PaymentStatus.CANCELLED and hook.calls[-1] == ("c1", False, False)


def test_a_failing_hook_means_no_payment_and_no_capture() -> None:
    hook = Hook()
    hook.fail_on = {True}
    m = _manager(hook)
    with capture_logs() as logs, pytest.raises(CaptureRefused) as refused:
        m.start("c1", "agent-1", idempotency_key="k1")
    assert isinstance(refused.value, PaymentError)  # the API and ng map it to an error reply
    assert PAN not in str(refused.value) and PAN not in repr(logs)
    assert any(e["event"].startswith("capture hook failed") for e in logs)
    assert m.sessions == {} and not m.capturing("c1") and m.counters["started"] == 0
    assert m.bus.history == [] and all(r["action"] != "payment.start" for r in m.audit.records)
    _key(m, "c1", CARD_KEYS)  # the caller keys anyway: nothing holds the digits
    assert m.sessions == {}
    hook.fail_on = set()
    p = m.start("c1", "agent-1", idempotency_key="k1")  # a retry starts cleanly
    assert p.status is PaymentStatus.CAPTURING and m.capturing("c1")
    assert hook.calls == [("c1", True, True), ("c1", True, True)]


def test_a_failing_hook_refuses_a_recapture_and_keeps_the_digits() -> None:
    hook = Hook()
    m = _manager(hook)
    p = m.start("c1", "agent-1")
    _key(m, "c1", CARD_KEYS)
    assert p.status is PaymentStatus.FAILED_SUBMIT
    hook.fail_on = {True}
    with pytest.raises(CaptureRefused):
        m.recapture("c1", p.sid, EXPIRY, "agent-1")
    assert p.status is PaymentStatus.FAILED_SUBMIT and not m.capturing("c1")
    assert p.fields[EXPIRY].buffer == bytearray(b"1230")  # not wiped: the retry can still submit


def test_a_hook_failing_to_release_masking_still_ends_the_payment() -> None:
    hook = Hook()
    hook.fail_on = {False}
    m = _manager(hook)
    p = m.start("c1", "agent-1")
    _key(m, "c1", PAN[:6])
    with capture_logs() as logs:
        m.cancel("c1", p.sid, "agent-1")
    assert p.status is PaymentStatus.CANCELLED and not m.capturing("c1")
    assert all(not f.buffer for f in p.fields.values())
    assert any(e["event"] == "capture hook failed to release masking" for e in logs)
    assert PAN not in repr(logs)


def test_the_caller_trigger_with_a_failing_hook_opens_nothing_and_raises_nothing() -> None:
    hook = Hook()
    hook.fail_on = {True}
    m = _manager(hook)
    _key(m, "c1", "*9")  # from the media plane's callback: must not raise
    assert m.sessions == {} and hook.calls == [("c1", True, True)]
    hook.fail_on = set()
    _key(m, "c1", "*9")
    assert [s.status for s in m.sessions.values()] == [PaymentStatus.CAPTURING]


class GatedTokeniser:
    """Stands in for the gateway at the Tokeniser seam so the test decides *when* it answers
    (the real gateway is exercised by the secure-pay flow tests)."""

    def __init__(self, fail: bool = False) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail

    async def tokenise(self, fields: dict[str, str], idempotency_key: str) -> TokenResult:
        self.called.set()
        await self.release.wait()
        if self.fail:
            raise GatewayUnavailableError("gateway down")
        return TokenResult("tok_1", "visa", "1111", "1230")


@pytest.mark.parametrize("fail", [False, True])
async def test_a_gateway_reply_after_cancel_changes_nothing(fail: bool) -> None:
    hook = Hook()
    gateway = GatedTokeniser(fail)
    m = _manager(hook, gateway)
    p = m.start("c1", "agent-1")
    _key(m, "c1", CARD_KEYS)
    assert p.status is PaymentStatus.SUBMITTING
    async with asyncio.timeout(5):
        await gateway.called.wait()
    m.cancel("c1", p.sid, "agent-1")
    gateway.release.set()
    tasks = list(m._tasks)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)  # raises if the late reply broke the task
    assert p.status is PaymentStatus.CANCELLED and p.token == ""
    assert m.counters["cancelled"] == 1 and m.counters["complete"] == 0
    assert any(r["action"] == "payment.late_gateway_reply" for r in m.audit.records)
    assert hook.calls == [("c1", True, True), ("c1", False, False)]


async def test_a_payment_cancelled_before_its_submission_ran_sends_nothing() -> None:
    hook = Hook()
    gateway = GatedTokeniser()
    m = _manager(hook, gateway)
    p = m.start("c1", "agent-1")
    _key(m, "c1", CARD_KEYS)
    m.cancel("c1", p.sid, "agent-1")  # same tick: the submit task has not run yet
    tasks = list(m._tasks)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)  # raises if the task failed
    assert tasks and p.status is PaymentStatus.CANCELLED and not gateway.called.is_set()


async def test_a_gateway_answer_in_time_completes_and_an_error_is_retryable() -> None:
    hook = Hook()
    gateway = GatedTokeniser(fail=True)
    gateway.release.set()
    m = _manager(hook, gateway)
    p = m.start("c1", "agent-1")
    _key(m, "c1", CARD_KEYS)
    async with asyncio.timeout(5):
        while p.status is PaymentStatus.SUBMITTING:
            await asyncio.sleep(0.01)
    assert p.status is PaymentStatus.FAILED_SUBMIT and p.error == "gateway-unavailable"
    gateway.fail = False
    m.complete("c1", p.sid, "agent-1")
    async with asyncio.timeout(5):
        while p.status is PaymentStatus.SUBMITTING:
            await asyncio.sleep(0.01)
    assert p.status is PaymentStatus.COMPLETE and p.token == "tok_1" and p.final_last4 == "1111"
    assert hook.calls == [("c1", True, True), ("c1", False, False)]


async def test_the_api_answers_503_when_masking_cannot_be_ensured() -> None:
    from proxy.api.app import create_app
    from proxy.api.auth import AgentDirectory

    hook = Hook()
    hook.fail_on = {True}
    m = _manager(hook)
    agents = AgentDirectory()
    key = agents.add("agent-1", "agent")
    app = create_app(m, agents)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://toneguard") as http:
        r = await http.post("/v1/calls/c1/payments", json={},
                            headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503, r.text
        assert r.json()["detail"] == "masking could not be ensured for this call"
        assert PAN not in r.text
        hook.fail_on = set()
        r = await http.post("/v1/calls/c1/payments", json={},
                            headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201 and r.json()["status"] == "capturing"
    assert [s.status for s in m.sessions.values()] == [PaymentStatus.CAPTURING]
