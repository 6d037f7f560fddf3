"""The API of any node acts on the calls of every node: an ASGI wrapper around the app.

- ``/v1/calls/<id>/...`` for a call this node does not have but another node owns (the store
  says which, and where its API answers) is forwarded there — method, path, body — so the
  owning node authorises, audits and acts (the payment's digits, its masking and its gateway
  call all live there).
- ``GET /v1/calls`` answers with this node's calls plus those every other node returns for
  the same agent (each node applies its own rules: an agent sees its own calls on every node).
  A node whose heartbeat is gone is not asked: its calls are listed from their records with
  ``"owner_down": true`` and ``"node"`` (an agent sees its own, a supervisor all) until it
  comes back, a taker adopts them or they are reaped (:mod:`proxy.store.orphans`).

The agent's API key never leaves the node it was given to. This node checks it, then sends
the owner a **node assertion** instead (``X-ToneGuard-Assertion``): who the agent is, which
node sent it and to which node, an expiry (:data:`ASSERTION_SECONDS`) and a one-time nonce,
signed with HMAC-SHA256 under a key derived from the node set's ``store.key_file`` over all of
that plus the method, path, query, SHA-256 of the body and the ``Idempotency-Key``. The owner
verifies the signature, that it is the addressee, the expiry and that the nonce is new (a
request copied off the wire cannot be sent again, to it or to another node, nor changed), and
takes the agent's role from its own agents file (a key revoked there is refused). A forged,
expired, replayed or misaddressed assertion is refused with 401; so ``store.api_url`` may be
plain HTTP without exposing a key (the payment's masked values still cross it: use https
across untrusted networks).

A forwarded request carries ``X-ToneGuard-Forwarded`` and is answered locally only (no
loops). A node that cannot be reached: 502 for an action on its call; left out of a listing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import structlog

from proxy.api.auth import (
    FORWARDED_PRINCIPAL,
    ROLES,
    AuthRefused,
    KeyGuard,
    Principal,
    valid_name,
)
from proxy.api.models import Call as CallModel
from proxy.store.base import StateStore, StoreError
from proxy.store.orphans import DownCall, down_calls
from proxy.store.redis_store import RedisStore

log = structlog.get_logger("toneguard.store")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

FORWARDED = b"x-toneguard-forwarded"
ASSERTION = b"x-toneguard-assertion"
_CALL_PATH = re.compile(r"^/v1/calls/([^/]+)(?:/.*)?$")
TIMEOUT = 5.0
ASSERTION_SECONDS = 10.0  # an assertion's life: a forward is one request, sent at once
CLOCK_SKEW_SECONDS = 5.0  # an expiry further out than life + skew is refused too
REPLAY_CACHE_LIMIT = 100_000  # nonces remembered until their expiry; past it, refuse (429)
_CONTEXT = b"toneguard forwarded-request assertion v1"


class AssertionRefused(Exception):
    """A node assertion that does not hold (the reason is for the log, not the client)."""


def assertion_key(key_file: Path) -> bytes:
    """The assertions' HMAC key, derived from the node set's store key (never the AES key
    itself: one key, one purpose)."""
    try:
        key = base64.b64decode(key_file.read_text("ascii").strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{key_file}: not a base64 key") from exc
    return hmac.new(key, _CONTEXT, hashlib.sha256).digest()


class NodeAssertions:
    """Signs what this node forwards and verifies what other nodes forward to it."""

    def __init__(self, key: bytes, node: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.node = node
        self._clock = clock
        self._seen: dict[str, float] = {}  # nonce → its expiry (replays refused until then)

    def sign(self, target: str, agent_id: str, method: str, path: str, query: str,
             body: bytes, idempotency_key: str = "") -> str:
        claims = {"v": 1, "from": self.node, "to": target, "agent": agent_id,
                  "exp": round(self._clock() + ASSERTION_SECONDS, 3),
                  "nonce": secrets.token_hex(16)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        mac = self._mac(payload, method, path, query, body, idempotency_key)
        return f"{payload}.{_b64(mac)}"

    def verify(self, header: str, method: str, path: str, query: str, body: bytes,
               idempotency_key: str = "") -> str:
        """The agent id the assertion vouches for, or :class:`AssertionRefused`."""
        payload, _, mac = header.partition(".")
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError) as exc:
            raise AssertionRefused("malformed") from exc
        expected = self._mac(payload, method, path, query, body, idempotency_key)
        if not hmac.compare_digest(given, expected):
            raise AssertionRefused("bad signature")
        try:
            claims = json.loads(_unb64(payload))
            target, agent, expiry = claims["to"], claims["agent"], float(claims["exp"])
            nonce = claims["nonce"]
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise AssertionRefused("malformed") from exc
        if claims.get("v") != 1 or not isinstance(nonce, str) or not isinstance(agent, str):
            raise AssertionRefused("malformed")
        if target != self.node:
            raise AssertionRefused("addressed to another node")
        now = self._clock()
        if not now < expiry <= now + ASSERTION_SECONDS + CLOCK_SKEW_SECONDS:
            raise AssertionRefused("expired")
        if len(self._seen) >= REPLAY_CACHE_LIMIT:
            self._seen = {n: e for n, e in self._seen.items() if e > now}
            if len(self._seen) >= REPLAY_CACHE_LIMIT:
                raise AssertionRefused("replay cache full")
        if nonce in self._seen:
            raise AssertionRefused("replayed")
        self._seen[nonce] = expiry
        return agent

    def _mac(self, payload: str, method: str, path: str, query: str, body: bytes,
             idempotency_key: str) -> bytes:
        signed = "\n".join((payload, method.upper(), path, query,
                            hashlib.sha256(body).hexdigest(), idempotency_key))
        return hmac.new(self._key, signed.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ClusterRouter:
    def __init__(self, app: App, *, node: str, store: StateStore,
                 local: Callable[[str], bool], guard: KeyGuard, assertions: NodeAssertions,
                 max_body: int = 64 * 1024, http: httpx.AsyncClient | None = None) -> None:
        self._app = app
        self._max_body = max_body
        self._node = node
        self._store = store
        self._local = local  # is this call on this node?
        self._guard = guard  # the agents' keys, checked here (they are never forwarded)
        self._assertions = assertions
        self._http = http or httpx.AsyncClient(timeout=TIMEOUT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _header(scope, ASSERTION) is not None:
            await self._asserted(scope, receive, send)
            return
        if scope["type"] != "http" or _header(scope, FORWARDED):
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1/calls" and scope["method"] == "GET":
            await self._listing(scope, receive, send)
            return
        match = _CALL_PATH.match(path)
        if match and not self._local(match.group(1)):
            owner = await self._owner(match.group(1))
            if owner is not None:
                await self._forward(owner, scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _asserted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request another node forwarded: answered as the agent its assertion vouches for,
        or refused (401) without saying why beyond the log."""
        body = await _body(receive, self._max_body)
        if body is None:
            await _respond(send, 413, {"detail": "request body too large"})
            return
        header = (_header(scope, ASSERTION) or b"").decode("latin-1")
        try:
            agent_id = self._assertions.verify(
                header, scope["method"], scope["path"],
                scope.get("query_string", b"").decode("latin-1"), body,
                (_header(scope, b"idempotency-key") or b"").decode("latin-1"))
            who = self._principal(agent_id)
        except AssertionRefused as exc:
            log.warning("forwarded request refused: node assertion does not hold",
                        reason=str(exc))
            await _respond(send, 401, {"detail": "invalid node assertion"})
            return
        # The app takes the principal from the scope (set here only) instead of a key; any
        # Authorization that came along is dropped.
        scope = {**scope, FORWARDED_PRINCIPAL: who,
                 "headers": [(k, v) for k, v in scope.get("headers", [])
                             if k.lower() != b"authorization"]}
        await self._app(scope, _replay(body), send)

    def _principal(self, agent_id: str) -> Principal:
        """The agent as this node's own agents file has it (revoked here: refused)."""
        if not valid_name(agent_id):
            raise AssertionRefused("malformed agent id")
        directory = self._guard.directory
        directory.refresh()
        role = dict(directory.agents()).get(agent_id)
        if role not in ROLES:
            raise AssertionRefused("agent unknown to this node")
        return Principal(agent_id, role)

    async def _authenticate(self, scope: Scope, send: Send) -> Principal | None:
        """The caller's key checked here, as the app would (None: refused, answered)."""
        scheme, _, api_key = (_header(scope, b"authorization") or b"").decode(
            "latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not api_key.strip():
            await _respond(send, 401, {"detail": "missing bearer API key"},
                           [(b"www-authenticate", b"Bearer")])
            return None
        client = scope.get("client")
        try:
            return await self._guard.check(api_key.strip(), client[0] if client else "unknown")
        except AuthRefused as exc:
            extra = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else [
                (b"retry-after", str(max(1, round(exc.retry_after + 0.5))).encode())]
            await _respond(send, exc.status, {"detail": exc.reason}, extra)
            return None

    async def _owner(self, call_id: str) -> tuple[str, str] | None:
        """(node, API base URL) of the node that owns the call, if another one does."""
        try:
            owner = (await self._store.owners()).get(call_id)
            if owner is None or owner == self._node:
                return None
            url = (await self._store.nodes()).get(owner)
            return (owner, url) if url else None
        except StoreError as exc:
            log.warning("store unreachable: cannot find the call's node", reason=str(exc))
            return None

    def _signed_headers(self, scope: Scope, target: str, who: Principal, method: str,
                        path: str, query: str, body: bytes) -> dict[str, str]:
        headers = _pass_headers(scope)
        headers[ASSERTION.decode()] = self._assertions.sign(
            target, who.agent_id, method, path, query, body,
            headers.get("idempotency-key", ""))
        return headers

    async def _forward(self, owner: tuple[str, str], scope: Scope, receive: Receive,
                       send: Send) -> None:
        node, base = owner
        body = await _body(receive, self._max_body)
        if body is None:
            await _respond(send, 413, {"detail": "request body too large"})
            return
        who = await self._authenticate(scope, send)
        if who is None:
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = base + scope["path"] + (f"?{query}" if query else "")
        headers = self._signed_headers(scope, node, who, scope["method"], scope["path"],
                                       query, body)
        try:
            r = await self._http.request(scope["method"], url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("owning node unreachable", url=base, error=type(exc).__name__)
            await _respond(send, 502, {"detail": "the node that owns this call is unreachable"})
            return
        await _respond_raw(send, r.status_code, r.content,
                           r.headers.get("content-type", "application/json"))

    async def _listing(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, content_type = await _capture(self._app, scope, receive)
        if status != 200:
            await _respond_raw(send, status, body, content_type)
            return
        calls = json.loads(body)
        seen = {c["call_id"] for c in calls}
        try:
            others = {n: u for n, u in (await self._store.nodes()).items() if n != self._node}
        except StoreError:
            others = {}
        down, orphans = await self._down()
        try:  # the app accepted this key just now (cached: no second scrypt)
            who = (await self._guard.check(*_key_and_source(scope))
                   if others or orphans else None)
        except AuthRefused:
            who = None  # revoked meanwhile: this node's calls only
        for node, base in sorted(others.items()):
            if node in down:  # its heartbeat is gone: its calls come from the store below
                continue
            if who is None:
                break
            headers = self._signed_headers(scope, node, who, "GET", "/v1/calls", "", b"")
            try:
                r = await self._http.get(base + "/v1/calls", headers=headers)
            except httpx.HTTPError:
                log.info("node left out of the call list: unreachable", node=node)
                continue
            if r.status_code != 200:
                continue
            for call in r.json():
                if call["call_id"] not in seen:
                    seen.add(call["call_id"])
                    calls.append(call)
        if who is not None:
            for orphan in orphans:
                if orphan.call_id not in seen and (who.at_least("supervisor")
                                                   or orphan.agent_id == who.agent_id):
                    seen.add(orphan.call_id)
                    calls.append(_owner_down_view(orphan))
        await _respond(send, 200, calls)

    async def _down(self) -> tuple[set[str], list[DownCall]]:
        """The nodes whose heartbeat is gone and their calls (none without Redis)."""
        if not isinstance(self._store, RedisStore):
            return set(), []
        try:
            return await down_calls(self._store.client, self._node)
        except StoreError as exc:
            log.info("owner-down calls not listed: store unreachable", reason=str(exc))
            return set(), []

    async def aclose(self) -> None:
        await self._http.aclose()


def _owner_down_view(call: DownCall) -> dict[str, Any]:
    """A call of a node whose heartbeat is gone, as ``GET /v1/calls`` lists calls (its fields
    from the record; no payment is in progress anywhere), marked as such."""
    return CallModel(
        call_id=call.call_id, agent_id=call.agent_id, last_payment_sid=call.last_payment_sid,
        started_at=datetime.datetime.fromtimestamp(call.created, datetime.UTC),
        owner_down=True, node=call.node).model_dump(mode="json")


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", []) if k.lower() == name), None)


def _key_and_source(scope: Scope) -> tuple[str, str]:
    _, _, api_key = (_header(scope, b"authorization") or b"").decode("latin-1").partition(" ")
    client = scope.get("client")
    return api_key.strip(), client[0] if client else "unknown"


def _replay(body: bytes) -> Receive:
    """A ``receive`` that gives the app the body already read here, then a disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def _pass_headers(scope: Scope) -> dict[str, str]:
    """What a forward keeps of the request's headers: never ``Authorization``."""
    keep = {b"content-type", b"idempotency-key"}
    headers = {k.decode("latin-1"): v.decode("latin-1")
               for k, v in scope.get("headers", []) if k.lower() in keep}
    headers[FORWARDED.decode()] = "1"
    return headers


async def _body(receive: Receive, limit: int) -> bytes | None:
    """The request body; None past ``limit`` bytes (it is read here, before the app's own
    limit would see it)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _capture(app: App, scope: Scope, receive: Receive) -> tuple[int, bytes, str]:
    status, content_type, chunks = 500, "application/json", []

    async def send(message: Message) -> None:
        nonlocal status, content_type
        if message["type"] == "http.response.start":
            status = message["status"]
            for k, v in message.get("headers", []):
                if k.lower() == b"content-type":
                    content_type = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks), content_type


async def _respond(send: Send, status: int, payload: object,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _respond_raw(send, status, json.dumps(payload).encode(), "application/json", extra)


async def _respond_raw(send: Send, status: int, body: bytes, content_type: str,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1")),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
