"""Over the real API (the `stack` fixture: node, gateway stub, HTTP and WebSocket): payment
status strings unchanged on the wire, events follow a call's reassignment, assigning to an agent
that does not exist is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

from proxy.demo.sdp_builder import audio_sdp
from proxy.media.types import DigitEvent
from tests.proxy.conftest import Stack

WIRE_STATUSES = {"capturing", "ready", "submitting", "failed-submit", "complete", "failed",
                 "cancelled"}
CARD_KEYS = "4111111111111111" + "1230" + "123"


async def _call(stack: Stack, call_id: str) -> None:
    await stack.node.registry.handle({"command": "offer", "call-id": call_id,
                                      "from-tag": "caller", "sdp": audio_sdp("127.0.0.1", 4000)})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _assign(http: httpx.AsyncClient, stack: Stack, call_id: str, agent: str) -> None:
    r = await http.post(f"/v1/calls/{call_id}/assign", json={"agent_id": agent},
                        headers=bearer(stack.supervisor_key))
    assert r.status_code == 200, r.text


async def _next(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=5))


async def test_the_api_reports_the_same_status_strings(stack: Stack) -> None:
    await _call(stack, "paid")
    await _call(stack, "dropped")
    async with httpx.AsyncClient(base_url=stack.api) as http:
        for call_id in ("paid", "dropped"):
            await _assign(http, stack, call_id, "agent-demo")
        me = bearer(stack.agent_key)
        started = await http.post("/v1/calls/paid/payments", json={}, headers=me)
        assert started.status_code == 201 and started.json()["status"] == "capturing"
        sid = started.json()["sid"]
        for k in CARD_KEYS:  # the keys as the media plane reports them
            stack.node.payments.on_digit("paid", "caller", DigitEvent("s", k, "inband", 0, 60))

        async def status() -> dict[str, Any]:
            return (await http.get(f"/v1/calls/paid/payments/{sid}", headers=me)).json()

        async with asyncio.timeout(15):  # submitted to the real gateway stub
            while (paid := await status())["status"] != "complete":
                assert paid["status"] in ("ready", "submitting"), paid
                await asyncio.sleep(0.05)
        assert paid["token"] and paid["last4"] == "1111" and paid["error"] == ""
        other = (await http.post("/v1/calls/dropped/payments", json={}, headers=me)).json()
        cancelled = await http.post(f"/v1/calls/dropped/payments/{other['sid']}",
                                    json={"Status": "cancel"}, headers=me)
        assert cancelled.json()["status"] == "cancelled"
        late = await http.post(f"/v1/calls/dropped/payments/{other['sid']}",
                               json={"Status": "complete"}, headers=me)
        assert late.status_code == 409 and "in status cancelled" in late.json()["detail"]
        assert (await http.post(f"/v1/calls/dropped/payments/{other['sid']}",
                                json={"Status": "completed"}, headers=me)).status_code == 422
        calls = (await http.get("/v1/calls", headers=me)).json()
        assert {c["call_id"]: c["payment_sid"] for c in calls} == {"paid": "", "dropped": ""}
        spec = (await http.get("/openapi.json", headers=me)).json()
    schemas = spec["components"]["schemas"]
    assert set(schemas["PaymentStatus"]["enum"]) == WIRE_STATUSES
    assert set(schemas["RequestedStatus"]["enum"]) == {"complete", "cancel"}
    kinds = [(e.type, e.as_dict()["status"]) for e in stack.node.payments.bus.history
             if e.call_id == "paid"]
    assert kinds[0] == ("started", "capturing") and kinds[-1] == ("result", "complete")
    assert all(type(status) is str and status in WIRE_STATUSES for _, status in kinds)


def _key(api_key: str) -> list[Subprotocol]:
    """The events socket takes the API key as its second subprotocol, never in the URL."""
    return [Subprotocol("toneguard"), Subprotocol(api_key)]


async def test_events_stop_going_to_the_previous_agent_after_a_reassignment(
        stack: Stack) -> None:
    await _call(stack, "moved")
    await _call(stack, "marker")
    ws_url = stack.api.replace("http", "ws") + "/v1/events"
    bus = stack.node.payments.bus
    async with httpx.AsyncClient(base_url=stack.api) as http, \
            websockets.connect(ws_url, subprotocols=_key(stack.agent_key)) as demo, \
            websockets.connect(ws_url, subprotocols=_key(stack.other_agent_key)) as other:
        await _until(lambda: bus.subscriber_count == 2)
        await _assign(http, stack, "moved", "agent-demo")
        started = await http.post("/v1/calls/moved/payments", json={},
                                  headers=bearer(stack.agent_key))
        sid = started.json()["sid"]
        first = await _next(demo)
        assert (first["call_id"], first["type"]) == ("moved", "started")

        await _assign(http, stack, "moved", "agent-other")
        # The new agent acts on the call and gets its events ...
        r = await http.post(f"/v1/calls/moved/payments/{sid}", json={"Status": "cancel"},
                            headers=bearer(stack.other_agent_key))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        ended = await _next(other)
        assert (ended["call_id"], ended["type"], ended["status"]) == ("moved", "ended",
                                                                      "cancelled")
        # ... and the previous one no longer may, nor hears of it.
        assert (await http.get(f"/v1/calls/moved/payments/{sid}",
                               headers=bearer(stack.agent_key))).status_code == 403

        # A marker on a call the previous agent does own: events arrive in order, so had the
        # "moved" ending been sent to it, that would come first. The marker's payment is
        # started by a supervisor before the call is assigned: its events still reach the
        # agent the call is assigned to.
        marker = await http.post("/v1/calls/marker/payments", json={},
                                 headers=bearer(stack.supervisor_key))
        await _assign(http, stack, "marker", "agent-demo")
        await http.post(f"/v1/calls/marker/payments/{marker.json()['sid']}",
                        json={"Status": "cancel"}, headers=bearer(stack.supervisor_key))
        seen: list[tuple[str, str]] = []
        while not seen or seen[-1] != ("marker", "ended"):
            event = await _next(demo)
            seen.append((event["call_id"], event["type"]))
        assert all(call_id == "marker" for call_id, _ in seen), seen


async def test_assigning_a_call_to_an_agent_that_does_not_exist_is_refused(stack: Stack) -> None:
    await _call(stack, "kept")
    async with httpx.AsyncClient(base_url=stack.api) as http:
        await _assign(http, stack, "kept", "agent-demo")
        for key in (stack.supervisor_key, stack.admin_key):
            r = await http.post("/v1/calls/kept/assign", json={"agent_id": "agent-ghost"},
                                headers=bearer(key))
            assert r.status_code == 422 and r.json()["detail"] == "no such agent"
        assert (await http.post("/v1/calls/kept/assign", json={"agent_id": ""},
                                headers=bearer(stack.supervisor_key))).status_code == 422
        assert (await http.post("/v1/calls/gone/assign", json={"agent_id": "agent-demo"},
                                headers=bearer(stack.supervisor_key))).status_code == 404
        calls = (await http.get("/v1/calls", headers=bearer(stack.supervisor_key))).json()
    assert [(c["call_id"], c["agent_id"]) for c in calls] == [("kept", "agent-demo")]
    assert [r.get("agent_id") for r in stack.node.payments.audit.records
            if r["action"] == "call.assign"] == ["agent-demo"]


async def test_a_call_id_and_agent_that_look_like_card_numbers_are_served_and_redacted(
        stack: Stack) -> None:
    """An attacker's Call-ID (or ng metadata) that is a PAN: the offer and the payment work, the
    audit trail records them redacted, housekeeping goes on, and the call leaves nothing."""
    pan = "4111111111111111"
    reply = await stack.node.registry.handle({
        "command": "offer", "call-id": pan, "from-tag": "caller", "metadata": f"agent={pan}",
        "sdp": audio_sdp("127.0.0.1", 4000)})
    assert reply["result"] == "ok"
    async with httpx.AsyncClient(base_url=stack.api) as http:
        started = await http.post(f"/v1/calls/{pan}/payments", json={},
                                  headers=bearer(stack.supervisor_key))
        assert started.status_code == 201, started.text
        stack.node.payments.poll()  # what housekeeping runs each second: must not raise
        cancelled = await http.post(f"/v1/calls/{pan}/payments/{started.json()['sid']}",
                                    json={"Status": "cancel"},
                                    headers=bearer(stack.supervisor_key))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    await stack.node.registry.handle({"command": "delete", "call-id": pan})
    assert pan not in stack.node.registry.calls
    actions = [r["action"] for r in stack.node.payments.audit.records]
    assert {"call.assign", "payment.start", "payment.cancel"} <= set(actions), actions
    assert stack.node.payments.audit.redacted >= 3
    assert pan not in stack.audit_file.read_text()
