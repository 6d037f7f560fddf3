"""The API of any node acts on the calls of every node: an ASGI wrapper around the app.

- ``/v1/calls/<id>/...`` for a call this node does not have but another node owns (the store
  says which, and where its API answers) is forwarded there as it came — method, body and the
  caller's ``Authorization`` — so the owning node authenticates, authorises, audits and acts
  (the payment's digits, its masking and its gateway call all live there).
- ``GET /v1/calls`` answers with this node's calls plus those every other node returns for
  the same key (each node applies its own rules: an agent sees its own calls on every node).

A forwarded request carries ``X-ToneGuard-Forwarded`` and is answered locally only (no
loops). A node that cannot be reached: 502 for an action on its call; left out of a listing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import structlog

from proxy.store.base import StateStore, StoreError

log = structlog.get_logger("toneguard.store")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

FORWARDED = b"x-toneguard-forwarded"
_CALL_PATH = re.compile(r"^/v1/calls/([^/]+)(?:/.*)?$")
TIMEOUT = 5.0


class ClusterRouter:
    def __init__(self, app: App, *, node: str, store: StateStore,
                 local: Callable[[str], bool], max_body: int = 64 * 1024) -> None:
        self._app = app
        self._max_body = max_body
        self._node = node
        self._store = store
        self._local = local  # is this call on this node?
        self._http = httpx.AsyncClient(timeout=TIMEOUT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _header(scope, FORWARDED):
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1/calls" and scope["method"] == "GET":
            await self._listing(scope, receive, send)
            return
        match = _CALL_PATH.match(path)
        if match and not self._local(match.group(1)):
            url = await self._owner_url(match.group(1))
            if url is not None:
                await self._forward(url, scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _owner_url(self, call_id: str) -> str | None:
        try:
            owner = (await self._store.owners()).get(call_id)
            if owner is None or owner == self._node:
                return None
            return (await self._store.nodes()).get(owner)
        except StoreError as exc:
            log.warning("store unreachable: cannot find the call's node", reason=str(exc))
            return None

    async def _forward(self, base: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _body(receive, self._max_body)
        if body is None:
            await _respond(send, 413, {"detail": "request body too large"})
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = base + scope["path"] + (f"?{query}" if query else "")
        headers = _pass_headers(scope)
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
        for node, base in sorted(others.items()):
            try:
                r = await self._http.get(base + "/v1/calls", headers=_pass_headers(scope))
            except httpx.HTTPError:
                log.info("node left out of the call list: unreachable", node=node)
                continue
            if r.status_code != 200:
                continue
            for call in r.json():
                if call["call_id"] not in seen:
                    seen.add(call["call_id"])
                    calls.append(call)
        await _respond(send, 200, calls)

    async def aclose(self) -> None:
        await self._http.aclose()


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", []) if k.lower() == name), None)


def _pass_headers(scope: Scope) -> dict[str, str]:
    keep = {b"authorization", b"content-type", b"idempotency-key"}
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


async def _respond(send: Send, status: int, payload: object) -> None:
    await _respond_raw(send, status, json.dumps(payload).encode(), "application/json")


async def _respond_raw(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1")),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
