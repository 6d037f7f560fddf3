"""FastAPI app: payments per call, call assignment, live events, the agent panel, health.

Every request is authenticated (``Authorization: Bearer <key>``; the WebSocket takes the key as
its second offered subprotocol, ``Sec-WebSocket-Protocol: toneguard, <key>``, never in the URL
where access logs and browser history keep it). An agent sees and acts on its own calls only;
supervisors and admins on all. Responses and events carry masked card data only; every action
is audited. Keys are checked off the event loop, with limits (:class:`proxy.api.auth.KeyGuard`);
request bodies are limited before anything reads them (:class:`proxy.api.middleware.BodyLimit`).
"""


import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import (
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from proxy.api.auth import (
    FORWARDED_PRINCIPAL,
    AgentDirectory,
    AuthRefused,
    AuthSettings,
    KeyGuard,
    Principal,
)
from proxy.api.middleware import (
    BodyLimit,
    SecurityHeaders,
    content_security_policy,
    install_log_redaction,
)
from proxy.api.models import Assign, Call, Payment, RequestedStatus, StartPayment, UpdatePayment
from proxy.securepay.events import PaymentEvent
from proxy.securepay.manager import (
    CallInfo,
    CaptureRefused,
    PaymentConflict,
    PaymentError,
    PaymentManager,
)
from proxy.securepay.redaction import redact_text
from proxy.securepay.session import PaymentSession

STATIC = Path(__file__).resolve().parent.parent / "static"
WS_SUBPROTOCOL = "toneguard"  # offered first by clients, echoed by the server; the key follows


@dataclass(frozen=True)
class ApiSettings:
    """What ``[api]`` configures beyond the listen address (see proxy/service/config.py)."""

    max_body_bytes: int = 64 * 1024
    public_metrics: bool = False  # True: /metrics without a key (a scraper on a trusted net)
    auth: AuthSettings = field(default_factory=AuthSettings)
    softphone_ws_url: str = ""  # Kamailio's SIP WebSocket for the panel's softphone ("" = none)
    softphone_domain: str = ""  # the SIP domain agents register in ("" = the URL's host)
    softphone_secret: bytes = b""  # shared with Kamailio: SIP passwords are derived from it
    softphone_credential_seconds: int = 12 * 3600

    @property
    def softphone_origin(self) -> str:
        """``scheme://host[:port]`` of the softphone's WebSocket (what CSP allows), or ""."""
        if not self.softphone_ws_url:
            return ""
        parts = urlsplit(self.softphone_ws_url)
        return f"{parts.scheme}://{parts.netloc}"


def payment_view(session: PaymentSession) -> Payment:
    return Payment(sid=session.sid, call_id=session.call_id, status=session.status,
                   current_field=session.current or "", fields=session.masked(),
                   brand=session.brand or session.final_brand, token=session.token,
                   last4=session.last4 or session.final_last4, error=session.error,
                   amount=session.amount, currency=session.currency)


def call_view(info: CallInfo, active_sid: str = "") -> Call:
    started = (datetime.datetime.fromtimestamp(info.started_at, datetime.UTC)
               if info.started_at else None)
    return Call(call_id=info.call_id, agent_id=info.agent_id, payment_sid=active_sid,
                last_payment_sid=info.last_sid, caller=info.caller, started_at=started)


def http_error(exc: PaymentError) -> HTTPException:
    """409 for a state conflict, 503 when masking could not be ensured, else 404."""
    if isinstance(exc, PaymentConflict):
        return HTTPException(409, str(exc))
    if isinstance(exc, CaptureRefused):
        return HTTPException(503, str(exc))
    return HTTPException(404, str(exc))


def _style_hashes(html: Path) -> list[str]:
    """CSP hashes of the panel's inline ``<style>`` blocks, computed from the file served."""
    try:
        text = html.read_text("utf-8")
    except OSError:
        return []
    return [base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()
            for m in re.findall(r"<style>(.*?)</style>", text, re.S)]


def sip_credential(secret: bytes, agent_id: str, lifetime_s: int,
                   now: float | None = None) -> tuple[str, str]:
    """A SIP digest credential for the agent's softphone that Kamailio checks without a
    database (config/kamailio/kamailio.cfg, route[REGISTER_AUTH]): user ``<expiry>:<agent id>``,
    password the base64url HMAC-SHA256 of that user under the shared secret (Kamailio's
    ``crypto_hmac_sha256``, unpadded). It registers that agent's address only, until it expires."""
    expiry = int(now if now is not None else time.time()) + lifetime_s
    user = f"{expiry}:{agent_id}"
    digest = hmac.new(secret, user.encode(), hashlib.sha256).digest()
    # Unpadded, as Kamailio's base64url encoder writes it.
    return user, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _validation_fields(exc: RequestValidationError) -> list[str]:
    """Where a request was invalid (``body.amount``), never what was sent: FastAPI's default
    422 body echoes the input, which may be a card number typed into the wrong field."""
    # A location can hold names the client chose (an unknown key, a dict key): one that holds a
    # card number is masked, and none is sent back longer than 64 characters.
    return sorted({redact_text(".".join(str(p) for p in e.get("loc", ())))[:64]
                   for e in exc.errors()})


def create_app(manager: PaymentManager, agents: AgentDirectory,
               metrics_text: Callable[[], bytes] | None = None,
               settings: ApiSettings | None = None,
               readiness: Callable[[], list[str]] | None = None) -> FastAPI:
    """``readiness`` names what keeps the node from taking calls (empty: ready)."""
    settings = settings or ApiSettings()
    # /docs and /redoc are off (a browser cannot send the key to them, and their CDN scripts
    # would need a looser CSP); /openapi.json needs a key.
    # No slash redirects: the 307's Location would repeat the query string (a key or a card
    # number someone put there) back to the client and into any proxy's log.
    app = FastAPI(title="ToneGuard", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False,
                  description="Secure-pay sessions on calls relayed by ToneGuard.")
    guard = KeyGuard(agents, settings.auth, audit=manager.audit.record)
    app.state.key_guard = guard
    install_log_redaction()
    # Idempotency-Keys are scoped to (agent, call) and kept only as a keyed hash: one agent
    # reusing another's key gets a payment of its own, and a key that is a card number by
    # mistake is not kept in memory.
    idempotency_secret = secrets.token_bytes(32)
    static_files = {p.name: p for p in STATIC.iterdir() if p.is_file()}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "invalid request", "fields": _validation_fields(exc)},
                            status_code=422)

    async def authorize(api_key: str, source: str) -> Principal:
        try:
            return await guard.check(api_key, source)
        except AuthRefused as exc:
            if exc.status == 429:
                raise HTTPException(429, exc.reason, headers={
                    "Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None
            raise HTTPException(401, exc.reason,
                                headers={"WWW-Authenticate": "Bearer"}) from None

    async def principal(request: Request,
                        authorization: Annotated[str | None, Header()] = None) -> Principal:
        forwarded = request.scope.get(FORWARDED_PRINCIPAL)
        if isinstance(forwarded, Principal):  # another node checked the key (forward.py)
            return forwarded
        scheme, _, api_key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not api_key.strip():  # schemes are case-insensitive
            raise HTTPException(401, "missing bearer API key",
                                headers={"WWW-Authenticate": "Bearer"})
        source = request.client.host if request.client else "unknown"
        return await authorize(api_key.strip(), source)

    Who = Annotated[Principal, Depends(principal)]

    def owned_call(call_id: str, who: Principal) -> None:
        info = manager.calls.get(call_id)
        if info is None:
            raise HTTPException(404, "unknown call")
        if not who.at_least("supervisor") and info.agent_id != who.agent_id:
            manager.audit.record("denied", actor=who.agent_id, call_id=call_id)
            raise HTTPException(403, "this call is not assigned to you")

    def sees(who: Principal, event: PaymentEvent) -> bool:
        """An agent gets the events of the calls assigned to it *now*: after a reassignment
        the previous agent gets nothing more (the event's own agent only once the call is
        gone, e.g. the final "ended")."""
        if who.at_least("supervisor"):
            return True
        return manager.owner(event.call_id, event.agent_id) == who.agent_id

    def scoped(key: str | None, who: Principal, call_id: str) -> str | None:
        if not key:
            return None
        message = b"\0".join(part.encode("utf-8", "replace")
                             for part in (who.agent_id, call_id, key))
        return hmac.new(idempotency_secret, message, hashlib.sha256).hexdigest()

    @app.get("/health")
    @app.get("/healthz")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (no key: a load balancer or kubelet asks)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def ready() -> JSONResponse:
        """Readiness: the ng socket, the media engine and its workers are up and the node is
        not stopping; otherwise 503 naming what is not (no key, no call data)."""
        problems = readiness() if readiness is not None else []
        # "degraded: ..." (the shared store is down) is reported but still ready: calls work.
        blocking = [p for p in problems if not p.startswith("degraded")]
        status = "not ready" if blocking else "degraded" if problems else "ready"
        return JSONResponse({"status": status, "problems": problems},
                            status_code=503 if blocking else 200)

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    async def metrics(request: Request,
                      authorization: Annotated[str | None, Header()] = None
                      ) -> PlainTextResponse:
        if not settings.public_metrics:
            who = await principal(request, authorization)
            if not who.at_least("supervisor"):
                raise HTTPException(403, "metrics need a supervisor or admin key")
        body = metrics_text() if metrics_text else b""
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(who: Who) -> dict[str, Any]:
        return app.openapi()

    @app.get("/panel", include_in_schema=False)
    async def panel() -> FileResponse:
        return FileResponse(STATIC / "panel.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        # Only the files shipped in static/, looked up by exact name: no path is built from
        # the request (a NUL or "..", once a 500 or a traversal, is just an unknown name).
        path = static_files.get(name)
        if path is None:
            raise HTTPException(404, "not found")
        return FileResponse(path)

    @app.get("/v1/me")
    async def me(who: Who) -> dict[str, str]:
        return {"agent_id": who.agent_id, "role": who.role}

    @app.get("/v1/softphone")
    async def softphone(who: Who) -> dict[str, Any]:
        """Where the panel's softphone registers: Kamailio's SIP WebSocket and the agent's own
        address of record (``sip:<agent_id>@<domain>``: Kamailio routes a call to the agent it
        is assigned to by that user part, and passes it on to ToneGuard as ``agent=``)."""
        if not settings.softphone_ws_url:
            return {"enabled": False}
        domain = settings.softphone_domain or urlsplit(settings.softphone_ws_url).hostname
        reply: dict[str, Any] = {"enabled": True, "ws_url": settings.softphone_ws_url,
                                 "uri": f"sip:{who.agent_id}@{domain}",
                                 "display_name": who.agent_id}
        if settings.softphone_secret:
            user, password = sip_credential(settings.softphone_secret, who.agent_id,
                                            settings.softphone_credential_seconds)
            reply |= {"authorization_user": user, "password": password}
        return reply

    @app.get("/v1/calls")
    async def calls(who: Who) -> list[Call]:
        active = {s.call_id: s.sid for s in manager.sessions.values() if not s.status.terminal}
        return [call_view(c, active.get(c.call_id, "")) for c in manager.calls.values()
                if who.at_least("supervisor") or c.agent_id == who.agent_id]

    @app.post("/v1/calls/{call_id}/assign")
    async def assign(call_id: str, body: Assign, who: Who) -> Call:
        if not who.at_least("supervisor"):
            raise HTTPException(403, "only supervisors and admins assign calls")
        agents.refresh()
        if body.agent_id not in {agent_id for agent_id, _ in agents.agents()}:
            raise HTTPException(422, "no such agent")
        try:
            info = manager.assign(call_id, body.agent_id, who.agent_id)
        except PaymentError as exc:
            raise HTTPException(404, str(exc)) from None
        return call_view(info)

    @app.post("/v1/calls/{call_id}/payments", status_code=201)
    async def start(call_id: str, body: StartPayment, who: Who,
                    idempotency_key: Annotated[str | None, Header(max_length=255)] = None
                    ) -> Payment:
        owned_call(call_id, who)
        try:
            session = manager.start(call_id, who.agent_id, require_postal_code=body.postal_code,
                                    accepted_brands=tuple(body.valid_card_types or ()),
                                    idempotency_key=scoped(idempotency_key, who, call_id),
                                    amount=body.amount or "", currency=body.currency or "")
        except PaymentError as exc:
            raise http_error(exc) from exc
        return payment_view(session)

    @app.get("/v1/calls/{call_id}/payments/{sid}")
    async def get_payment(call_id: str, sid: str, who: Who) -> Payment:
        owned_call(call_id, who)
        try:
            return payment_view(manager.get(call_id, sid))
        except PaymentError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post("/v1/calls/{call_id}/payments/{sid}")
    async def update_payment(call_id: str, sid: str, body: UpdatePayment, who: Who) -> Payment:
        owned_call(call_id, who)
        try:
            if body.capture:
                session = manager.recapture(call_id, sid, body.capture, who.agent_id)
            elif body.status is RequestedStatus.COMPLETE:
                session = manager.complete(call_id, sid, who.agent_id)
            elif body.status is RequestedStatus.CANCEL:
                session = manager.cancel(call_id, sid, who.agent_id)
            else:
                raise HTTPException(422, "give Capture or Status")
        except PaymentError as exc:
            raise http_error(exc) from exc
        return payment_view(session)

    @app.websocket("/v1/events")
    async def events(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        keys = [p for p in offered if p != WS_SUBPROTOCOL]
        source = ws.client.host if ws.client else "unknown"
        if WS_SUBPROTOCOL not in offered or len(keys) != 1 or "key" in ws.query_params:
            # A key in the URL is refused even when valid: it would already be in a log.
            await ws.close(code=4401)
            return
        try:
            who = await guard.check(keys[0], source)
        except AuthRefused:
            # 403 on the handshake whether wrong or rate-limited (uvicorn logs an error for
            # every denial response with another status); the REST API tells 429 apart.
            await ws.close(code=4401)
            return
        await ws.accept(subprotocol=WS_SUBPROTOCOL)
        queue = manager.bus.subscribe()
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                receiver = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({getter, receiver},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in (getter, receiver):
                    if task not in done:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if receiver in done:
                    # What the client sends is ignored (text or binary); only leaving counts.
                    if receiver.result()["type"] == "websocket.disconnect":
                        return
                    continue
                event = getter.result()
                if sees(who, event):
                    await ws.send_json(event.as_dict())
        except WebSocketDisconnect:
            pass
        finally:
            manager.bus.unsubscribe(queue)

    # Outermost last: the body limit sees the request before anything else reads it.
    connect = [settings.softphone_origin] if settings.softphone_origin else []
    app.add_middleware(SecurityHeaders, csp=content_security_policy(
        _style_hashes(STATIC / "panel.html"), connect=connect))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
