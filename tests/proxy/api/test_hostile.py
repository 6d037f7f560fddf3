"""The API under hostile input, over real sockets: key floods, huge bodies, keys in URLs,
borrowed Idempotency-Keys, echoed input, open endpoints, odd static paths (issue 12)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from proxy.api import auth
from proxy.api.auth import AgentDirectory
from proxy.control.ng_client import NgClient
from proxy.demo.sdp_builder import audio_sdp
from proxy.securepay.audit import AuditLog
from proxy.service.cli import main
from proxy.service.config import load_config
from proxy.service.logging import configure_logging
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.conftest import Stack

PAN = "4111111111111111"


@dataclass
class Served:
    node: Node
    api: str
    port: int
    agents_file: Path
    keys: dict[str, str]
    logs: io.StringIO

    def ws_url(self) -> str:
        return self.api.replace("http", "ws") + "/v1/events"


async def _start(tmp_path: Path, media_ports: tuple[int, int], **api: object) -> Served:
    logs = io.StringIO()
    configure_logging("json", "info", stream=logs)
    agents_file = tmp_path / "agents.json"
    directory = AgentDirectory(agents_file)
    keys = {name: directory.add(name, role) for name, role in (
        ("alice", "agent"), ("bob", "agent"), ("sue", "supervisor"))}
    directory.save()
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1]},
        "api": {"listen": "127.0.0.1:0", "agents_file": str(agents_file), **api},
    })
    node = await Node.start(config, audit=AuditLog(None))
    assert node.api_address is not None
    port = node.api_address[1]
    return Served(node, f"http://127.0.0.1:{port}", port, agents_file, keys, logs)


@pytest.fixture
async def served(tmp_path: Path, media_ports: tuple[int, int]) -> AsyncIterator[Served]:
    """A node whose API limits are short enough to watch them expire."""
    s = await _start(tmp_path, media_ports, auth_failures_per_source=10,
                     auth_failure_window_seconds=5, key_lockout_failures=3,
                     key_lockout_seconds=3)
    yield s
    await s.node.stop()
    configure_logging("console", "info")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def from_source(address: str) -> httpx.AsyncHTTPTransport:
    """Loopback has every 127/8 address: each is a distinct source for the rate limits."""
    return httpx.AsyncHTTPTransport(local_address=address)


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.1)


async def _ws_status(url: str, key: str, source: str = "127.0.0.1") -> int:
    """101 if the events socket accepted ``key``, else the handshake's HTTP status."""
    try:
        async with websockets.connect(url, subprotocols=[Subprotocol("toneguard"),
                                                         Subprotocol(key)],
                                      local_addr=(source, 0), open_timeout=10) as ws:
            assert ws.subprotocol == "toneguard"
            return 101
    except websockets.exceptions.InvalidStatus as exc:
        return exc.response.status_code


async def _call(node: Node, call_id: str, agent: str) -> None:
    await node.registry.handle({"command": "offer", "call-id": call_id, "from-tag": "caller",
                                "sdp": audio_sdp("127.0.0.1", 4000)})
    node.payments.assign(call_id, agent, "test")


# --- key floods ----------------------------------------------------------------------------

async def _pings_during(served: Served, keys: list[str], source: str
                       ) -> tuple[list[float], list[int]]:
    """Handshakes with each of ``keys`` at once from ``source`` while ng is pinged: every
    ping's round trip, and the handshakes' statuses."""
    loop = asyncio.get_running_loop()
    ngc = await NgClient.connect(served.node.ng_address)
    burst = asyncio.gather(*(_ws_status(served.ws_url(), k, source) for k in keys))
    trips: list[float] = []
    while not burst.done() or len(trips) < 5:
        sent = loop.time()
        await ngc.request({"command": "ping"})
        trips.append(loop.time() - sent)
    ngc.close()
    return trips, await burst


