"""The card-data boundary: after a real secure-pay call (gateway over mutual TLS, media over
RTP, agent over REST/WebSocket) the card number exists at the gateway — encrypted — and nowhere
on ToneGuard's side: not in logs, metrics, API responses, events, the audit file, ng replies,
the agent's audio, or the session's memory."""

from __future__ import annotations

import json
import re
import sqlite3

import httpx

from gateway.store import TokenStore, load_key
from proxy.demo.simulate import TEST_CARDS, run_call
from tests.proxy.conftest import Stack

PAN, EXPIRY, CODE = TEST_CARDS["visa"]
GROUPED = re.compile(r"4\D?1\D?1\D?1(?:\D?1){12}")  # the PAN with any separators


def assert_no_pan(text: str, where: str) -> None:
    assert PAN not in text, f"card number in {where}"
    assert not GROUPED.search(text), f"grouped card number in {where}"


async def test_card_number_reaches_the_gateway_and_nothing_else(stack: Stack) -> None:
    result = await run_call(stack.ng, stack.api, stack.admin_key, stack.agent_key,
                            keep_call=True, log=lambda line: None)
    assert result.ok, result
    # Positive control: the gateway holds the number, encrypted, under the token.
    store = TokenStore(stack.pki.database, load_key(stack.pki.aes_key))
    assert store.reveal(result.token) == PAN
    store.close()
    raw = stack.pki.database.read_bytes()
    assert PAN.encode() not in raw
    with sqlite3.connect(stack.pki.database) as db:
        assert all(PAN not in str(row) for row in db.execute("SELECT * FROM tokens"))

    headers = {"Authorization": f"Bearer {stack.agent_key}"}
    async with httpx.AsyncClient(base_url=stack.api) as http:
        sid = result.events[0]["sid"]
        payment = (await http.get(f"/v1/calls/{result.call_id}/payments/{sid}",
                                  headers=headers)).text
        calls = (await http.get("/v1/calls", headers=headers)).text
        metrics = (await http.get("/metrics", headers={
            "Authorization": f"Bearer {stack.admin_key}"})).text
    query = await stack.node.registry.handle({"command": "query", "call-id": result.call_id})

    assert json.loads(payment)["token"] == result.token and "1111" in payment
    for text, where in ((payment, "payment resource"), (calls, "call list"),
                        (metrics, "metrics"), (json.dumps(query), "ng query reply"),
                        (json.dumps(result.events), "WebSocket events"),
                        (stack.logs.getvalue(), "logs"),
                        (stack.audit_file.read_text(), "audit file"),
                        (json.dumps(stack.node.payments.audit.records), "audit records")):
        assert_no_pan(text, where)
    assert "toneguard_payments_complete" in metrics
    assert '"action":"payment.end"' in stack.audit_file.read_text()
    # The session's buffers were overwritten when it ended.
    session = stack.node.payments.sessions[sid]
    assert all(not f.buffer for f in session.fields.values())
    assert PAN not in repr(session)
    # And the agent heard the call — all of it — but no digit (decoded by two independent
    # receivers in run_call).
    assert result.caller_audio_seconds > 5
    assert result.agent_audio_seconds >= 0.95 * result.caller_audio_seconds, result
    assert result.spandsp_digits == result.multimon_digits == "" and result.leak_ms == 0.0


async def test_a_declined_card_is_reported_without_its_number(stack: Stack) -> None:
    from proxy.demo import simulate

    simulate.TEST_CARDS["declined"] = ("4000000000000002", "1230", "123")
    try:
        result = await run_call(stack.ng, stack.api, stack.admin_key, stack.agent_key,
                                brand="declined", log=lambda line: None)
    finally:
        del simulate.TEST_CARDS["declined"]
    assert result.status == "failed" and not result.ok
    assert result.agent_audio_seconds >= 0.95 * result.caller_audio_seconds > 5
    assert result.spandsp_digits == result.multimon_digits == ""
    assert any(e.get("error") == "declined:card_declined" for e in result.events)
    assert "4000000000000002" not in stack.logs.getvalue() + json.dumps(result.events)
