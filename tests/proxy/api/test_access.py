"""Access to payments over the real API (HTTP and WebSocket on loopback), action by action.

Every payment action — read, start, update (complete / cancel / re-capture), assign — and the
event stream is tried by the agent the call is assigned to, by another agent, by a supervisor,
and by no one (no key, a malformed key, a key with a wrong secret). Each refused attempt gets its
status code AND leaves the payment as it was; each allowed one still works; events reach the
call's agent and supervisors only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from proxy.api.auth import AgentDirectory
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.types import DigitEvent
from proxy.securepay.audit import AuditLog
from proxy.service.config import load_config
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.conftest import Stack

PAN, EXPIRY, CODE = "4111111111111111", "1230", "123"
CAPTURE = {"Capture": "payment-card-number"}
COMPLETE = {"Status": "complete"}
CANCEL = {"Status": "cancel"}


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


async def _call(node: Node, call_id: str) -> None:
    await node.registry.handle({"command": "offer", "call-id": call_id, "from-tag": "caller",
                                "sdp": audio_sdp("127.0.0.1", 4000)})


async def _assigned(stack: Stack, http: httpx.AsyncClient) -> str:
    """Call "mine" assigned to agent-demo, "theirs" to agent-other; a payment on "mine"."""
    for call, agent in (("mine", "agent-demo"), ("theirs", "agent-other")):
        await _call(stack.node, call)
        r = await http.post(f"/v1/calls/{call}/assign", json={"agent_id": agent},
                            headers=bearer(stack.supervisor_key))
        assert r.status_code == 200, r.text
    r = await http.post("/v1/calls/mine/payments", json={}, headers=bearer(stack.agent_key))
    assert r.status_code == 201, r.text
    return r.json()["sid"]


def _key_digits(node: Node, call_id: str, keys: str) -> None:
    """The caller keys ``keys``: the media plane's digit callback, as the engine calls it."""
    for k, key in enumerate(keys):
        node.payments.on_digit(call_id, "caller", DigitEvent(f"{call_id}/caller/0", key,
                                                             "inband", 200.0 * k, 80.0))


def _state(stack: Stack, sid: str) -> tuple[str, str, dict[str, str]]:
    session = stack.node.payments.sessions[sid]
    return session.status, session.current or "", session.masked()


