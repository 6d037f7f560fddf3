"""The app's own paths in-process: authentication limits as HTTP (429 + Retry-After, per source,
lock-outs audited), no slash redirects or docs pages, idempotency scoping, events following the
call's current agent, 503 when masking cannot be ensured, the CSP's style hashes and 422 bodies.

A real PaymentManager and AgentDirectory behind the real app (Starlette's TestClient, no
sockets); the same behaviour over TCP is tests/proxy/api/test_hostile.py and test_access.py.
These are the fast tests the mutation run (scripts/mutate.py) uses for proxy/api/app.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from proxy.api import auth
from proxy.api.app import STATIC, ApiSettings, create_app
from proxy.api.auth import AgentDirectory, AuthSettings, KeyGuard
from proxy.media.types import DigitEvent
from proxy.securepay.manager import PaymentManager

PAN = "4111111111111111"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Node:
    def __init__(self, auth_settings: AuthSettings | None = None,
                 on_capture: Callable[[str, bool], None] | None = None) -> None:
        self.agents = AgentDirectory()
        self.keys = {name: self.agents.add(name, role) for name, role in
                     (("ann", "agent"), ("bob", "agent"), ("sue", "supervisor"))}
        self.manager = PaymentManager(None, on_capture=on_capture)
        self.manager.call_started("c-ann", "agent=ann")
        self.manager.call_started("c-bob", "agent=bob")
        self.app = create_app(self.manager, self.agents,
                              settings=ApiSettings(auth=auth_settings or AuthSettings()))
        self.guard: KeyGuard = self.app.state.key_guard
        self.clock = Clock()

    def h(self, name: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}", **extra}


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # test_auth.py pins the real cost


@pytest.fixture
def node() -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def _make(*args: Any, **kw: Any) -> Node:
        made.append(Node(*args, **kw))
        return made[-1]

    yield _make
    for n in made:
        n.guard.close()


def test_the_guard_in_app_state_is_the_one_checking_keys_with_the_configured_limits(
        node: Callable[..., Node]) -> None:
    n = node(AuthSettings(failures_per_source=2, failure_window_seconds=60.0))
    n.guard._clock = n.clock  # the guard the app exposes (serve closes it) is the one used
    client = TestClient(n.app, client=("192.0.2.1", 4000))
    for _ in range(2):
        r = client.get("/v1/me", headers={"Authorization": "Bearer tg_00000000_nope"})
        assert r.status_code == 401
    assert n.guard.counters["refused"] == 2
    r = client.get("/v1/me", headers=n.h("ann"))  # a valid key too: the source is limited
    assert r.status_code == 429
    assert r.json() == {"detail": "too many failed authentication attempts"}
    assert r.headers["retry-after"] == "60"
    n.clock.now += 29.5  # 30.5 s to go: whole seconds, rounded up
    assert client.get("/v1/me", headers=n.h("ann")).headers["retry-after"] == "31"
    n.clock.now += 30.2  # 0.3 s to go: still at least one second
    assert client.get("/v1/me", headers=n.h("ann")).headers["retry-after"] == "1"
    # Another address is not limited by this one's failures.
    other = TestClient(n.app, client=("198.51.100.2", 4000))
    assert other.get("/v1/me", headers=n.h("ann")).json() == {"agent_id": "ann", "role": "agent"}
    n.clock.now += 0.3
    assert client.get("/v1/me", headers=n.h("sue")).status_code == 200


def test_a_lockout_through_the_api_is_audited_with_the_source(node: Callable[..., Node]) -> None:
    n = node(AuthSettings(key_lockout_failures=2, failures_per_source=100))
    client = TestClient(n.app, client=("192.0.2.9", 4000))
    wrong = n.keys["bob"][:-1] + ("A" if n.keys["bob"][-1] != "A" else "B")
    for _ in range(2):
        assert client.get("/v1/me", headers={"Authorization": f"Bearer {wrong}"}
                          ).status_code == 401
    r = client.get("/v1/me", headers=n.h("bob"))
    assert r.status_code == 429
    assert r.json() == {"detail": "API key locked out after repeated wrong secrets"}
    assert r.headers["retry-after"] == "300"
    lockouts = [x for x in n.manager.audit.records if x["action"] == "auth.lockout"]
    assert [(x["actor"], x["key_id"]) for x in lockouts] == [
        ("source:192.0.2.9", n.keys["bob"].split("_")[1])]
    assert n.keys["bob"].split("_", 2)[2] not in json.dumps(n.manager.audit.records)


async def _asgi_get(app: Any, path: str, headers: dict[str, str]) -> int:
    """One request through the ASGI app with no client address in the scope (a Unix socket or
    a server that does not tell); returns the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(k.lower().encode(), v.encode())
                                          for k, v in headers.items()],
             "client": None, "server": ("testserver", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


async def test_a_request_without_a_client_address_is_limited_as_unknown(
        node: Callable[..., Node]) -> None:
    n = node(AuthSettings(key_lockout_failures=1, failures_per_source=100))
    assert await _asgi_get(n.app, "/v1/me", n.h("ann")) == 200
    wrong = n.keys["bob"][:-1] + ("A" if n.keys["bob"][-1] != "A" else "B")
    assert await _asgi_get(n.app, "/v1/me", {"Authorization": f"Bearer {wrong}"}) == 401
    assert [x["actor"] for x in n.manager.audit.records if x["action"] == "auth.lockout"] == [
        "source:unknown"]


def test_no_slash_redirects_and_no_docs_pages(node: Callable[..., Node]) -> None:
    n = node()
    client = TestClient(n.app, follow_redirects=False)
    for path in ("/v1/calls/", "/v1/me/", "/docs", "/redoc", "/docs/oauth2-redirect"):
        r = client.get(f"{path}?card={PAN}", headers=n.h("sue"))
        assert r.status_code == 404, path
        assert "location" not in r.headers
        assert PAN not in r.text
    assert client.get("/v1/calls", headers=n.h("sue")).status_code == 200


def test_idempotency_keys_are_scoped_to_the_agent_and_call(node: Callable[..., Node]) -> None:
    n = node()
    client = TestClient(n.app)
    first = client.post("/v1/calls/c-ann/payments", json={},
                        headers=n.h("ann", **{"Idempotency-Key": "k-1"}))
    assert first.status_code == 201
    again = client.post("/v1/calls/c-ann/payments", json={},
                        headers=n.h("ann", **{"Idempotency-Key": "k-1"}))
    assert again.status_code == 201 and again.json()["sid"] == first.json()["sid"]
    # Another key is another request: the payment in progress is a conflict, not returned.
    other = client.post("/v1/calls/c-ann/payments", json={},
                        headers=n.h("ann", **{"Idempotency-Key": "k-2"}))
    assert other.status_code == 409
    # The same key from someone else (a supervisor on the same call) is not ann's either.
    sue = client.post("/v1/calls/c-ann/payments", json={},
                      headers=n.h("sue", **{"Idempotency-Key": "k-1"}))
    assert sue.status_code == 409
    # Nor is ann's key on another call of hers.
    n.manager.call_started("c-ann2", "agent=ann")
    elsewhere = client.post("/v1/calls/c-ann2/payments", json={},
                            headers=n.h("ann", **{"Idempotency-Key": "k-1"}))
    assert elsewhere.status_code == 201 and elsewhere.json()["sid"] != first.json()["sid"]


def test_a_payment_is_503_when_masking_cannot_be_ensured(node: Callable[..., Node]) -> None:
    def refuse(call_id: str, on: bool) -> None:
        raise RuntimeError("media engine unreachable")

    n = node(on_capture=refuse)
    r = TestClient(n.app).post("/v1/calls/c-ann/payments", json={}, headers=n.h("ann"))
    assert r.status_code == 503
    assert r.json() == {"detail": "masking could not be ensured for this call"}
    assert n.manager.sessions == {}


@pytest.mark.timeout(20)  # a missing event would leave receive_json() waiting
def test_events_go_to_the_calls_agent_at_delivery_and_the_last_one_after_it_ends(
        node: Callable[..., Node]) -> None:
    n = node()
    m = n.manager
    with TestClient(n.app) as client, \
            client.websocket_connect("/v1/events",
                                     subprotocols=["toneguard", n.keys["ann"]]) as ann, \
            client.websocket_connect("/v1/events",
                                     subprotocols=["toneguard", n.keys["bob"]]) as bob:
        assert ann.accepted_subprotocol == "toneguard"
        sid = client.post("/v1/calls/c-ann/payments", json={}, headers=n.h("ann")).json()["sid"]
        assert (ann.receive_json()["type"], sid) == ("started", sid)

        def digit_then_reassign() -> None:
            # On the event loop, before the stream delivers: the event was published for ann,
            # but when it is delivered the call is bob's.
            m.on_digit("c-ann", "caller", DigitEvent("s", "4", "inband", 0.0, 50.0))
            m.assign("c-ann", "bob", "sue")

        client.portal.call(digit_then_reassign)
        got = bob.receive_json()
        assert (got["call_id"], got["agent_id"], got["type"]) == ("c-ann", "ann", "progress")

        def start_and_end() -> None:
            # Bob's call ends: the final event is delivered when the call is already gone,
            # so it goes to the agent the event was published for.
            m.call_started("c-bob2", "agent=bob")
            m.start("c-bob2", "bob")
            m.call_ended("c-bob2")
            m.call_started("c-ann2", "agent=ann")  # then a marker for ann
            m.start("c-ann2", "ann")

        client.portal.call(start_and_end)
        assert [(e["call_id"], e["type"]) for e in (bob.receive_json(), bob.receive_json())] == [
            ("c-bob2", "started"), ("c-bob2", "ended")]
        # ann's next event is the marker: nothing of c-ann (bob's now) or c-bob2 came first.
        got = ann.receive_json()
        assert (got["call_id"], got["type"]) == ("c-ann2", "started")


def _style_hashes_of_panel() -> list[str]:
    text = (STATIC / "panel.html").read_text("utf-8")
    blocks = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
    assert blocks and all("\n" in b for b in blocks)  # multi-line: the DOTALL matters
    return [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks]


def test_the_csp_allows_exactly_the_panels_inline_styles(node: Callable[..., Node]) -> None:
    n = node()
    r = TestClient(n.app).get("/panel")
    assert r.status_code == 200
    style_src = re.search(r"style-src ([^;]*);", r.headers["content-security-policy"])
    assert style_src is not None
    assert style_src.group(1).split() == ["'self'", *(f"'sha256-{h}'"
                                                     for h in _style_hashes_of_panel())]


def test_an_invalid_request_names_the_fields_never_the_values(node: Callable[..., Node]) -> None:
    n = node()
    client = TestClient(n.app)
    sid = client.post("/v1/calls/c-ann/payments", json={}, headers=n.h("ann")).json()["sid"]
    r = client.post(f"/v1/calls/c-ann/payments/{sid}",
                    json={"Status": PAN, "Capture": PAN}, headers=n.h("ann"))
    assert r.status_code == 422
    assert r.json() == {"detail": "invalid request", "fields": ["body.Capture", "body.Status"]}
    assert PAN not in r.text
    r = client.post("/v1/calls/c-ann/payments", content=b"[" + PAN.encode(),
                    headers=n.h("ann", **{"Content-Type": "application/json"}))
    assert r.status_code == 422 and PAN not in r.text
    assert r.json()["detail"] == "invalid request"
