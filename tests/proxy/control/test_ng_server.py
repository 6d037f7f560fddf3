"""The ng UDP socket: bencode and JSON, cookies, retransmissions, malformed datagrams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.control import bencode
from proxy.control.ng import NgError
from proxy.control.ng_server import CookieCache, NgServer


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


@pytest.fixture
async def server() -> AsyncIterator[tuple[NgServer, list[dict[str, Any]], tuple[str, int]]]:
    calls: list[dict[str, Any]] = []

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if body["command"] == "boom":
            raise NgError("Unrecognized command")
        if body["command"] == "crash":
            raise RuntimeError("bug")
        return {"result": "ok", "echo": body.get("call-id", "")}

    srv = NgServer(handler)
    addr = await srv.start("127.0.0.1", 0)
    yield srv, calls, addr
    await srv.stop()


async def _exchange(addr: tuple[str, int], datagrams: list[bytes], expect: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    try:
        for d in datagrams:
            transport.sendto(d)
        async with asyncio.timeout(3):
            return [await client.replies.get() for _ in range(expect)]
    finally:
        transport.close()


async def test_bencode_request_gets_a_bencode_reply_with_the_same_cookie(server) -> None:
    _, _calls, addr = server
    [reply] = await _exchange(addr, [b"5323_1 d7:command4:ping7:call-id2:c1e"], 1)
    cookie, _, payload = reply.partition(b" ")
    assert cookie == b"5323_1"
    assert bencode.decode(payload) == {"result": "ok", "echo": "c1"}


async def test_json_request_gets_a_json_reply_and_key_spellings_are_folded(server) -> None:
    _, calls, addr = server
    [reply] = await _exchange(addr, [b'abc {"command":"ping","call ID":"x"}'], 1)
    assert reply.startswith(b"abc {")
    assert json.loads(reply.partition(b" ")[2]) == {"result": "ok", "echo": "x"}
    assert calls[-1]["call-id"] == "x"


async def test_a_retransmission_is_answered_from_the_cache_without_re_executing(server) -> None:
    _, calls, addr = server
    request = b"c7 d7:command5:offer7:call-id1:ae"
    replies = await _exchange(addr, [request, request, request], 3)
    assert len(set(replies)) == 1
    assert len(calls) == 1


async def test_errors_and_malformed_payloads_get_error_replies(server) -> None:
    _srv, _calls, addr = server
    replies = await _exchange(addr, [
        b"e1 d7:command4:boome",
        b"e2 d7:command5:crashe",
        b"e3 d7:command",  # truncated bencode
        b"e4 {not json",
        b"e5 xyz",
    ], 5)
    by_cookie = {r.partition(b" ")[0]: r.partition(b" ")[2] for r in replies}
    assert bencode.decode(by_cookie[b"e1"]) == {"result": "error",
                                                "error-reason": "Unrecognized command"}
    assert bencode.decode(by_cookie[b"e2"])["error-reason"] == "Internal error"
    assert b"Could not decode bencode dictionary" in by_cookie[b"e3"]
    assert json.loads(by_cookie[b"e4"])["error-reason"] == "Failed to parse JSON document"
    assert b"Invalid NG data format" in by_cookie[b"e5"]


async def test_datagrams_without_a_cookie_are_dropped_and_counted(server) -> None:
    srv, _, addr = server
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    transport.sendto(b"nocookie")
    transport.sendto(b"ok1 d7:command4:pinge")
    async with asyncio.timeout(3):
        reply = await client.replies.get()
    transport.close()
    assert reply.startswith(b"ok1 ")
    assert srv.counters["dropped"] == 1


def test_cookie_cache_expires_entries_and_bounds_its_size() -> None:
    now = [0.0]
    cache = CookieCache(ttl=30, max_bytes=2 * (1 + 1 + 64), clock=lambda: now[0])  # two
    a = (("127.0.0.1", 1), "a")
    cache.put(a, b"x")
    assert cache.get(a) == (True, b"x")
    now[0] = 31
    assert cache.get(a) == (False, None)
    for i in range(3):
        cache.put((("h", 1), str(i)), b"y")
    assert cache.get((("h", 1), "0")) == (False, None)
    assert cache.get((("h", 1), "2")) == (True, b"y")


async def test_a_reply_that_cannot_be_encoded_or_sent_is_an_error_and_the_socket_lives_on(
        server) -> None:
    """A JSON call-id with a lone surrogate used to kill the command task silently."""
    _srv, _calls, addr = server
    bad = b'c1 {"command":"offer","call-id":"\\ud800x"}'
    deep = b"c2 " + b'{"a":' * 3000 + b"1" + b"}" * 3000
    [r1, r2] = await _exchange(addr, [bad, deep], 2)
    assert json.loads(r1.partition(b" ")[2])["error-reason"] == "Failed to parse JSON document"
    assert json.loads(r2.partition(b" ")[2])["result"] == "error"
    [pong] = await _exchange(addr, [b"c3 d7:command4:pinge"], 1)
    assert bencode.decode(pong.partition(b" ")[2])["result"] == "ok"


async def test_a_reply_too_large_for_a_datagram_is_answered_with_an_error() -> None:
    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        return {"result": "ok", "calls": ["x" * 100] * 1000}  # ~100 KB

    srv = NgServer(handler)
    addr = await srv.start("127.0.0.1", 0)
    try:
        [reply] = await _exchange(addr, [b"c1 d7:command4:liste"], 1)
        body = bencode.decode(reply.partition(b" ")[2])
        assert body == {"result": "error", "error-reason": "Reply too large for one datagram"}
    finally:
        await srv.stop()


async def test_a_handler_whose_reply_will_not_encode_gets_internal_error_and_no_echo() -> None:
    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        return {"result": "ok", "weird": object()}

    srv = NgServer(handler)
    addr = await srv.start("127.0.0.1", 0)
    try:
        [reply, pong] = await _exchange(addr, [b"c1 d7:command4:pinge",
                                               b"c2 d7:command4:pinge"], 2)
        assert bencode.decode(reply.partition(b" ")[2])["error-reason"] == "Internal error"
        assert pong.startswith(b"c2 ")  # the task is still serving
    finally:
        await srv.stop()


def test_the_cookie_cache_is_bounded_by_bytes_not_count() -> None:
    now = [0.0]
    cache = CookieCache(ttl=60, max_bytes=1_000_000, clock=lambda: now[0])
    for n in range(4000):  # 4 000 replies with 60 KB cookies: 240 MB if unbounded
        cache.put((("127.0.0.1", 1), f"{n:05d}" + "x" * 60_000), b"reply")
    assert cache.size <= 1_000_000
    assert cache.get((("127.0.0.1", 1), "03999" + "x" * 60_000)) == (True, b"reply")
    assert cache.get((("127.0.0.1", 1), "00000" + "x" * 60_000)) == (False, None)
    now[0] = 120.0
    assert cache.get((("127.0.0.1", 1), "anything")) == (False, None)
    assert cache.size == 0  # expired entries give their bytes back


async def test_a_cookie_longer_than_any_client_sends_is_dropped(server) -> None:
    srv, _calls, addr = server
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    try:
        transport.sendto(b"x" * 300 + b" d7:command4:pinge")
        transport.sendto(b"ok d7:command4:pinge")
        async with asyncio.timeout(3):
            reply = await client.replies.get()
        assert reply.startswith(b"ok ") and client.replies.empty()
        assert srv.counters["dropped"] == 1
    finally:
        transport.close()


async def test_a_refused_command_is_logged_with_its_reason(server) -> None:
    from structlog.testing import capture_logs
    _srv, _calls, addr = server
    with capture_logs() as logs:
        await _exchange(addr, [b"c1 d7:call-id2:x17:command4:boome"], 1)
    refused = [e for e in logs if e["event"] == "ng command refused"]
    assert refused and refused[0]["command"] == "boom" and refused[0]["call_id"] == "x1"
    assert refused[0]["reason"] == "Unrecognized command"


async def _ordered_server(concurrency: int = 64) -> tuple[
        NgServer, dict[str, asyncio.Event], list[str], tuple[str, int]]:
    """A server whose handler logs "start/end command call-id" and holds a command until its
    gate (keyed "command call-id") is set, if it has one."""
    gates: dict[str, asyncio.Event] = {}
    log: list[str] = []

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        name = f"{body['command']} {body.get('call-id', '')}"
        log.append(f"start {name}")
        gate = gates.get(name)
        if gate is not None:
            await gate.wait()
        log.append(f"end {name}")
        return {"result": "ok"}

    srv = NgServer(handler, concurrency=concurrency)
    return srv, gates, log, await srv.start("127.0.0.1", 0)


async def _wait_for(condition: Any, what: str) -> None:
    async with asyncio.timeout(3):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


async def test_commands_of_different_calls_run_concurrently_one_calls_in_order() -> None:
    srv, gates, log, addr = await _ordered_server()
    gates["offer A"] = asyncio.Event()
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    try:
        for cookie, command, call in (("1", "offer", "A"), ("2", "answer", "A"),
                                      ("3", "offer", "B"), ("4", "ping", "")):
            body = {"command": command, **({"call-id": call} if call else {})}
            transport.sendto(f"{cookie} ".encode() + bencode.encode(body))
        # B's offer and the ping are answered while A's offer is held...
        async with asyncio.timeout(3):
            first = [await client.replies.get() for _ in range(2)]
        assert sorted(r.partition(b" ")[0] for r in first) == [b"3", b"4"]
        # ...and A's answer has not started: it waits for A's offer.
        assert "start offer A" in log and "start answer A" not in log
        gates["offer A"].set()
        async with asyncio.timeout(3):
            rest = [await client.replies.get() for _ in range(2)]
        assert [r.partition(b" ")[0] for r in rest] == [b"1", b"2"]
        assert log.index("end offer A") < log.index("start answer A")
        await _wait_for(lambda: srv.pending == 0, "every command accounted for")
    finally:
        transport.close()
        await srv.stop()


async def test_calls_served_at_once_are_bounded_by_concurrency() -> None:
    srv, gates, log, addr = await _ordered_server(concurrency=1)
    gates["offer A"] = asyncio.Event()
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    try:
        transport.sendto(b"1 " + bencode.encode({"command": "offer", "call-id": "A"}))
        transport.sendto(b"2 " + bencode.encode({"command": "offer", "call-id": "B"}))
        await _wait_for(lambda: "start offer A" in log, "A started")
        with pytest.raises(TimeoutError):  # one slot: B waits for A
            async with asyncio.timeout(0.2):
                await client.replies.get()
        assert "start offer B" not in log
        gates["offer A"].set()
        async with asyncio.timeout(3):
            replies = [await client.replies.get() for _ in range(2)]
        assert [r.partition(b" ")[0] for r in replies] == [b"1", b"2"]
    finally:
        transport.close()
        await srv.stop()


async def test_stop_cancels_a_held_command_and_its_followers() -> None:
    srv, gates, log, addr = await _ordered_server()
    gates["offer A"] = asyncio.Event()  # never set
    loop = asyncio.get_running_loop()
    transport, _client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
    try:
        transport.sendto(b"1 " + bencode.encode({"command": "offer", "call-id": "A"}))
        transport.sendto(b"2 " + bencode.encode({"command": "delete", "call-id": "A"}))
        await _wait_for(lambda: srv.pending == 2 and "start offer A" in log, "both accepted")
        async with asyncio.timeout(3):
            await srv.stop()
        assert srv.pending == 0
        assert "start delete A" not in log
    finally:
        transport.close()