async def test_no_key_or_a_bad_key_is_refused_on_every_route(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        sid = await _assigned(stack, http)
        _key_digits(stack.node, "mine", PAN[:6])
        before = _state(stack, sid)
        routes = [("GET", f"/v1/calls/mine/payments/{sid}", None),
                  ("POST", "/v1/calls/theirs/payments", {}),
                  ("POST", f"/v1/calls/mine/payments/{sid}", CAPTURE),
                  ("POST", f"/v1/calls/mine/payments/{sid}", COMPLETE),
                  ("POST", f"/v1/calls/mine/payments/{sid}", CANCEL),
                  ("POST", "/v1/calls/mine/assign", {"agent_id": "agent-other"}),
                  ("GET", "/v1/calls", None), ("GET", "/v1/me", None)]
        wrong_secret = stack.supervisor_key[:-2] + ("aa" if stack.supervisor_key[-2:] != "aa"
                                                    else "bb")
        refused = [{}, {"Authorization": "Basic YWdlbnQtZGVtbzpwdw=="}, bearer("tg_0000_nope"),
                   bearer("not-a-key"), bearer(wrong_secret)]
        for n, headers in enumerate(refused):
            for method, path, body in routes:
                r = await http.request(method, path, json=body, headers=headers)
                # 401, until this source has failed often enough to be told to wait (429).
                assert r.status_code in (401, 429), (n, method, path, r.status_code)
                if r.status_code == 401:
                    assert r.headers["www-authenticate"] == "Bearer"
                assert "4111" not in r.text
        # Nothing changed: same payment state, same assignment, no second payment.
        assert _state(stack, sid) == before and before[0] == "capturing"
        assert stack.node.payments.calls["mine"].agent_id == "agent-demo"
        assert [s.call_id for s in stack.node.payments.sessions.values()] == ["mine"]
        # And the owner, with the right key, still gets through (from its own address).
        owner = httpx.AsyncClient(base_url=stack.api, transport=httpx.AsyncHTTPTransport(
            local_address="127.0.0.2"))
        async with owner:
            r = await owner.get(f"/v1/calls/mine/payments/{sid}",
                                headers=bearer(stack.agent_key))
        assert r.status_code == 200 and r.json()["fields"]["payment-card-number"] == "••••••"
    for key in ("", "tg_0000_nope", wrong_secret):
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(f"{stack.api.replace('http', 'ws')}/v1/events",
                                          subprotocols=_subprotocols(key)):
                pass


def _subprotocols(key: str) -> list[Subprotocol]:
    """How a client presents its key on the event stream (never in the URL)."""
    return [Subprotocol("toneguard"), Subprotocol(key)] if key else []


async def test_another_agent_gets_403_on_every_action_and_changes_nothing(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        sid = await _assigned(stack, http)
        _key_digits(stack.node, "mine", PAN[:6])
        before = _state(stack, sid)
        other = bearer(stack.other_agent_key)
        tries = [("GET", f"/v1/calls/mine/payments/{sid}", None),
                 ("POST", "/v1/calls/mine/payments", {}),
                 ("POST", f"/v1/calls/mine/payments/{sid}", CAPTURE),
                 ("POST", f"/v1/calls/mine/payments/{sid}", COMPLETE),
                 ("POST", f"/v1/calls/mine/payments/{sid}", CANCEL),
                 ("POST", "/v1/calls/mine/assign", {"agent_id": "agent-other"}),
                 ("POST", "/v1/calls/theirs/assign", {"agent_id": "agent-other"})]
        denied_before = _actions(stack).count("denied")
        for method, path, body in tries:
            r = await http.request(method, path, json=body, headers=other)
            assert r.status_code == 403, (method, path, body, r.status_code, r.text)
            assert "4111" not in r.text
        # Its own call id with the other call's payment id finds nothing.
        for body in (None, CAPTURE, COMPLETE, CANCEL):
            r = await http.request("GET" if body is None else "POST",
                                   f"/v1/calls/theirs/payments/{sid}", json=body, headers=other)
            assert r.status_code == 404, (body, r.status_code, r.text)
        assert _state(stack, sid) == before and before[0] == "capturing"
        assert stack.node.payments.calls["mine"].agent_id == "agent-demo"
        assert len(stack.node.payments.sessions) == 1
        assert _actions(stack).count("denied") - denied_before == 5  # each call-scoped refusal
        # Its own call it may use; the owner of "mine" still acts on it.
        r = await http.post("/v1/calls/theirs/payments", json={}, headers=other)
        assert r.status_code == 201
        mine = bearer(stack.agent_key)
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CAPTURE, headers=mine)
        assert r.status_code == 200 and r.json()["current_field"] == "payment-card-number"
        assert r.json()["fields"]["payment-card-number"] == ""  # re-capture starts afresh
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=COMPLETE, headers=mine)
        assert r.status_code == 409  # allowed to try; the state forbids it (still capturing)
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CANCEL, headers=mine)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"


