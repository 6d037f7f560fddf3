"""ASGI middleware of the API: a request-body limit, security headers, log redaction.

The body limit runs before routing and authentication: FastAPI reads a request's body before it
resolves dependencies, so without it an unauthenticated client could make the node buffer any
amount. ``Content-Length`` over the limit is refused without reading a byte; a chunked body is
counted as it streams and refused as soon as it passes the limit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE = b'{"detail":"request body too large"}'


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


async def _reply(send: Send, status: int, body: bytes,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await _reply(send, 400, b'{"detail":"invalid Content-Length"}')
                return
            if int(declared) > self.max_bytes:
                await _reply(send, 413, TOO_LARGE)
                return
        received = 0
        limit = self.max_bytes

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body reading, so this becomes a
                    # plain 413 answer (no traceback, no 500).
                    raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, counted, send)


def content_security_policy(style_hashes: Iterable[str] = (),
                            connect: Iterable[str] = ()) -> str:
    """Self only; the panel's inline ``<style>`` is allowed by its hash, not 'unsafe-inline'.
    ``connect`` adds exact origins to ``connect-src`` (the softphone's SIP WebSocket, e.g.
    ``wss://sip.example.com:8443``): one configured origin, never a scheme or a wildcard.
    WebRTC media needs nothing here: CSP does not govern RTCPeerConnection, and the remote
    audio plays from a MediaStream (``srcObject``), not from a URL ``media-src`` would check."""
    styles = " ".join(["'self'", *(f"'sha256-{h}'" for h in style_hashes)])
    connects = " ".join(["'self'", *connect])
    return ("default-src 'self'; script-src 'self'; style-src " + styles + "; "
            "img-src 'self'; connect-src " + connects + "; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """Adds the browser hardening headers, and ``Cache-Control: no-store`` (payment data must
    not sit in a browser or proxy cache), to every HTTP response."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
        ]
        self._names = {name for name, _ in self.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ())
                        if k.lower() not in self._names]
                message = {**message, "headers": kept + self.headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# --- log redaction (a backstop: keys are no longer sent in URLs) ---------------------------

_SECRETS_IN_TEXT = (
    (re.compile(r"(?i)\b((?:api_?)?key|token|secret)=[^&\s\"'#]*"), r"\1=[redacted]"),
    (re.compile(r"tg_[0-9A-Za-z]+_[A-Za-z0-9_-]+"), "tg_[redacted]"),
    (re.compile(r"(?<!\d)\d{12,19}(?!\d)"), "[digits redacted]"),
)


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with API keys, ``key=`` values and card-length digit runs
    removed (uvicorn logs ``"WebSocket /path?query"`` at info level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = redact_text(message), ()
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the filter to uvicorn's loggers (idempotent)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
