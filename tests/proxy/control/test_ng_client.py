"""The ng client over loopback: retransmission, cookie matching, timeouts, error replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.control import bencode
from proxy.control.ng import NgError
from proxy.control.ng_client import NgClient, NgClientError, NgErrorReply, NgTimeout
from proxy.control.ng_server import NgServer

# Replies to a received (index, cookie, body): the datagrams to send back, in order.
Script = Callable[[int, bytes, dict[str, Any]], list[bytes]]


class _ScriptedServer(asyncio.DatagramProtocol):
    """A real UDP ng "server" that answers what its script says and records what came."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.received: list[bytes] = []
        self.times: list[float] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.times.append(asyncio.get_running_loop().time())
        self.received.append(data)
        cookie, _, payload = data.partition(b" ")
        body = bencode.decode(payload)
        assert isinstance(body, dict)
        for reply in self._script(len(self.received) - 1, cookie, body):
            self.transport.sendto(reply, addr)


def _reply(cookie: bytes, body: dict[str, Any]) -> bytes:
    return cookie + b" " + bencode.encode(body)


async def _serve(script: Script) -> tuple[_ScriptedServer, tuple[str, int]]:
    server = _ScriptedServer(script)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0))
    return server, transport.get_extra_info("sockname")


@pytest.fixture
async def closing() -> AsyncIterator[list[NgClient | _ScriptedServer]]:
    """Clients and servers to close after the test."""
    things: list[NgClient | _ScriptedServer] = []
    yield things
    for thing in things:
        if isinstance(thing, NgClient):
            thing.close()
        elif thing.transport is not None:
            thing.transport.close()


async def _pair(script: Script, closing: list[NgClient | _ScriptedServer], **options: Any
                ) -> tuple[_ScriptedServer, NgClient]:
    server, address = await _serve(script)
    client = await NgClient.connect(address, **{"rto": 0.05, "rto_max": 0.05, **options})
    closing += [server, client]
    return server, client