async def test_a_supervisor_may_read_and_act_on_any_call(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        sid = await _assigned(stack, http)
        sup = bearer(stack.supervisor_key)
        r = await http.get(f"/v1/calls/mine/payments/{sid}", headers=sup)
        assert r.status_code == 200 and r.json()["sid"] == sid
        r = await http.post("/v1/calls/mine/payments", json={}, headers=sup)
        assert r.status_code == 409  # one payment at a time, even for a supervisor
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CAPTURE, headers=sup)
        assert r.status_code == 200
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CANCEL, headers=sup)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = await http.post("/v1/calls/theirs/payments", json={}, headers=sup)
        assert r.status_code == 201
        r = await http.post("/v1/calls/nope/payments", json={}, headers=sup)
        assert r.status_code == 404
        r = await http.post("/v1/calls/mine/assign", json={"agent_id": "agent-other"},
                            headers=sup)
        assert r.status_code == 200
        # Re-assigned: the former agent is out, the new one is in.
        r = await http.get(f"/v1/calls/mine/payments/{sid}", headers=bearer(stack.agent_key))
        assert r.status_code == 403
        r = await http.get(f"/v1/calls/mine/payments/{sid}",
                           headers=bearer(stack.other_agent_key))
        assert r.status_code == 200
        r = await http.post("/v1/calls/nope/assign", json={"agent_id": "agent-demo"},
                            headers=sup)
        assert r.status_code == 404


@pytest.fixture
async def node_without_gateway(media_ports: tuple[int, int]
                               ) -> AsyncIterator[tuple[Node, dict[str, str]]]:
    """A node with no gateway configured: a ready payment fails to submit and stays
    retryable, so ``complete`` (a resubmission) can be tried by each principal."""
    agents = AgentDirectory()
    keys = {name: agents.add(name, role) for name, role in (
        ("agent-demo", "agent"), ("agent-other", "agent"), ("supervisor", "supervisor"))}
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1]},
        "api": {"listen": "127.0.0.1:0"}, "gateway": {"url": ""}})
    node = await Node.start(config, agents=agents, audit=AuditLog(None))
    yield node, keys
    await node.stop()


async def test_complete_is_the_owner_s_and_supervisor_s_only(
        node_without_gateway: tuple[Node, dict[str, str]]) -> None:
    node, keys = node_without_gateway
    assert node.api_address is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.api_address[1]}") as http:
        await _call(node, "mine")
        r = await http.post("/v1/calls/mine/assign", json={"agent_id": "agent-demo"},
                            headers=bearer(keys["supervisor"]))
        assert r.status_code == 200
        r = await http.post("/v1/calls/mine/payments", json={},
                            headers=bearer(keys["agent-demo"]))
        sid = r.json()["sid"]
        _key_digits(node, "mine", PAN + "#" + EXPIRY + "#" + CODE + "#")
        session = node.payments.sessions[sid]
        assert (session.status, session.error) == ("failed-submit", "gateway-not-configured")
        path = f"/v1/calls/mine/payments/{sid}"
        submissions = _submissions(node)
        for key in (None, "tg_0000_nope"):
            assert (await http.post(path, json=COMPLETE, headers=bearer(key))).status_code == 401
        r = await http.post(path, json=COMPLETE, headers=bearer(keys["agent-other"]))
        assert r.status_code == 403
        assert _submissions(node) == submissions and session.status == "failed-submit"
        for who in ("agent-demo", "supervisor"):
            r = await http.post(path, json=COMPLETE, headers=bearer(keys[who]))
            assert r.status_code == 200 and r.json()["status"] == "failed-submit"
            assert r.json()["fields"]["payment-card-number"].endswith("1111")
            assert PAN not in r.text
        assert _submissions(node) == submissions + 2  # each allowed retry resubmitted


def _submissions(node: Node) -> int:
    return sum(1 for r in node.payments.audit.records if r["action"] == "payment.complete")


def _actions(stack: Stack) -> list[str]:
    return [r["action"] for r in stack.node.payments.audit.records]


class _Listener:
    """One WebSocket client of the event stream, collecting what it is sent."""

    def __init__(self, stack: Stack, key: str) -> None:
        self._url = f"{stack.api.replace('http', 'ws')}/v1/events"
        self._key = key
        self.events: list[dict] = []
        self._ws: websockets.ClientConnection | None = None

    async def __aenter__(self) -> _Listener:
        self._ws = await websockets.connect(self._url, subprotocols=_subprotocols(self._key))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._ws is not None
        await self._ws.close()

    async def until(self, call_id: str, kind: str, timeout: float = 10.0) -> list[dict]:
        """Collect events until one of ``kind`` on ``call_id`` (the queue is FIFO: everything
        published before it has been delivered, or filtered out, by then)."""
        assert self._ws is not None
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await self._ws.recv())
                self.events.append(event)
                if event["call_id"] == call_id and event["type"] == kind:
                    return self.events