async def test_a_burst_of_bad_keys_keeps_ng_answering_then_gets_429(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 concurrent WebSocket handshakes with tg_-shaped wrong keys (issue 12: 177 in 10 s
    cut a call's relay to a third while scrypt ran on the event loop). Only the first 10 keys
    are hashed at all, each in a thread and none on the event loop; ng pings sent during the
    burst are all answered promptly; then the source is told 429 with Retry-After over HTTP
    (a refused handshake is a 403 either way), the right key works from another source at
    once, and from this one once the window ends. No uvicorn error is logged."""
    hashed_on: list[int] = []
    real_hash = auth._hash

    def recorded_hash(secret: str, salt: bytes) -> bytes:
        hashed_on.append(threading.get_ident())
        return real_hash(secret, salt)
    monkeypatch.setattr(auth, "_hash", recorded_hash)
    # What a burst costs this machine now with nothing to hash (keys not even key-shaped,
    # from another source): the test shares its loop with the server and its clients, and a
    # shared CI host's CPU steal stretches every round trip, so the bound scales with it.
    unhashed, _ = await _pings_during(
        served, [f"nokey{secrets.token_hex(8)}" for _ in range(60)], "127.0.0.3")
    assert hashed_on == []
    guard = served.node._api.config.app.state.key_guard  # type: ignore[union-attr]
    before = dict(guard.counters)
    retransmitted = served.node.ng.counters["retransmissions"]

    key_id = served.keys["bob"].split("_")[1]  # bob may get locked out: alice is used below
    bad = [f"tg_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}" for _ in range(50)]
    bad += [f"tg_{key_id}_{secrets.token_urlsafe(32)}" for _ in range(10)]
    trips, statuses = await _pings_during(served, bad, "127.0.0.1")
    # The regression itself, exactly: scrypt ran on the event loop (old code: ~60 x 74 ms
    # there, a ping waited 5.5 s). Only the first 10 keys are hashed, each on the guard's thread.
    assert len(hashed_on) == 10, len(hashed_on)
    assert threading.get_ident() not in hashed_on, "scrypt ran on the event loop"
    # ng kept answering: every ping answered (NgClient raises after its retransmissions), and
    # typically promptly. The median, not the slowest: CI saw one ping of ~1.7 s three times,
    # 0.04-0.2 s on every run here, cause not found (the message says what ng retransmitted).
    typical, bound = statistics.median(trips), max(0.5, 3 * statistics.median(unhashed))
    assert typical < bound, (
        f"ng pings took {typical:.3f} s (median; slowest {max(trips):.3f} s) during the burst, "
        f"{statistics.median(unhashed):.3f} s unhashed; ng retransmissions "
        f"{served.node.ng.counters['retransmissions'] - retransmitted}")
    assert set(statuses) == {403}, statuses

    async with httpx.AsyncClient(base_url=served.api) as http:
        limited = await http.get("/v1/me", headers=bearer(served.keys["alice"]))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert served.keys["alice"] not in limited.text
    async with httpx.AsyncClient(base_url=served.api, transport=from_source("127.0.0.2")) as h2:
        me = await h2.get("/v1/me", headers=bearer(served.keys["alice"]))
        assert me.status_code == 200 and me.json()["agent_id"] == "alice"
    assert await _ws_status(served.ws_url(), served.keys["alice"], "127.0.0.2") == 101

    async def source_cleared() -> bool:
        return await _ws_status(served.ws_url(), served.keys["alice"]) == 101
    await _until(source_cleared)
    assert guard.counters["limited"] - before["limited"] >= 40
    assert guard.counters["refused"] - before["refused"] == 10
    assert '"level": "error"' not in served.logs.getvalue()


async def test_wrong_secrets_lock_the_key_out_for_a_while_and_are_audited(
        served: Served) -> None:
    alice = served.keys["alice"]
    key_id = alice.split("_")[1]
    wrong = f"tg_{key_id}_{'W' * 43}"
    for n, source in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        async with httpx.AsyncClient(base_url=served.api, transport=from_source(source)) as h:
            r = await h.get("/v1/me", headers=bearer(wrong))
            assert r.status_code == 401, (n, r.text)
    async with httpx.AsyncClient(base_url=served.api, transport=from_source("127.0.0.5")) as h:
        locked = await h.get("/v1/me", headers=bearer(alice))
        assert locked.status_code == 429 and "locked" in locked.json()["detail"]
        assert (await h.get("/v1/me", headers=bearer(served.keys["bob"]))).status_code == 200

        async def unlocked() -> bool:
            return (await h.get("/v1/me", headers=bearer(alice))).status_code == 200
        await _until(unlocked)
    records = [r for r in served.node.payments.audit.records if r["action"] == "auth.lockout"]
    assert len(records) == 1 and records[0]["key_id"] == key_id
    everything = str(served.node.payments.audit.records) + served.logs.getvalue()
    assert "W" * 43 not in everything and alice.split("_", 2)[2] not in everything


# --- bodies ------------------------------------------------------------------------------

async def _status_line(port: int, head: bytes, body: list[bytes]) -> bytes:
    """Send ``head`` and ``body`` (never finishing a chunked body) and read the status line:
    a server that waits for the whole body before answering times out here."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in body:
            writer.write(part)
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed: read what it said
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_bodies_over_the_limit_are_refused_before_authentication(
        served: Served) -> None:
    path = b"POST /v1/calls/c1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    declared = await _status_line(served.port, path + b"Content-Length: 100000000\r\n\r\n", [])
    assert declared.startswith(b"HTTP/1.1 413"), declared
    chunked = await _status_line(served.port, path + b"Transfer-Encoding: chunked\r\n\r\n",
                                 [_chunk(b" " * 16384) for _ in range(8)])  # 128 KiB, unended
    assert chunked.startswith(b"HTTP/1.1 413"), chunked
    async with httpx.AsyncClient(base_url=served.api) as http:
        small = await http.post("/v1/calls/c1/payments", content=b" " * 10_000 + b"{}",
                                headers={"Content-Type": "application/json"})
        assert small.status_code == 401  # under the limit: on to authentication
        big = await http.post("/v1/calls/c1/payments", content=b" " * 70_000,
                              headers=bearer(served.keys["alice"]))
        assert big.status_code == 413


# --- keys in URLs and logs ------------------------------------------------------------------

async def test_the_events_socket_takes_its_key_as_a_subprotocol_never_from_the_url(
        served: Served) -> None:
    # uvicorn sets its loggers' levels process-wide (the gateway in another test: warning).
    uvicorn_log = logging.getLogger("uvicorn.error")
    level = uvicorn_log.level
    uvicorn_log.setLevel(logging.INFO)
    try:
        await _events_key_checks(served)
    finally:
        uvicorn_log.setLevel(level)


async def _events_key_checks(served: Served) -> None:
    alice = served.keys["alice"]
    assert await _ws_status(served.ws_url(), alice) == 101
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(f"{served.ws_url()}?key={alice}", open_timeout=10):
            pass
    assert await _ws_status(served.ws_url(), "tg_00000000_nope") == 403
    logs = served.logs.getvalue()
    assert "WebSocket /v1/events" in logs  # uvicorn logged the handshakes ...
    assert alice.split("_", 2)[2] not in logs and "key=[redacted]" in logs  # ... not the key


# --- Idempotency-Keys, 422s --------------------------------------------------------------

async def test_idempotency_keys_are_scoped_per_agent_and_call(served: Served) -> None:
    for call, agent in (("bobs", "bob"), ("alices", "alice"), ("alices2", "alice")):
        await _call(served.node, call, agent)
    idem = {"Idempotency-Key": "order-1"}
    async with httpx.AsyncClient(base_url=served.api) as http:
        bobs = await http.post("/v1/calls/bobs/payments", json={},
                               headers={**bearer(served.keys["bob"]), **idem})
        assert bobs.status_code == 201
        alices = await http.post("/v1/calls/alices/payments", json={},
                                 headers={**bearer(served.keys["alice"]), **idem})
        assert alices.status_code == 201 and alices.json()["call_id"] == "alices"
        assert alices.json()["sid"] != bobs.json()["sid"]  # her own payment, not bob's
        other_call = await http.post("/v1/calls/alices2/payments", json={},
                                     headers={**bearer(served.keys["alice"]), **idem})
        assert other_call.json()["sid"] not in (alices.json()["sid"], bobs.json()["sid"])
        retried = await http.post("/v1/calls/alices/payments", json={},
                                  headers={**bearer(served.keys["alice"]), **idem})
        assert retried.json()["sid"] == alices.json()["sid"]  # a true retry is still a retry


async def test_invalid_requests_name_the_field_never_the_value(served: Served) -> None:
    await _call(served.node, "c1", "alice")
    async with httpx.AsyncClient(base_url=served.api) as http:
        r = await http.post("/v1/calls/c1/payments", json={"amount": PAN + "x", "currency": PAN},
                            headers=bearer(served.keys["alice"]))
        assert r.status_code == 422
        assert r.json()["fields"] == ["body.amount", "body.currency"]
        r2 = await http.post("/v1/calls/c1/payments", content=b'{"amount": "\xff' +
                             PAN.encode() + b'"', headers=bearer(served.keys["alice"]))
        r3 = await http.post("/v1/calls/c1/assign", json={"agent_id": PAN * 5},
                             headers=bearer(served.keys["sue"]))
    for response in (r, r2, r3):
        assert response.status_code == 422 and PAN not in response.text
    assert PAN not in served.logs.getvalue()


# --- open endpoints, static paths, headers -------------------------------------------------

async def test_metrics_and_openapi_need_a_key_docs_are_off(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.api) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=bearer(served.keys["alice"]))
                ).status_code == 403
        scraped = await http.get("/metrics", headers=bearer(served.keys["sue"]))
        assert scraped.status_code == 200 and "toneguard_" in scraped.text
        assert (await http.get("/openapi.json")).status_code == 401
        assert "/v1/calls" in (await http.get("/openapi.json", headers=bearer(
            served.keys["alice"]))).json()["paths"]
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert (await http.get(path)).status_code == 404


