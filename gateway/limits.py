"""ASGI middleware of the gateway: a request-body limit and a one-line-per-request log.

The gateway does not import ToneGuard (it stands for a third party's service), so this is its
own small copy of the proxy's body limit. FastAPI reads a body before it checks anything else;
without a limit any client holding a certificate could make the gateway buffer any amount.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("toneguard.gateway")
_DIGIT_RUN = re.compile(r"\d{6,}")


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a body over ``max_bytes``: a declared ``Content-Length`` is refused unread, a
    chunked body as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    await _reply(send, 400, b'{"status":"error","error":"invalid_request"}')
                    return
                if int(value) > self.max_bytes:
                    await _reply(send, 413, b'{"status":"error","error":"body_too_large"}')
                    return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, "body_too_large")  # FastAPI answers it as is
            return message

        await self.app(scope, counted, send)


class RequestLog:
    """``POST /v1/tokens 201 3.2ms``: method, path (digit runs masked), status, duration.
    Never the query string, headers or body (keys and card data live there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            path = _DIGIT_RUN.sub("…", scope.get("path", ""))[:200]
            log.info("%s %s %d %.1fms", scope.get("method", "?")[:16], path, status,
                     (time.perf_counter() - started) * 1000)
