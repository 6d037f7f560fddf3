"""Secure-pay flows other than the happy path, through the real media path, and the card-data
boundary after each: started from ng (`block DTMF` + `secure-pay=start`, agent assigned by ng
`metadata`), cancelled by the agent, timed out, opened by the caller's trigger sequence."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from dsp import tones
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.securepay.session import CaptureSettings
from tests.proxy.conftest import Stack

PAN = "5555555555554444"
CODE = "987"


async def _call(stack: Stack, call_id: str, caller: RtpPeer, agent: RtpPeer,
                metadata: str = "") -> tuple[str, int]:
    await stack.node.registry.handle({
        "command": "offer", "call-id": call_id, "from-tag": "caller", "metadata": metadata,
        "sdp": audio_sdp("127.0.0.1", caller.port)})
    answer = await stack.node.registry.handle({
        "command": "answer", "call-id": call_id, "from-tag": "caller", "to-tag": "agent",
        "sdp": audio_sdp("127.0.0.1", agent.port)})
    return media_endpoint(answer["sdp"])


def _keys(keys: str) -> np.ndarray:
    return tones.dtmf_sequence(keys, tone_ms=70, gap_ms=70, lead_ms=200, tail_ms=300,
                               low_dbm0=-12.0)


async def _wait(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def _everything_written(stack: Stack) -> str:
    return "\n".join([stack.logs.getvalue(), stack.audit_file.read_text(),
                      json.dumps([e.as_dict() for e in stack.node.payments.bus.history])])


def _assert_clean(stack: Stack) -> None:
    text = _everything_written(stack)
    assert PAN not in text and PAN[:12] not in text
    assert f'"{CODE}"' not in text and f"={CODE}" not in text


async def test_started_from_ng_cancelled_by_the_agent(stack: Stack) -> None:
    caller, agent = await RtpPeer(seed=5).start(), await RtpPeer(seed=6).start()
    try:
        to_toneguard = await _call(stack, "ng-start", caller, agent, metadata="agent=agent-demo")
        reply = await stack.node.registry.handle({"command": "block DTMF", "call-id": "ng-start",
                                                  "secure-pay": "start"})
        sid = reply["secure-pay-sid"]
        assert stack.node.payments.calls["ng-start"].agent_id == "agent-demo"
        await caller.play(_keys(PAN[:10]), to_toneguard)
        session = stack.node.payments.sessions[sid]
        await _wait(lambda: len(session.masked()["payment-card-number"]) == 10)
        async with httpx.AsyncClient(base_url=stack.api) as http:
            r = await http.post(f"/v1/calls/ng-start/payments/{sid}", json={"Status": "cancel"},
                                headers={"Authorization": f"Bearer {stack.agent_key}"})
        assert r.json()["status"] == "cancelled"
        assert all(not f.buffer for f in session.fields.values())
        _assert_clean(stack)
    finally:
        caller.close()
        agent.close()


async def test_a_payment_that_times_out_fails_and_forgets_the_digits(stack: Stack) -> None:
    stack.node.payments.settings = CaptureSettings(inter_digit_timeout=0.5, field_timeout=30,
                                                   max_attempts=1)
    caller, agent = await RtpPeer(seed=7).start(), await RtpPeer(seed=8).start()
    try:
        to_toneguard = await _call(stack, "timeout", caller, agent)
        session = stack.node.payments.start("timeout", "agent-demo")
        await caller.play(_keys(PAN[:6]), to_toneguard)
        await _wait(lambda: session.status == "failed", timeout=10)
        assert session.error == "timeout"
        assert all(not f.buffer for f in session.fields.values())
        outcomes = [r.get("outcome") for r in stack.node.payments.audit.records]
        assert "timeout" in outcomes and "failed" in outcomes
        _assert_clean(stack)
    finally:
        caller.close()
        agent.close()


async def test_the_caller_trigger_sequence_opens_a_payment(stack: Stack) -> None:
    stack.node.payments.trigger_sequence = "*9"
    caller, agent = await RtpPeer(seed=9).start(), await RtpPeer(seed=10).start()
    try:
        to_toneguard = await _call(stack, "trigger", caller, agent, metadata="agent=agent-demo")
        sessions = stack.node.payments.sessions
        playing = asyncio.create_task(caller.play(_keys("12*9" + PAN + "1230" + CODE),
                                                  to_toneguard))
        # Two stages, so a failure says which one: the trigger opened exactly one payment ...
        await _wait(lambda: any(s.call_id == "trigger" for s in sessions.values()), timeout=10)
        await playing
        # ... and every key after it went into that payment (masked progress in the message).
        try:
            await _wait(lambda: any(s.status == "complete" for s in sessions.values()),
                        timeout=15)
        except TimeoutError:
            pytest.fail(f"payment not complete: {[repr(s) for s in sessions.values()]}; "
                        f"media {(await stack.node.engine.totals())}")
        [session] = sessions.values()
        assert session.call_id == "trigger" and session.agent_id == "agent-demo"
        assert session.token.startswith("tok_") and session.final_last4 == "4444"
        _assert_clean(stack)
    finally:
        caller.close()
        agent.close()