async def _subscribed(stack: Stack) -> None:
    """Until the server has subscribed all three listeners to the bus."""
    async with asyncio.timeout(10):
        while len(stack.node.payments.bus._subscribers) < 3:
            await asyncio.sleep(0.01)


async def test_events_reach_the_call_s_agent_and_supervisors_only(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http, \
            _Listener(stack, stack.agent_key) as mine, \
            _Listener(stack, stack.other_agent_key) as theirs, \
            _Listener(stack, stack.supervisor_key) as supervisor:
        await _subscribed(stack)
        sid = await _assigned(stack, http)  # agent-demo's payment on "mine"
        _key_digits(stack.node, "mine", PAN[:8])
        r = await http.post("/v1/calls/theirs/payments", json={},
                            headers=bearer(stack.other_agent_key))
        other_sid = r.json()["sid"]
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CANCEL,
                            headers=bearer(stack.agent_key))
        assert r.status_code == 200
        # Each agent's stream, up to the last event of ITS call, holds only its call's events.
        got_mine = await mine.until("mine", "ended")
        got_theirs = await theirs.until("theirs", "started")
        everything = await supervisor.until("mine", "ended")
    assert {e["call_id"] for e in got_mine} == {"mine"}
    assert got_mine[0]["type"] == "started" and len(got_mine) >= 3
    assert got_mine[-2]["masked"]["payment-card-number"] == "••••••••"  # progress did arrive
    assert {(e["call_id"], e["sid"]) for e in got_theirs} == {("theirs", other_sid)}
    assert {e["call_id"] for e in everything} == {"mine", "theirs"}
    assert len(everything) == len(got_mine) + len(got_theirs)
    assert all(PAN[:6] not in json.dumps(e) for e in everything)


async def test_events_follow_the_call_when_it_is_reassigned(stack: Stack) -> None:
    """A supervisor moves the call (and its payment) to another agent: from then on the
    former agent is sent nothing of it, the new one everything, as the REST routes do."""
    async with httpx.AsyncClient(base_url=stack.api) as http, \
            _Listener(stack, stack.agent_key) as former, \
            _Listener(stack, stack.other_agent_key) as new, \
            _Listener(stack, stack.supervisor_key) as _supervisor:
        await _subscribed(stack)
        sid = await _assigned(stack, http)
        await former.until("mine", "started")
        r = await http.post("/v1/calls/mine/assign", json={"agent_id": "agent-other"},
                            headers=bearer(stack.supervisor_key))
        assert r.status_code == 200
        _key_digits(stack.node, "mine", PAN[:4])
        r = await http.post(f"/v1/calls/mine/payments/{sid}", json=CANCEL,
                            headers=bearer(stack.other_agent_key))
        assert r.status_code == 200
        r = await http.post("/v1/calls/theirs/payments", json={},
                            headers=bearer(stack.agent_key))
        assert r.status_code == 403  # (agent-demo has no call now; a marker for its stream)
        r = await http.post("/v1/calls/theirs/assign", json={"agent_id": "agent-demo"},
                            headers=bearer(stack.supervisor_key))
        r = await http.post("/v1/calls/theirs/payments", json={},
                            headers=bearer(stack.agent_key))
        assert r.status_code == 201
        got_new = await new.until("mine", "ended")
        got_former = await former.until("theirs", "started")
    assert [e["type"] for e in got_former] == ["started", "started"]  # its own two only
    assert [e["call_id"] for e in got_former] == ["mine", "theirs"]
    assert [e["type"] for e in got_new][-1] == "ended"
    assert any(e["masked"].get("payment-card-number") == "••••" for e in got_new)
