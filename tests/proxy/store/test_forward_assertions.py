"""Forwarded API calls carry a signed node assertion, never the agent's key: a real forward
works (and the owner never sees the key); a forged, expired, replayed, altered or misaddressed
assertion is refused, as is one for an agent the owner does not know (any more)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from proxy.api import auth
from proxy.api.app import create_app
from proxy.api.auth import AgentDirectory
from proxy.securepay.manager import PaymentManager
from proxy.store.forward import ClusterRouter, NodeAssertions, assertion_key
from proxy.store.memory import MemoryStore

KEY = os.urandom(32)


@dataclass
class Seen:
    """What reached the owner's app: each request's headers and body."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class Pair:
    a: httpx.AsyncClient  # the API of node-a (where the agent's key was given)
    b: httpx.AsyncClient  # node-b's API, reached directly (as an attacker on the path would)
    agents: AgentDirectory
    owner: PaymentManager
    seen: Seen
    keys: dict[str, str]


def _recording(app, seen: Seen):  # type: ignore[no-untyped-def]
    async def wrapped(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body = b""
        message = await receive()
        body += message.get("body", b"")

        async def again():  # type: ignore[no-untyped-def]
            return message

        seen.requests.append((scope["method"], scope["path"], {
            k.decode(): v.decode() for k, v in scope["headers"]}, body))
        return await app(scope, again, send)
    return wrapped


@pytest.fixture
async def pair(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pair]:
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # cheap scrypt, as in the API tests
    agents = AgentDirectory()
    keys = {"ann": agents.add("ann", "agent"), "bob": agents.add("bob", "agent")}
    store = MemoryStore()
    store.owner["c-b"] = "node-b"
    store.apis = {"node-a": "http://node-a", "node-b": "http://node-b"}
    owner = PaymentManager(None)
    owner.call_started("c-b", "agent=ann")
    seen = Seen()
    app_b = create_app(owner, agents)
    router_b = ClusterRouter(_recording(app_b, seen), node="node-b", store=store,
                             local=lambda c: c in owner.calls, guard=app_b.state.key_guard,
                             assertions=NodeAssertions(KEY, "node-b"))
    to_b = httpx.AsyncClient(transport=httpx.ASGITransport(router_b))
    app_a = create_app(PaymentManager(None), agents)
    router_a = ClusterRouter(app_a, node="node-a", store=store, local=lambda c: False,
                             guard=app_a.state.key_guard,
                             assertions=NodeAssertions(KEY, "node-a"), http=to_b)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(router_a),
                                 base_url="http://node-a") as a, httpx.AsyncClient(
            transport=httpx.ASGITransport(router_b), base_url="http://node-b") as b:
        yield Pair(a, b, agents, owner, seen, keys)
    await router_a.aclose()
    await router_b.aclose()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_forward_acts_on_the_owner_as_the_agent_without_its_key(pair: Pair) -> None:
    r = await pair.a.post("/v1/calls/c-b/payments", json={}, headers=_bearer(pair.keys["ann"]))
    assert r.status_code == 201, r.text
    sid = r.json()["sid"]
    assert pair.owner.sessions[sid].agent_id == "ann"  # done on the owner, as ann
    method, path, headers, _ = pair.seen.requests[-1]
    assert (method, path) == ("POST", "/v1/calls/c-b/payments")
    assert "authorization" not in headers  # the key never left node-a
    assert pair.keys["ann"] not in str(headers)
    assert headers["x-toneguard-assertion"]
    # The listing on node-a includes node-b's call for ann (asked with an assertion too).
    listed = (await pair.a.get("/v1/calls", headers=_bearer(pair.keys["ann"]))).json()
    assert [c["call_id"] for c in listed] == ["c-b"]
    assert "authorization" not in pair.seen.requests[-1][2]


async def test_the_owner_still_authorises_the_agent_it_is_told_about(pair: Pair) -> None:
    r = await pair.a.post("/v1/calls/c-b/payments", json={}, headers=_bearer(pair.keys["bob"]))
    assert r.status_code == 403  # bob is a real agent, but the call is ann's


