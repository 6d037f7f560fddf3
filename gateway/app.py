"""The gateway's HTTP API: tokenise a card, idempotently. Served only over mutual TLS.

Test cards decline by their last four digits so any Luhn-valid number can exercise a decline:
``0002`` → card_declined, ``9995`` → insufficient_funds. Nothing a response or an error
contains ever includes the card number.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway import cards
from gateway.store import TokenStore

DECLINES = {"0002": "card_declined", "9995": "insufficient_funds"}


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pan: str = Field(min_length=12, max_length=19, pattern=r"^\d+$", repr=False)
    expiry: str = Field(pattern=r"^\d{4}$", description="MMYY")
    security_code: str = Field(pattern=r"^\d{3,4}$", repr=False)
    postal_code: str | None = Field(default=None, max_length=10, repr=False)


def create_app(store: TokenStore) -> FastAPI:
    app = FastAPI(title="ToneGuard gateway stub", version="1")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: object, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 body echoes the input, which would be the card number.
        fields = sorted({".".join(str(p) for p in e["loc"][1:]) for e in exc.errors()})
        return JSONResponse({"status": "error", "error": "invalid_request", "fields": fields},
                            status_code=422)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/tokens")
    async def tokenise(body: TokenRequest,
                       idempotency_key: Annotated[str, Header(min_length=8, max_length=128)]
                       ) -> JSONResponse:
        # Bind the idempotency key to the request without keeping the card number.
        digest = hmac.new(idempotency_key.encode(), f"{body.pan}|{body.expiry}".encode(),
                          hashlib.sha256).hexdigest()
        if (known := store.remembered(idempotency_key)) is not None:
            if known[0] != digest:
                raise HTTPException(409, "idempotency key reused with a different request")
            return JSONResponse(known[1]["body"], status_code=known[1]["status"])
        status, response = _decide(store, body)
        store.remember(idempotency_key, digest, {"status": status, "body": response})
        return JSONResponse(response, status_code=status)

    return app


def _decide(store: TokenStore, body: TokenRequest) -> tuple[int, dict[str, str]]:
    brand = cards.brand(body.pan)
    if not cards.luhn_valid(body.pan) or brand is None:
        return 402, {"status": "declined", "decline_code": "invalid_number"}
    if not cards.expiry_valid(body.expiry):
        return 402, {"status": "declined", "decline_code": "expired_card"}
    if len(body.security_code) != (4 if brand == "amex" else 3):
        return 402, {"status": "declined", "decline_code": "invalid_security_code"}
    if (code := DECLINES.get(body.pan[-4:])) is not None:
        return 402, {"status": "declined", "decline_code": code}
    record = store.add(body.pan, brand, body.expiry)
    return 201, {"status": "approved", "token": record.token, "brand": record.brand,
                 "last4": record.last4, "expiry": record.expiry}