async def test_a_dropped_first_request_is_retransmitted_and_answered(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """The server ignores the first datagram (lost on the way): the client sends the same
    datagram again and returns the reply to the retransmission."""
    server, client = await _pair(
        lambda i, cookie, body: [] if i == 0 else [_reply(cookie, {"result": "pong"})],
        closing)
    assert await client.request({"command": "ping"}) == {"result": "pong"}
    assert len(server.received) == 2
    assert server.received[0] == server.received[1]  # the same cookie: one transaction
    assert client.stats.sends == 2 and client.stats.replies == 1


async def test_retransmissions_back_off_up_to_the_cap(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """Silence: sends come after 0.2, 0.4, 0.8 then 0.8 s (doubling, capped). Only lower
    bounds are checked (a timer never fires early; a loaded machine only makes gaps longer),
    with slack for the server's own receive delays."""
    server, client = await _pair(lambda i, cookie, body: [], closing,
                                 rto=0.2, rto_max=0.8, retransmits=4)
    with pytest.raises(NgTimeout):
        await client.request({"command": "ping"})
    assert len(server.received) == 5
    gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert gap >= 0.75 * expected, gaps


async def test_a_reply_with_another_cookie_is_ignored(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """A reply carrying a cookie this client never sent does not answer the request; the one
    with the right cookie does."""
    server, client = await _pair(
        lambda i, cookie, body: [_reply(b"f00" + cookie[3:], {"result": "error"}),
                                 _reply(cookie, {"result": "ok", "seen": body["call-id"]})],
        closing)
    reply = await client.request({"command": "query", "call-id": "c1"})
    assert reply == {"result": "ok", "seen": "c1"}
    assert client.stats.unknown == 1 and client.stats.replies == 1
    assert len(server.received) == 1


@pytest.mark.parametrize("junk", [
    b"no-space-at-all",
    b"%s 4:oops",  # bencode, not a dictionary
    b"%s d3:key",  # truncated bencode
    b"%s {not json",
    # Near the largest UDP datagram (an IPv4 one over the ng limit of 65535 cannot be sent).
    b"%s d1:xi" + b"9" * 65_000 + b"ee",
], ids=["no-cookie", "not-a-dict", "truncated", "bad-json", "huge-integer"])
async def test_a_garbled_reply_is_counted_and_the_request_still_answered(
        closing: list[NgClient | _ScriptedServer], junk: bytes) -> None:
    """Junk with the request's cookie neither crashes the client nor answers the request: it
    is counted, and the good reply that follows is returned."""
    _, client = await _pair(
        lambda i, cookie, body: [junk.replace(b"%s", cookie), _reply(cookie, {"result": "ok"})],
        closing)
    assert await client.request({"command": "ping"}) == {"result": "ok"}
    assert client.stats.garbled == 1 and client.stats.replies == 1


async def test_a_late_second_reply_does_not_answer_the_next_request(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """The server answers one request twice (as to a retransmission): the second copy is
    counted as late, and the next request gets its own reply, not the stale one."""
    _, client = await _pair(
        lambda i, cookie, body: [_reply(cookie, {"result": "ok", "n": i})] * (2 if i == 0 else 1),
        closing)
    assert await client.request({"command": "ping"}) == {"result": "ok", "n": 0}
    assert await client.request({"command": "ping"}) == {"result": "ok", "n": 1}
    assert client.stats.late == 1 and client.stats.replies == 2


async def test_no_reply_times_out_naming_the_command_and_server(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """A server that never answers: after the first send and two retransmissions the request
    raises NgTimeout (a TimeoutError) naming the command, the server and the sends."""
    server, client = await _pair(lambda i, cookie, body: [], closing, retransmits=2)
    host, port = client.address
    with pytest.raises(NgTimeout, match=rf"^no ng reply to 'offer' from {host}:{port} "
                                        r"after 3 sends$") as caught:
        await client.request({"command": "offer", "call-id": "c1"})
    assert isinstance(caught.value, TimeoutError)
    assert len(server.received) == 3
    assert client.stats.sends == 3 and client.stats.replies == 0


@pytest.fixture
async def ng_server() -> AsyncIterator[tuple[str, int]]:
    """The product's ng server: ``boom`` gets an error reply, the rest ``ok``."""

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        if body["command"] == "boom":
            raise NgError("Unrecognized command")
        return {"result": "ok"}

    server = NgServer(handler)
    address = await server.start("127.0.0.1", 0)
    yield address
    await server.stop()


async def test_an_error_reply_raises_or_is_returned_as_asked(ng_server: tuple[str, int]) -> None:
    """``result: error`` raises NgErrorReply (reason and reply kept) by default, is returned
    as it is with ``raise_on_error=False``, and the per-request choice wins over the
    client's."""
    async with await NgClient.connect(ng_server) as raising:
        with pytest.raises(NgErrorReply, match=r"^ng boom: Unrecognized command$") as caught:
            await raising.request({"command": "boom"})
        assert caught.value.reason == "Unrecognized command"
        assert caught.value.reply == {"result": "error", "error-reason": "Unrecognized command"}
        assert await raising.request({"command": "ping"}) == {"result": "ok"}
        returned = await raising.request({"command": "boom"}, raise_on_error=False)
        assert returned == {"result": "error", "error-reason": "Unrecognized command"}
    async with await NgClient.connect(ng_server, raise_on_error=False) as returning:
        assert (await returning.request({"command": "boom"}))["result"] == "error"
        with pytest.raises(NgErrorReply):
            await returning.request({"command": "boom"}, raise_on_error=True)


async def test_concurrent_requests_each_get_their_own_reply(ng_server: tuple[str, int]) -> None:
    """Twenty requests in flight on one socket are matched to their replies by cookie."""
    async with await NgClient.connect(ng_server, raise_on_error=False) as client:
        replies = await asyncio.gather(*(
            client.request({"command": "boom" if n % 2 else "ping"}) for n in range(20)))
    assert [r["result"] for r in replies] == ["ok", "error"] * 10
    assert client.stats.replies == 20 and client.stats.late == 0


async def test_a_closed_client_fails_its_waiting_request() -> None:
    """Closing the client while a request waits ends that request with an error, not a hang."""
    arrived = asyncio.Event()

    def silent(index: int, cookie: bytes, body: dict[str, Any]) -> list[bytes]:
        arrived.set()
        return []

    server, address = await _serve(silent)
    client = await NgClient.connect(address, rto=5.0)
    try:
        waiting = asyncio.ensure_future(client.request({"command": "ping"}))
        async with asyncio.timeout(5):
            await arrived.wait()
        client.close()
        with pytest.raises(NgClientError, match=r"^ng client to .* closed$") as caught:
            async with asyncio.timeout(5):
                await waiting
        assert not isinstance(caught.value, TimeoutError)
    finally:
        assert server.transport is not None
        server.transport.close()


async def test_given_to_create_datagram_endpoint_it_names_its_server_from_the_socket(
        closing: list[NgClient | _ScriptedServer]) -> None:
    """Made without an address (as the fail-closed rig's NgControl is) and connected by the
    caller: requests work and a timeout names the socket's peer."""
    server, address = await _serve(
        lambda i, cookie, body: [_reply(cookie, {"result": "pong"})] if i == 0 else [])
    client = NgClient(rto=0.05, rto_max=0.05, retransmits=1)
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: client,
                                                              remote_addr=address)
    closing += [server, client]
    assert await client.request({"command": "ping"}) == {"result": "pong"}
    with pytest.raises(NgTimeout, match=rf" from 127\.0\.0\.1:{address[1]} after 2 sends$"):
        await client.request({"command": "ping"})
