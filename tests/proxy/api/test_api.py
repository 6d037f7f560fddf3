"""Every API caller is authenticated; an agent acts only on its own calls."""

from __future__ import annotations

import httpx
import pytest
import websockets

from proxy.demo.sdp_builder import audio_sdp
from tests.proxy.conftest import Stack


async def _call(stack: Stack, call_id: str) -> None:
    await stack.node.registry.handle({"command": "offer", "call-id": call_id,
                                      "from-tag": "caller", "sdp": audio_sdp("127.0.0.1", 4000)})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_requests_without_a_valid_key_are_refused(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        assert (await http.get("/v1/calls")).status_code == 401
        assert (await http.get("/v1/calls", headers=bearer("tg_0000_nope"))).status_code == 401
        assert (await http.get("/v1/calls", headers=bearer(stack.agent_key[:-1] + "x"))
                ).status_code == 401
        assert (await http.get("/health")).json() == {"status": "ok"}
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(stack.api.replace("http", "ws") + "/v1/events?key=bad"):
            pass


async def test_agents_see_and_act_on_their_own_calls_only(stack: Stack) -> None:
    await _call(stack, "mine")
    await _call(stack, "theirs")
    async with httpx.AsyncClient(base_url=stack.api) as http:
        assert (await http.post("/v1/calls/mine/assign", json={"agent_id": "agent-demo"},
                                headers=bearer(stack.agent_key))).status_code == 403
        for call, agent in (("mine", "agent-demo"), ("theirs", "agent-other")):
            r = await http.post(f"/v1/calls/{call}/assign", json={"agent_id": agent},
                                headers=bearer(stack.supervisor_key))
            assert r.status_code == 200
        mine = (await http.get("/v1/calls", headers=bearer(stack.agent_key))).json()
        assert [c["call_id"] for c in mine] == ["mine"]
        everyone = (await http.get("/v1/calls", headers=bearer(stack.supervisor_key))).json()
        assert {c["call_id"] for c in everyone} == {"mine", "theirs"}
        denied = await http.post("/v1/calls/theirs/payments", json={},
                                 headers=bearer(stack.agent_key))
        assert denied.status_code == 403
        started = await http.post("/v1/calls/mine/payments", json={},
                                  headers={**bearer(stack.agent_key), "Idempotency-Key": "k1"})
        assert started.status_code == 201 and started.json()["status"] == "capturing"
        sid = started.json()["sid"]
        retried = await http.post("/v1/calls/mine/payments", json={},
                                  headers={**bearer(stack.agent_key), "Idempotency-Key": "k1"})
        assert retried.json()["sid"] == sid  # a retried request gets the same payment
        assert (await http.get(f"/v1/calls/mine/payments/{sid}",
                               headers=bearer(stack.other_agent_key))).status_code == 403
        again = await http.post("/v1/calls/mine/payments", json={},
                                headers=bearer(stack.agent_key))
        assert again.status_code == 409  # one payment at a time per call
        cancelled = await http.post(f"/v1/calls/mine/payments/{sid}", json={"Status": "cancel"},
                                    headers=bearer(stack.agent_key))
        assert cancelled.json()["status"] == "cancelled"
        assert (await http.post("/v1/calls/nope/payments", json={},
                                headers=bearer(stack.agent_key))).status_code == 404
    actions = [r["action"] for r in stack.node.payments.audit.records]
    assert "denied" in actions and "payment.start" in actions and "payment.cancel" in actions


async def test_openapi_documents_the_payments_api(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        assert (await http.get("/openapi.json")).status_code == 401
        assert (await http.get("/docs")).status_code == 404
        spec = (await http.get("/openapi.json", headers=bearer(stack.agent_key))).json()
    assert "/v1/calls/{call_id}/payments" in spec["paths"]
    assert "/v1/calls/{call_id}/payments/{sid}" in spec["paths"]
    # A node that lists another, dead node's calls marks them: clients can read that it does.
    assert {"owner_down", "node"} <= set(spec["components"]["schemas"]["Call"]["properties"])
