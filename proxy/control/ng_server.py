"""The ng control socket: UDP, ``cookie SP dictionary``, retransmissions answered from a cache.

``datagram_received`` stays synchronous and cheap: it parses, answers retransmissions from the
cookie cache, and hands real work to its call's lane. What waits is bounded (``queue_size``);
beyond it a request is dropped and counted — Kamailio retransmits, and a dropped retransmission
is better than unbounded memory.

Commands of one call are applied one at a time, in the order they arrived; commands of different
calls run concurrently (at most ``concurrency`` calls at once). Why: with media worker processes
an offer waits on several round trips to a worker, and served one at a time every call's set-up
queued behind every other's until Kamailio's retransmissions ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from proxy.control import ng
from proxy.media.types import Address

log = structlog.get_logger("toneguard.ng")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CookieCache:
    """Replies by (source, cookie) for ``ttl`` seconds, bounded by ``max_bytes`` of cookies and
    replies together (the oldest go first): a flood of large cookies cannot grow memory."""

    def __init__(self, ttl: float = 60.0, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._max_bytes, self._clock = ttl, max_bytes, clock
        self._entries: OrderedDict[tuple[Address, str], tuple[float, bytes | None]] = (
            OrderedDict())
        self.size = 0  # bytes of cookies and replies held

    def get(self, key: tuple[Address, str]) -> tuple[bool, bytes | None]:
        """(known, reply); a known key with reply None is still being processed."""
        self._expire()
        entry = self._entries.get(key)
        return (False, None) if entry is None else (True, entry[1])

    def put(self, key: tuple[Address, str], reply: bytes | None) -> None:
        self._drop(key)
        self._entries[key] = (self._clock(), reply)
        self.size += _cost(key, reply)
        while self.size > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[Address, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= _cost(key, entry[1])

    def _expire(self) -> None:
        cutoff = self._clock() - self._ttl
        while self._entries:
            key, (at, _) = next(iter(self._entries.items()))
            if at >= cutoff:
                break
            self._drop(key)


def _cost(key: tuple[Address, str], reply: bytes | None) -> int:
    return len(key[1]) + (len(reply) if reply else 0) + 64  # + what an entry costs itself


class NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: NgServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._server.received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


class NgServer:
    """Serve the ng protocol over UDP with ``handler`` doing the commands."""

    def __init__(self, handler: Handler, *, cache_ttl: float = 60.0,
                 cache_bytes: int = 64 * 1024 * 1024, queue_size: int = 10_000,
                 concurrency: int = 64,
                 on_command: Callable[[str, str], None] | None = None) -> None:
        self._handler = handler
        self._cache = CookieCache(cache_ttl, cache_bytes)
        self._queue_size = queue_size
        self._concurrency = concurrency
        # Call id → its commands not yet answered, the running one first; a call has a lane
        # while any of its commands is running or waiting. Lanes beyond ``concurrency`` wait
        # in ``_ready`` (call ids, oldest first) for a running one to end.
        self._lanes: dict[str, deque[tuple[ng.NgMessage, Address]]] = {}
        self._ready: deque[str] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._on_command = on_command
        self.transport: asyncio.DatagramTransport | None = None
        self.pending = 0  # commands accepted and not yet answered
        self.counters = {"received": 0, "retransmissions": 0, "dropped": 0, "errors": 0}

    async def start(self, host: str, port: int) -> Address:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: NgProtocol(self), local_addr=(host, port))
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        self._stopping = True
        if self.transport is not None:
            self.transport.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lanes.clear()
        self._ready.clear()
        self.pending = 0

    def received(self, data: bytes, addr: Address) -> None:
        self.counters["received"] += 1
        try:
            message = ng.parse_message(data)
        except ng.NgFramingError:
            self.counters["dropped"] += 1
            return
        except ng.NgError as exc:
            cookie = data.split(b" ", 1)[0].decode("ascii", "replace")
            self._send(ng.format_reply(cookie, ng.error_reply(exc.reason),
                                       ng.error_encoding(exc)), addr)
            return
        known, reply = self._cache.get((addr, message.cookie))
        if known:
            self.counters["retransmissions"] += 1
            if reply is not None:
                self._send(reply, addr)
            return  # still in progress: the reply goes out when it is ready
        if self.pending >= self._queue_size or self._stopping:
            self.counters["dropped"] += 1
            return
        self.pending += 1
        self._cache.put((addr, message.cookie), None)
        key = _call_key(message.body)
        lane = self._lanes.get(key)
        if lane is not None:  # a command of this call is running or waiting: this one follows
            lane.append((message, addr))
            return
        self._lanes[key] = deque([(message, addr)])
        if len(self._tasks) < self._concurrency:
            self._start(key)
        else:
            self._ready.append(key)

    def _start(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run_lane(key), name="ng-call")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, key: str) -> None:
        # One call's commands, in order: nothing a message does may end this early.
        lane = self._lanes[key]
        try:
            while lane:
                message, addr = lane[0]
                await self._serve(message, addr)
                lane.popleft()
                self.pending -= 1
        finally:
            if not self._stopping:
                del self._lanes[key]
                if self._ready:
                    self._start(self._ready.popleft())

    async def _serve(self, message: ng.NgMessage, addr: Address) -> None:
        try:
            data, command, result = await self._reply(message)
        except Exception:  # even the error reply failed: answer without any echo
            log.exception("ng reply failed")
            data, command, result = ng.format_reply(
                message.cookie, ng.error_reply("Internal error"), "bencode"), "", "error"
        self._cache.put((addr, message.cookie), data)
        self._send(data, addr)
        if self._on_command is not None:
            self._on_command(command, result)

    async def _reply(self, message: ng.NgMessage) -> tuple[bytes, str, str]:
        """The encoded reply to one message, its command and result."""
        command = str(message.body.get("command", ""))[:40]
        try:
            reply = await self._handler(message.body)
            data = ng.format_reply(message.cookie, reply, message.encoding)
            result = str(reply.get("result", "ok"))
        except ng.NgError as exc:
            reply, result = ng.error_reply(exc.reason), "error"
            self.counters["errors"] += 1
            # Kamailio logs only that rtpengine_offer() failed: say why here. The reason names
            # what was wrong, never a value (no SDP, key or digit is ever put in one).
            log.info("ng command refused", command=command,
                     call_id=str(message.body.get("call-id", ""))[:80], reason=exc.reason)
            data = ng.format_reply(message.cookie, reply, message.encoding)
        except Exception:
            log.exception("ng command failed", command=command)
            reply, result = ng.error_reply("Internal error"), "error"
            self.counters["errors"] += 1
            data = ng.format_reply(message.cookie, reply, message.encoding)
        if len(data) > ng.MAX_MESSAGE:  # cannot go out as one UDP datagram
            log.warning("ng reply too large", command=command, size=len(data))
            data = ng.format_reply(message.cookie, ng.error_reply(
                "Reply too large for one datagram"), message.encoding)
            result = "error"
        return data, command, result

    def _send(self, data: bytes, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


def _call_key(body: dict[str, Any]) -> str:
    """The call id a command acts on, in any key spelling (``call-id``, ``Call ID``,
    ``call_id``); "" for commands without one (``ping``, ``list``, ``statistics``), which then
    share one lane of their own."""
    for key, value in body.items():
        if isinstance(key, str) and ng.canonical_key(key) == "call-id":
            return value if isinstance(value, str) else repr(value)
    return ""