async def test_a_wrong_key_is_refused_by_the_node_it_was_given_to(pair: Pair) -> None:
    r = await pair.a.post("/v1/calls/c-b/payments", json={},
                          headers=_bearer(pair.keys["ann"][:-2] + "xx"))
    assert r.status_code == 401
    r = await pair.a.post("/v1/calls/c-b/payments", json={})
    assert r.status_code == 401
    assert pair.seen.requests == []  # nothing reached the owner


async def test_a_replayed_forward_is_refused(pair: Pair) -> None:
    r = await pair.a.post("/v1/calls/c-b/payments", json={}, headers=_bearer(pair.keys["ann"]))
    assert r.status_code == 201
    _, path, headers, body = pair.seen.requests[-1]
    copied = {k: v for k, v in headers.items() if k in (
        "x-toneguard-assertion", "x-toneguard-forwarded", "content-type")}
    before = len(pair.owner.sessions)
    r = await pair.b.post(path, content=body, headers=copied)
    assert r.status_code == 401 and r.json() == {"detail": "invalid node assertion"}
    assert len(pair.owner.sessions) == before


@pytest.mark.parametrize("change", ["body", "path", "method"])
async def test_an_altered_forward_is_refused(pair: Pair, change: str) -> None:
    path = "/v1/calls/c-b/payments"
    header = NodeAssertions(KEY, "node-a").sign("node-b", "ann", "POST", path, "", b"{}")
    h = {"x-toneguard-assertion": header, "x-toneguard-forwarded": "1",
         "content-type": "application/json"}
    if change == "body":
        r = await pair.b.post(path, content=b'{"fields": []}', headers=h)
    elif change == "path":
        r = await pair.b.post("/v1/calls/c-b/assign", content=b"{}", headers=h)
    else:
        r = await pair.b.put(path, content=b"{}", headers=h)
    assert r.status_code == 401
    assert pair.owner.sessions == {}
    r = await pair.b.post(path, content=b"{}", headers=h)  # the same, unaltered: it works
    assert r.status_code == 201, r.text


async def test_forged_expired_misaddressed_and_unknown_agent_assertions_are_refused(
        pair: Pair) -> None:
    def get(header: str) -> httpx.Request:
        return pair.b.build_request("GET", "/v1/calls/c-b",
                                    headers={"x-toneguard-assertion": header})

    forged = NodeAssertions(os.urandom(32), "node-a").sign("node-b", "ann", "GET",
                                                             "/v1/calls/c-b", "", b"")
    expired = NodeAssertions(KEY, "node-a", clock=lambda: time.time() - 60).sign(
        "node-b", "ann", "GET", "/v1/calls/c-b", "", b"")
    far = NodeAssertions(KEY, "node-a", clock=lambda: time.time() + 3600).sign(
        "node-b", "ann", "GET", "/v1/calls/c-b", "", b"")
    elsewhere = NodeAssertions(KEY, "node-a").sign("node-c", "ann", "GET", "/v1/calls/c-b",
                                                   "", b"")
    ghost = NodeAssertions(KEY, "node-a").sign("node-b", "mallory", "GET", "/v1/calls/c-b",
                                               "", b"")
    for header in (forged, expired, far, elsewhere, ghost, "garbage", "a.b", ""):
        r = await pair.b.send(get(header))
        assert r.status_code == 401, header
    good = NodeAssertions(KEY, "node-a").sign("node-b", "ann", "GET", "/v1/calls/c-b", "", b"")
    pair.agents.revoke("ann")
    assert (await pair.b.send(get(good))).status_code == 401  # revoked on the owner
    assert pair.seen.requests == []  # none of them reached the app


async def test_a_supervisor_assertion_gets_the_supervisor_role_from_the_owner(
        pair: Pair) -> None:
    pair.agents.add("sue", "supervisor")
    header = NodeAssertions(KEY, "node-a").sign("node-b", "sue", "GET", "/v1/calls", "", b"")
    r = await pair.b.get("/v1/calls", headers={"x-toneguard-assertion": header})
    assert r.status_code == 200 and [c["call_id"] for c in r.json()] == ["c-b"]


def test_the_assertion_key_is_derived_from_the_store_key_not_equal_to_it(
        tmp_path: Path) -> None:
    raw = os.urandom(32)
    path = tmp_path / "store.key"
    path.write_text(base64.b64encode(raw).decode())
    derived = assertion_key(path)
    assert len(derived) == 32 and derived != raw
    assert assertion_key(path) == derived