async def test_public_metrics_is_a_switch(tmp_path: Path, media_ports: tuple[int, int]) -> None:
    s = await _start(tmp_path, media_ports, public_metrics=True)
    try:
        async with httpx.AsyncClient(base_url=s.api) as http:
            r = await http.get("/metrics")
            assert r.status_code == 200 and "toneguard_" in r.text
            assert (await http.get("/v1/calls")).status_code == 401
    finally:
        await s.node.stop()
        configure_logging("console", "info")


async def test_odd_static_paths_are_404_and_pages_carry_security_headers(
        served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.api) as http:
        for path in ("/static/%00", "/static/..%2fapi%2fapp.py", "/static/%2e%2e",
                     "/static/panel.js%00.html", "/static/" + "a" * 5000, "/static/%ff"):
            r = await http.get(path)
            assert r.status_code == 404, (path, r.status_code)
        js = await http.get("/static/panel.js")
        assert js.status_code == 200 and "WebSocket" in js.text
        panel = await http.get("/panel")
        calls = await http.get("/v1/calls", headers=bearer(served.keys["alice"]))
    csp = panel.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "'sha256-" in csp
    for response in (panel, calls, js):
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"


# --- the agents file while serving -----------------------------------------------------------

async def test_keys_added_rotated_and_revoked_while_serving_take_effect_at_once(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(served.agents_file)
    async with httpx.AsyncClient(base_url=served.api) as http:
        assert (await http.get("/v1/me", headers=bearer(served.keys["bob"]))).status_code == 200
        assert main(["agents", "add", "carol", "--file", file]) == 0
        carol = capsys.readouterr().out.strip()
        me = await http.get("/v1/me", headers=bearer(carol))
        assert me.status_code == 200 and me.json()["agent_id"] == "carol"
        assign = await http.post("/v1/calls/x/assign", json={"agent_id": "carol"},
                                 headers=bearer(served.keys["sue"]))
        assert assign.status_code == 404  # carol is known (no 422); the call is not

        assert main(["agents", "add", "bob", "--file", file, "--rotate"]) == 0
        new_bob = capsys.readouterr().out.strip()
        assert (await http.get("/v1/me", headers=bearer(served.keys["bob"]))).status_code == 401
        assert (await http.get("/v1/me", headers=bearer(new_bob))).status_code == 200

        assert main(["agents", "revoke", "carol", "--file", file]) == 0
        assert (await http.get("/v1/me", headers=bearer(carol))).status_code == 401
        assert (await http.get("/v1/me", headers=bearer(new_bob))).status_code == 200


# --- a few hostile requests against the whole stack ---------------------------------------

async def test_hostile_requests_over_real_sockets_leave_no_trace(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key = stack.agent_key
    requests: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", "/v1/calls/" + PAN + "/payments", {**bearer(key), "Idempotency-Key": PAN},
         b'{"amount": "' + PAN.encode() + b'"}'),
        ("POST", "/v1/calls/c/payments", bearer(key), b"[" * 20000 + b"]" * 20000),
        ("POST", "/v1/calls/c/payments", bearer(key), b"\xff\xfe" + PAN.encode()),
        ("GET", "/v1/calls?key=" + key, {}, b""),
        ("GET", "/static/%00", {}, b""),
        ("BREW", "/v1/me", bearer(key), b""),
        ("GET", "/v1/me", {"Authorization": "Bearer " + PAN}, b""),
        ("POST", "/v1/calls/c/assign", bearer(stack.supervisor_key),
         b'{"agent_id": {"a": [' * 500 + b"1" + b"]}" * 500 + b"}"),
    ]
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.api) as http:
        for method, path, headers, body in requests:
            r = await http.request(method, path, headers=headers, content=body)
            assert r.status_code < 500, (method, path[:40], r.status_code)
            text = r.text + str(r.headers)
            assert PAN not in text and key not in text
        assert (await http.get("/v1/me", headers=bearer(key))).status_code == 200
    assert time.monotonic() - started < 30
    # The node's log lines (the test's own HTTP client logs its URLs: not the node's).
    client = ("httpx", "httpcore")
    logs = "\n".join([line for line in stack.logs.getvalue().splitlines()
                      if json.loads(line).get("logger", "").split(".")[0] not in client]
                     + [logging.Formatter().format(r) for r in caplog.records
                        if not r.name.startswith(client)])
    assert "toneguard node started" in logs
    assert "Traceback" not in logs and PAN not in logs and key.split("_", 2)[2] not in logs


async def test_a_valid_key_costs_one_scrypt_then_comes_from_the_cache(served: Served) -> None:
    guard = served.node._api.config.app.state.key_guard  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=served.api) as http:
        for _ in range(5):
            r = await http.get("/v1/me", headers=bearer(served.keys["alice"]))
            assert r.status_code == 200
        near_miss = served.keys["alice"][:-1] + ("A" if served.keys["alice"][-1] != "A" else "B")
        assert (await http.get("/v1/me", headers=bearer(near_miss))).status_code == 401
    assert (guard.counters["verified"], guard.counters["cached"]) == (1, 4)
    assert guard.counters["refused"] == 1  # the near miss was hashed, not served from cache
