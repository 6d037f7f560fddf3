"""An asyncio ng client: Kamailio's side of the rtpengine control protocol, over one UDP socket.

Each request is a transaction, done as aioice's STUN transactions are (``stun.Transaction``):
a fresh random cookie, the datagram sent, then retransmitted from a ``call_later`` timer whose
delay starts at ``rto`` and doubles up to ``rto_max``, at most ``retransmits`` times; the first
reply carrying the request's cookie resolves its Future and stops the timer. A request that
gets no reply raises :class:`NgTimeout` naming the command, the server and the sends.

What the socket receives is never trusted: a reply whose cookie is unknown (another client's,
or forged) or belongs to a request already answered (a retransmission's second reply) is
counted and ignored; one that is oversized or does not decode to a dictionary is counted and
dropped without failing the request, which keeps retransmitting. The reply is returned as the
server wrote it (keys not normalised): the relay of :mod:`proxy.store.takeover` hands it on.

``raise_on_error`` picks what ``result: error`` does: raise :class:`NgErrorReply` (a caller
that expects success: the demo, most tests) or return the reply (a relay, a test of refusals).

    async with await NgClient.connect(("127.0.0.1", 2223)) as ng:
        reply = await ng.request({"command": "ping"})
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from proxy.control import bencode
from proxy.control.ng import MAX_MESSAGE

# Kamailio's rtpengine module sends a command up to 5 times (rtpengine_retr), 1 s apart
# (rtpengine_tout_ms); here the first retry comes sooner and the later ones back off, which
# is kinder to a busy server: 0.5 + 1 + 1.5 * 3 = 6 s before a request times out.
RETRY_RTO = 0.5  # seconds before the first retransmission
RETRY_RTO_MAX = 1.5  # the delay doubles after each send, up to this
RETRY_MAX = 4  # retransmissions after the first send
ANSWERED_KEPT = 256  # cookies of answered requests remembered, to tell a late reply apart


class NgClientError(Exception):
    """Base of the ng client's errors."""


class NgTimeout(NgClientError, TimeoutError):
    """No reply came to a request after every retransmission."""


class NgErrorReply(NgClientError):
    """The server answered ``result: error`` (and the client was asked to raise on it)."""

    def __init__(self, command: str, reply: dict[str, Any]) -> None:
        self.command = command
        self.reply = reply
        self.reason = str(reply.get("error-reason", ""))
        super().__init__(f"ng {command}: {self.reason}")


@dataclass
class NgClientStats:
    """What the client sent and what its socket received."""

    requests: int = 0
    sends: int = 0  # datagrams sent, retransmissions included
    replies: int = 0  # replies that answered a waiting request
    late: int = 0  # a reply to a request already answered (or given up on)
    unknown: int = 0  # a reply whose cookie this client never sent
    garbled: int = 0  # no cookie, not bencode/JSON, not a dictionary, or oversized
    socket_errors: int = 0  # ICMP errors (port unreachable: a server not started yet)


class _Transaction:
    """One request: its datagram, its retransmission timer and the Future of its reply."""

    def __init__(self, data: bytes, transport: asyncio.DatagramTransport, stats: NgClientStats,
                 *, rto: float, rto_max: float, retransmits: int) -> None:
        self._data = data
        self._transport = transport
        self._stats = stats
        self._delay = rto
        self._rto_max = rto_max
        self._sends_max = 1 + retransmits
        self.sends = 0
        self.reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    async def run(self) -> dict[str, Any]:
        try:
            self._send()
            return await self.reply
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _send(self) -> None:
        # The reply may have come just before the timer fired (aioice: RFC 5389 7.2.1).
        if self.reply.done():
            return
        if self.sends >= self._sends_max:
            self.reply.set_exception(NgTimeout())  # run() names the command
            return
        self._transport.sendto(self._data)
        self._stats.sends += 1
        self.sends += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._delay, self._send)
        self._delay = min(self._delay * 2, self._rto_max)


