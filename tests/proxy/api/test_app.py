"""The API's authorisation in-process: who may see and act on which call (no sockets, fast).

A real PaymentManager and AgentDirectory behind the real app; the whole-stack version of these
rules (over TCP, with the gateway) is tests/proxy/api/test_api.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from proxy.api import auth
from proxy.api.app import create_app
from proxy.api.auth import AgentDirectory
from proxy.media.types import DigitEvent
from proxy.securepay.manager import PaymentManager


@dataclass
class Api:
    client: TestClient
    manager: PaymentManager
    ann: dict[str, str]  # agent, assigned call "c-ann"
    bob: dict[str, str]  # agent, assigned call "c-bob"
    sup: dict[str, str]  # supervisor
    admin: dict[str, str]
    ann_key: str
    sup_key: str


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    # Every request runs scrypt; at the real cost (test_auth.py pins it) these tests take 10 s.
    # The cost is a module-level constant so tests can lower it, as aioice's tests zero retries.
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)
    agents = AgentDirectory()
    keys = {name: agents.add(name, role) for name, role in
            (("ann", "agent"), ("bob", "agent"), ("sue", "supervisor"), ("ada", "admin"))}
    manager = PaymentManager(None)
    manager.call_started("c-ann", "agent=ann;caller=02079460018", caller="198.51.100.7")
    manager.call_started("c-bob", "agent=bob")
    manager.call_started("c-free")  # unassigned
    app = create_app(manager, agents, metrics_text=lambda: b"toneguard_calls 3\n")
    with TestClient(app) as client:
        yield Api(client, manager, bearer(keys["ann"]), bearer(keys["bob"]), bearer(keys["sue"]),
                  bearer(keys["ada"]), keys["ann"], keys["sue"])


def start(api: Api, call_id: str, who: dict[str, str]) -> str:
    r = api.client.post(f"/v1/calls/{call_id}/payments", json={}, headers=who)
    assert r.status_code == 201, r.text
    return str(r.json()["sid"])


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": ""},
    {"Authorization": "Basic YW5uOnB3"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearertg_x_y"},
])
def test_a_request_without_a_bearer_key_is_refused(api: Api, headers: dict[str, str]) -> None:
    r = api.client.get("/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing bearer API key"}
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["tg_00000000_nope", "nope", ""])
def test_a_wrong_bearer_key_is_refused(api: Api, key: str) -> None:
    r = api.client.get("/v1/calls", headers={"Authorization": f"Bearer {key}x"})
    assert r.status_code == 401
    assert r.json() == {"detail": "invalid API key"}
    assert r.headers["www-authenticate"] == "Bearer"


def test_the_key_is_taken_after_the_scheme_with_spaces_trimmed(api: Api) -> None:
    r = api.client.get("/v1/me", headers={"Authorization": f"Bearer  {api.ann_key} "})
    assert r.status_code == 200
    assert r.json() == {"agent_id": "ann", "role": "agent"}
    assert api.client.get("/v1/me", headers=api.sup).json() == {"agent_id": "sue",
                                                                "role": "supervisor"}


def test_an_agent_lists_only_its_own_calls(api: Api) -> None:
    listed = api.client.get("/v1/calls", headers=api.ann).json()
    started = listed[0].pop("started_at")
    assert listed == [{"call_id": "c-ann", "agent_id": "ann", "payment_sid": "",
                       "last_payment_sid": "", "caller": "02079460018",  # metadata wins
                       "owner_down": False, "node": ""}]
    assert abs(datetime.fromisoformat(started).timestamp() - time.time()) < 600
    for who in (api.sup, api.admin):
        listed = api.client.get("/v1/calls", headers=who).json()
        assert {c["call_id"] for c in listed} == {"c-ann", "c-bob", "c-free"}


def test_the_call_list_shows_the_payment_in_progress_only(api: Api) -> None:
    sid = start(api, "c-ann", api.ann)
    assert api.client.get("/v1/calls", headers=api.ann).json()[0]["payment_sid"] == sid
    api.client.post(f"/v1/calls/c-ann/payments/{sid}", json={"Status": "cancel"}, headers=api.ann)
    listed = api.client.get("/v1/calls", headers=api.ann).json()[0]
    assert listed["payment_sid"] == ""
    assert listed["last_payment_sid"] == sid  # the ended payment stays readable (receipt)


def test_the_amount_a_payment_was_started_with_is_kept_and_audited(api: Api) -> None:
    r = api.client.post("/v1/calls/c-ann/payments", json={"amount": "12.50", "currency": "GBP"},
                        headers=api.ann)
    assert r.status_code == 201
    assert (r.json()["amount"], r.json()["currency"]) == ("12.50", "GBP")
    sid = r.json()["sid"]
    fetched = api.client.get(f"/v1/calls/c-ann/payments/{sid}", headers=api.ann).json()
    assert (fetched["amount"], fetched["currency"]) == ("12.50", "GBP")


def test_a_call_without_caller_metadata_shows_the_address_given() -> None:
    manager = PaymentManager(None)
    manager.call_started("c1", "agent=ann", caller="198.51.100.7")
    manager.call_started("c2")
    assert manager.calls["c1"].caller == "198.51.100.7" and manager.calls["c2"].caller == ""


def test_a_caller_name_that_looks_like_a_card_number_is_masked() -> None:
    manager = PaymentManager(None)
    manager.call_started("c1", "caller=4111111111111111")  # a From user is the caller's choice
    assert "4111111111111111" not in manager.calls["c1"].caller
    assert manager.calls["c1"].caller == "[PAN redacted …1111]"


def test_only_supervisors_and_admins_assign_calls(api: Api) -> None:
    r = api.client.post("/v1/calls/c-free/assign", json={"agent_id": "ann"}, headers=api.ann)
    assert r.status_code == 403
    assert r.json() == {"detail": "only supervisors and admins assign calls"}
    assert api.manager.calls["c-free"].agent_id == ""
    for who, agent in ((api.sup, "ann"), (api.admin, "bob")):
        r = api.client.post("/v1/calls/c-free/assign", json={"agent_id": agent}, headers=who)
        assert r.status_code == 200
        assert {k: r.json()[k] for k in ("call_id", "agent_id", "payment_sid")} == {
            "call_id": "c-free", "agent_id": agent, "payment_sid": ""}
    r = api.client.post("/v1/calls/nope/assign", json={"agent_id": "ann"}, headers=api.sup)
    assert r.status_code == 404 and r.json() == {"detail": "unknown call"}


def test_an_agent_cannot_touch_another_agents_call_and_the_refusal_is_audited(api: Api) -> None:
    sid = start(api, "c-bob", api.bob)
    client = api.client
    refused = [
        client.post("/v1/calls/c-bob/payments", json={}, headers=api.ann),
        client.get(f"/v1/calls/c-bob/payments/{sid}", headers=api.ann),
        client.post(f"/v1/calls/c-bob/payments/{sid}", json={"Status": "cancel"}, headers=api.ann),
        client.post("/v1/calls/c-free/payments", json={}, headers=api.ann),  # unassigned
    ]
    for r in refused:
        assert r.status_code == 403
        assert r.json() == {"detail": "this call is not assigned to you"}
    denied = [r for r in api.manager.audit.records if r["action"] == "denied"]
    assert [(r["actor"], r["call_id"]) for r in denied] == [("ann", "c-bob")] * 3 + [
        ("ann", "c-free")]
    assert api.manager.sessions[sid].status == "capturing"  # the cancel did not happen


def test_supervisors_and_admins_act_on_any_call(api: Api) -> None:
    sid = start(api, "c-bob", api.bob)
    r = api.client.get(f"/v1/calls/c-bob/payments/{sid}", headers=api.sup)
    assert r.status_code == 200 and r.json()["sid"] == sid
    r = api.client.post(f"/v1/calls/c-bob/payments/{sid}", json={"Status": "cancel"},
                        headers=api.admin)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert start(api, "c-free", api.sup)
    assert not any(r["action"] == "denied" for r in api.manager.audit.records)


@pytest.mark.parametrize("path", ["/v1/calls/nope/payments/PA0", "/v1/calls/nope/payments"])
def test_an_unknown_call_is_404_before_any_ownership_check(api: Api, path: str) -> None:
    r = (api.client.get(path, headers=api.ann) if path.endswith("PA0")
         else api.client.post(path, json={}, headers=api.ann))
    assert r.status_code == 404 and r.json() == {"detail": "unknown call"}
    assert not any(r["action"] == "denied" for r in api.manager.audit.records)


def test_a_payment_of_another_call_is_not_found_through_mine(api: Api) -> None:
    sid = start(api, "c-bob", api.bob)
    r = api.client.get(f"/v1/calls/c-ann/payments/{sid}", headers=api.ann)
    assert r.status_code == 404 and r.json() == {"detail": "unknown payment"}
    r = api.client.post(f"/v1/calls/c-ann/payments/{sid}", json={"Status": "cancel"},
                        headers=api.ann)
    assert r.status_code == 404 and r.json() == {"detail": "unknown payment"}
    assert api.manager.sessions[sid].status == "capturing"


def test_payment_views_carry_the_masked_card_only(api: Api) -> None:
    sid = start(api, "c-ann", api.ann)
    fresh = api.client.get(f"/v1/calls/c-ann/payments/{sid}", headers=api.ann).json()
    assert fresh == {"sid": sid, "call_id": "c-ann", "status": "capturing",
                     "current_field": "payment-card-number",
                     "fields": {"payment-card-number": "", "expiration-date": "",
                                "security-code": ""},
                     "brand": "", "token": "", "last4": "", "error": "", "amount": "",
                     "currency": ""}
    for digit in "4111111111111111":
        api.manager.on_digit("c-ann", "caller", DigitEvent("s", digit, "inband", 0.0, 50.0))
    mid = api.client.get(f"/v1/calls/c-ann/payments/{sid}", headers=api.ann)
    assert "4111111111111111" not in mid.text
    assert mid.json()["current_field"] == "expiration-date"
    assert mid.json()["fields"]["payment-card-number"] == "••••••••••••1111"
    assert (mid.json()["brand"], mid.json()["last4"]) == ("visa", "1111")
    ended = api.client.post(f"/v1/calls/c-ann/payments/{sid}", json={"Status": "cancel"},
                            headers=api.ann)
    assert "4111111111111111" not in ended.text
    assert ended.json()["status"] == "cancelled" and ended.json()["current_field"] == ""
    assert (ended.json()["brand"], ended.json()["last4"]) == ("visa", "1111")


def test_payment_updates_map_to_their_actions_and_errors(api: Api) -> None:
    sid = start(api, "c-ann", api.ann)
    url = f"/v1/calls/c-ann/payments/{sid}"
    again = api.client.post("/v1/calls/c-ann/payments", json={}, headers=api.ann)
    assert again.status_code == 409
    assert again.json() == {"detail": "a payment is already in progress on this call"}
    r = api.client.post(url, json={}, headers=api.ann)
    assert r.status_code == 422 and r.json() == {"detail": "give Capture or Status"}
    r = api.client.post(url, json={"Status": "complete"}, headers=api.ann)
    assert r.status_code == 409 and "status" in r.json()["detail"]
    r = api.client.post(url, json={"Capture": "security-code"}, headers=api.ann)
    assert r.status_code == 200 and r.json()["current_field"] == "security-code"
    r = api.client.post(url, json={"Status": "cancel"}, headers=api.ann)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.client.post(f"/v1/calls/c-ann/payments/PA{'0' * 32}", json={"Status": "cancel"},
                        headers=api.ann)
    assert r.status_code == 404 and r.json() == {"detail": "unknown payment"}


def test_start_passes_the_requested_options_and_idempotency_key(api: Api) -> None:
    body = {"postal_code": True, "valid_card_types": ["amex"]}
    headers = {**api.ann, "Idempotency-Key": "k-1"}
    first = api.client.post("/v1/calls/c-ann/payments", json=body, headers=headers)
    assert first.status_code == 201
    assert "postal-code" in first.json()["fields"]
    session = api.manager.sessions[first.json()["sid"]]
    assert session.agent_id == "ann"
    assert session.settings.accepted_brands == ("amex",)
    retried = api.client.post("/v1/calls/c-ann/payments", json=body, headers=headers)
    assert retried.status_code == 201 and retried.json()["sid"] == first.json()["sid"]


@pytest.mark.timeout(20)  # a missing event would leave receive_json() waiting
def test_events_reach_the_calls_agent_and_supervisors_only(api: Api) -> None:
    client = api.client
    with client.websocket_connect("/v1/events", subprotocols=["toneguard", api.ann_key]) as ann, \
            client.websocket_connect("/v1/events",
                                     subprotocols=["toneguard", api.sup_key]) as sup:
        bob_sid = start(api, "c-bob", api.bob)  # ann must not see this one
        ann_sid = start(api, "c-ann", api.ann)
        seen = ann.receive_json()
        assert (seen["sid"], seen["call_id"], seen["type"]) == (ann_sid, "c-ann", "started")
        assert [sup.receive_json()["sid"] for _ in range(2)] == [bob_sid, ann_sid]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("query", ["", "?key=", "?key=tg_00000000_nope"])
def test_the_event_stream_refuses_a_missing_or_wrong_key(api: Api, query: str) -> None:
    with pytest.raises(WebSocketDisconnect) as refused, \
            api.client.websocket_connect(f"/v1/events{query}") as ws:
        ws.receive_json()
    assert refused.value.code == 4401


def test_health_metrics_and_static_files(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    assert api.client.get("/metrics").status_code == 401  # a supervisor's or admin's only
    metrics = api.client.get("/metrics", headers=bearer(api.sup_key))
    assert metrics.text == "toneguard_calls 3\n"
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert api.client.get("/panel").status_code == 200
    assert api.client.get("/static/panel.js").status_code == 200
    for path in ("/static/..%2Fapi%2Fauth.py", "/static/nope.js", "/static/"):
        assert api.client.get(path).status_code == 404


def test_the_openapi_document_names_the_service(api: Api) -> None:
    assert api.client.get("/openapi.json").status_code == 401
    info = api.client.get("/openapi.json", headers=bearer(api.ann_key)).json()["info"]
    assert info == {"title": "ToneGuard", "version": "1",
                    "description": "Secure-pay sessions on calls relayed by ToneGuard."}
