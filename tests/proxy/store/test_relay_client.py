"""NgRelay over the shared ng client: the owner's reply handed on as it came, error or not;
an owner that does not answer leaves the command to this node. A real redis-server says who
owns the call; the owner is the product's ng server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.control.ng import NgError
from proxy.control.ng_server import NgServer
from proxy.store.redis_store import OWNERS
from proxy.store.takeover import MEDIA, RELAYED, NgRelay, alive_key
from tests.conftest import pick_udp_port
from tests.proxy.store.conftest import RedisServer

pytestmark = [pytest.mark.peer]


@pytest.fixture
async def owner() -> AsyncIterator[tuple[tuple[str, int], list[dict[str, Any]]]]:
    """node-b's ng socket: ``query`` answers ok, ``delete`` an error; what came is kept."""
    received: list[dict[str, Any]] = []

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        received.append(body)
        if body["command"] == "delete":
            raise NgError("Call-ID not found")
        return {"result": "ok", "created": 1}

    server = NgServer(handle)
    address = await server.start("127.0.0.1", 0)
    yield address, received
    await server.stop()


async def _owned_by_b(redis_server: RedisServer, ng: str) -> None:
    client = redis_server.client()
    try:
        await client.hset(OWNERS, "c1", "node-b")
        await client.set(alive_key("node-b"), "x")
        await client.hset(MEDIA, "node-b", json.dumps({
            "address": "127.0.0.3", "advertised_address": "127.0.0.3", "port_min": 40000,
            "port_max": 40099, "ng": ng}))
    finally:
        await client.aclose()


async def test_the_owners_reply_is_handed_on_as_it_came_error_or_not(
        redis_server: RedisServer, owner: tuple[tuple[str, int], list[dict[str, Any]]]) -> None:
    """node-b owns the call: its ``ok`` and its ``error`` both come back unchanged (the relay
    never raises on an error reply), marked relayed by node-a on the way; a command already
    relayed, or for a call no other node owns, is not relayed."""
    (host, port), received = owner
    await _owned_by_b(redis_server, f"{host}:{port}")
    client = redis_server.client()
    relay = NgRelay(client, "node-a")
    try:
        ok = await relay.relay({"command": "query", "call-id": "c1"}, "c1")
        refused = await relay.relay({"command": "delete", "call-id": "c1"}, "c1")
        # Already relayed once: answered here, never sent on again (no loops).
        again = await relay.relay({"command": "query", "call-id": "c1", RELAYED: "node-c"}, "c1")
        # Not owned by another node: answered here.
        mine = await relay.relay({"command": "query", "call-id": "c2"}, "c2")
    finally:
        await client.aclose()
    assert ok == {"result": "ok", "created": 1}
    assert refused == {"result": "error", "error-reason": "Call-ID not found"}
    assert again is None and mine is None
    assert [(b["command"], b[RELAYED]) for b in received] == [("query", "node-a"),
                                                               ("delete", "node-a")]
    assert relay.relayed == 2


async def test_an_owner_that_does_not_answer_leaves_the_command_here(
        redis_server: RedisServer) -> None:
    """Nothing listens at the owner's ng address: two sends, then None (this node answers)."""
    await _owned_by_b(redis_server, f"127.0.0.1:{pick_udp_port()}")
    client = redis_server.client()
    relay = NgRelay(client, "node-a")
    try:
        assert await relay.relay({"command": "query", "call-id": "c1"}, "c1") is None
    finally:
        await client.aclose()
    assert relay.relayed == 0
