"""The gateway's HTTP API: tokenise a card, idempotently. Served only over mutual TLS.

Test cards decline by their last four digits so any Luhn-valid number can exercise a decline:
``0002`` → card_declined, ``9995`` → insufficient_funds. Nothing a response or an error
contains ever includes the card number.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway import cards
from gateway.limits import BodyLimit, RequestLog
from gateway.store import TokenStore

DECLINES = {"0002": "card_declined", "9995": "insufficient_funds"}
MAX_BODY_BYTES = 64 * 1024
# A digit run of card length standing alone (maybe grouped by spaces or dashes) in a key.
_PAN_LIKE = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])")


def looks_like_pan(text: str) -> bool:
    """A Luhn-valid run of 13-19 digits: refused as an Idempotency-Key (it would be a card
    number typed in the wrong place). Runs inside a word (hex ids) are not card numbers."""
    for match in _PAN_LIKE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and cards.luhn_valid(digits):
            return True
    return False


def _error(status: int, error: str, **extra: object) -> JSONResponse:
    return JSONResponse({"status": "error", "error": error, **extra}, status_code=status)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pan: str = Field(min_length=12, max_length=19, pattern=r"^\d+$", repr=False)
    expiry: str = Field(pattern=r"^\d{4}$", description="MMYY")
    security_code: str = Field(pattern=r"^\d{3,4}$", repr=False)
    postal_code: str | None = Field(default=None, max_length=10, repr=False)


_KNOWN_FIELDS = frozenset(TokenRequest.model_fields) | {"idempotency-key"}


def _answerable(field: str) -> str:
    """A field name fit to send back: one of ours, else a placeholder."""
    if field in _KNOWN_FIELDS:
        return field
    return "(unknown field)" if field else "(body)"


def create_app(store: TokenStore, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    # No slash redirects: their Location repeats the query string (whatever was put there).
    app = FastAPI(title="ToneGuard gateway stub", version="1", docs_url=None, redoc_url=None,
                  redirect_slashes=False)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: object, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 body echoes the input, which would be the card number.
        # Nor the names of unknown fields: a client chooses those (a card number sent as a key).
        fields = sorted({_answerable(".".join(str(p) for p in e["loc"][1:]))
                         for e in exc.errors()})
        return _error(422, "invalid_request", fields=fields)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/tokens")
    async def tokenise(body: TokenRequest,
                       idempotency_key: Annotated[str, Header(min_length=8, max_length=128)]
                       ) -> JSONResponse:
        if looks_like_pan(idempotency_key):
            return _error(422, "invalid_request", fields=["idempotency-key"])
        # Everything submitted is bound to the key: a retry with any field changed (even
        # only the security code) is a different request, not a replay.
        fingerprint = store.fingerprint(body.model_dump())
        if (known := store.remembered(idempotency_key)) is not None:
            if not hmac.compare_digest(known[0], fingerprint):
                return _error(409, "idempotency_key_reused")
            return JSONResponse(known[1]["body"], status_code=known[1]["status"])
        status, response = _decide(store, body)
        store.remember(idempotency_key, fingerprint, {"status": status, "body": response})
        return JSONResponse(response, status_code=status)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestLog)  # outermost: logs the 413s too
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