class NgClient(asyncio.DatagramProtocol):
    """Requests to one ng server, matched to replies by cookie; see the module docstring.
    Made by :meth:`connect` (or given to ``create_datagram_endpoint`` with a ``remote_addr``:
    ``address`` is then the socket's peer); the retry settings default to the module
    constants (tests shorten them, as aioice's do)."""

    def __init__(self, address: tuple[str, int] | None = None, *, raise_on_error: bool = True,
                 rto: float | None = None, rto_max: float | None = None,
                 retransmits: int | None = None) -> None:
        self.address = address or ("", 0)  # the server (for messages)
        self.raise_on_error = raise_on_error
        self._rto = RETRY_RTO if rto is None else rto
        self._rto_max = RETRY_RTO_MAX if rto_max is None else rto_max
        self._retransmits = RETRY_MAX if retransmits is None else retransmits
        self.stats = NgClientStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[bytes, _Transaction] = {}
        self._answered: OrderedDict[bytes, None] = OrderedDict()

    @classmethod
    async def connect(cls, address: tuple[str, int], **options: Any) -> NgClient:
        """A client with its own UDP socket connected to ``address`` (the kernel then drops
        datagrams from any other source). ``options``: those of :class:`NgClient`."""
        host, port = address
        client = cls((host, port), **options)
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: client, remote_addr=(host.strip("[]"), port))
        return client

    # --- asyncio.DatagramProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if self.address == ("", 0) and peer:
            self.address = (str(peer[0]), int(peer[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for transaction in self._waiting.values():
            if not transaction.reply.done():
                transaction.reply.set_exception(
                    NgClientError(f"ng client to {_where(self.address)} closed"))

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports ICMP port unreachable here: a server not (yet)
        # listening. Retransmission goes on; a server that never comes is a timeout.
        self.stats.socket_errors += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cookie, space, payload = data.partition(b" ")
        if not space or len(data) > MAX_MESSAGE:
            self.stats.garbled += 1
            return
        transaction = self._waiting.get(cookie)
        if transaction is None or transaction.reply.done():
            if cookie in self._answered or transaction is not None:
                self.stats.late += 1
            else:
                self.stats.unknown += 1
            return
        reply = _decode(payload)
        if reply is None:
            self.stats.garbled += 1  # the request keeps retransmitting: a good reply may come
            return
        self.stats.replies += 1
        transaction.reply.set_result(reply)

    # --- requests ---------------------------------------------------------------------

    async def request(self, body: dict[str, Any], *,
                      raise_on_error: bool | None = None) -> dict[str, Any]:
        """Send ``body`` (bencoded), return the reply dictionary. Raises :class:`NgTimeout`
        without a reply, :class:`NgErrorReply` on ``result: error`` if raising on errors
        (``raise_on_error`` here, else the client's setting)."""
        if self._transport is None:
            raise NgClientError(f"ng client to {_where(self.address)} is not connected")
        command = str(body.get("command", "?"))
        cookie = secrets.token_hex(8).encode()
        while cookie in self._waiting or cookie in self._answered:
            cookie = secrets.token_hex(8).encode()
        transaction = _Transaction(cookie + b" " + bencode.encode(body), self._transport,
                                   self.stats, rto=self._rto, rto_max=self._rto_max,
                                   retransmits=self._retransmits)
        self._waiting[cookie] = transaction
        self.stats.requests += 1
        try:
            reply = await transaction.run()
        except NgTimeout as exc:
            raise NgTimeout(f"no ng reply to {command!r} from {_where(self.address)} after "
                            f"{transaction.sends} sends") from exc
        finally:
            del self._waiting[cookie]
            self._answered[cookie] = None
            while len(self._answered) > ANSWERED_KEPT:
                self._answered.popitem(last=False)
        raising = self.raise_on_error if raise_on_error is None else raise_on_error
        if raising and reply.get("result") == "error":
            raise NgErrorReply(command, reply)
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> NgClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


def _decode(payload: bytes) -> dict[str, Any] | None:
    """The reply dictionary (bencode, or JSON as rtpengine answers a JSON request); None if
    the payload is neither or not a dictionary."""
    try:
        value: object = json.loads(payload) if payload[:1] == b"{" else bencode.decode(payload)
    except (ValueError, RecursionError):  # BencodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
