"""FastAPI app: payments per call, call assignment, live events, the agent panel, health.

Every request is authenticated (``Authorization: Bearer <key>``; the WebSocket takes the key as
``?key=``). An agent sees and acts on its own calls only; supervisors and admins on all.
Responses and events carry masked card data only; every action is audited.
"""


import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, PlainTextResponse

from proxy.api.auth import AgentDirectory, Principal
from proxy.api.models import Assign, Call, Payment, StartPayment, UpdatePayment
from proxy.securepay.manager import PaymentError, PaymentManager
from proxy.securepay.session import PaymentSession

STATIC = Path(__file__).resolve().parent.parent / "static"


def payment_view(session: PaymentSession) -> Payment:
    return Payment(sid=session.sid, call_id=session.call_id, status=session.status,
                   current_field=session.current or "", fields=session.masked(),
                   brand=session.brand or session.final_brand, token=session.token,
                   last4=session.last4 or session.final_last4, error=session.error)


def create_app(manager: PaymentManager, agents: AgentDirectory,
               metrics_text: Callable[[], bytes] | None = None) -> FastAPI:
    app = FastAPI(title="ToneGuard", version="1",
                  description="Secure-pay sessions on calls relayed by ToneGuard.")

    def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing bearer API key",
                                headers={"WWW-Authenticate": "Bearer"})
        who = agents.authenticate(authorization.removeprefix("Bearer ").strip())
        if who is None:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return who

    Who = Annotated[Principal, Depends(principal)]

    def owned_call(call_id: str, who: Principal) -> None:
        info = manager.calls.get(call_id)
        if info is None:
            raise HTTPException(404, "unknown call")
        if not who.at_least("supervisor") and info.agent_id != who.agent_id:
            manager.audit.record("denied", actor=who.agent_id, call_id=call_id)
            raise HTTPException(403, "this call is not assigned to you")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        body = metrics_text() if metrics_text else b""
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @app.get("/panel", include_in_schema=False)
    async def panel() -> FileResponse:
        return FileResponse(STATIC / "panel.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(path)

    @app.get("/v1/me")
    async def me(who: Who) -> dict[str, str]:
        return {"agent_id": who.agent_id, "role": who.role}

    @app.get("/v1/calls")
    async def calls(who: Who) -> list[Call]:
        active = {s.call_id: s.sid for s in manager.sessions.values()
                  if s.status not in ("complete", "failed", "cancelled")}
        return [Call(call_id=c.call_id, agent_id=c.agent_id, payment_sid=active.get(c.call_id, ""))
                for c in manager.calls.values()
                if who.at_least("supervisor") or c.agent_id == who.agent_id]

    @app.post("/v1/calls/{call_id}/assign")
    async def assign(call_id: str, body: Assign, who: Who) -> Call:
        if not who.at_least("supervisor"):
            raise HTTPException(403, "only supervisors and admins assign calls")
        try:
            info = manager.assign(call_id, body.agent_id, who.agent_id)
        except PaymentError as exc:
            raise HTTPException(404, str(exc)) from None
        return Call(call_id=info.call_id, agent_id=info.agent_id)

    @app.post("/v1/calls/{call_id}/payments", status_code=201)
    async def start(call_id: str, body: StartPayment, who: Who,
                    idempotency_key: Annotated[str | None, Header()] = None) -> Payment:
        owned_call(call_id, who)
        try:
            session = manager.start(call_id, who.agent_id, require_postal_code=body.postal_code,
                                    accepted_brands=tuple(body.valid_card_types or ()),
                                    idempotency_key=idempotency_key)
        except PaymentError as exc:
            raise HTTPException(409, str(exc)) from None
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
            elif body.status == "complete":
                session = manager.complete(call_id, sid, who.agent_id)
            elif body.status == "cancel":
                session = manager.cancel(call_id, sid, who.agent_id)
            else:
                raise HTTPException(422, "give Capture or Status")
        except PaymentError as exc:
            raise HTTPException(409 if "status" in str(exc) else 404, str(exc)) from None
        return payment_view(session)

    @app.websocket("/v1/events")
    async def events(ws: WebSocket, key: str = "") -> None:
        who = agents.authenticate(key)
        if who is None:
            await ws.close(code=4401)
            return
        await ws.accept()
        queue = manager.bus.subscribe()
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                receiver = asyncio.ensure_future(ws.receive_text())
                done, _ = await asyncio.wait({getter, receiver},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in (getter, receiver):
                    if task not in done:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if receiver in done:
                    receiver.result()  # raises WebSocketDisconnect when the client left
                    continue
                event = getter.result()
                if who.at_least("supervisor") or event.agent_id == who.agent_id:
                    await ws.send_json(event.as_dict())
        except WebSocketDisconnect:
            pass
        finally:
            manager.bus.unsubscribe(queue)

    return app
