"""A refused token request says which fields were wrong, never what was sent — and a field's
name is something sent too: a card number posted as a JSON key must not come back (found by the
HTTP fuzzer: ``{"4111111111111111": null}`` was echoed in the 422's ``fields``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.pki import init_pki
from gateway.store import TokenStore, load_key

PAN = "4111111111111111"


@pytest.mark.parametrize(("body", "fields"), [
    ({PAN: None}, ["(unknown field)", "expiry", "pan", "security_code"]),
    ({"pan": PAN, "expiry": "1230", "security_code": "123", f"x{PAN}": 1},
     ["(unknown field)"]),
    ({"pan": "12", "expiry": "1230", "security_code": "123"}, ["pan"]),
])
def test_a_refusal_names_only_our_fields(tmp_path: Path, body: dict[str, object],
                                         fields: list[str]) -> None:
    pki = init_pki(tmp_path)
    store = TokenStore(pki.database, load_key(pki.aes_key))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="https://gateway") as client:
            return await client.post("/v1/tokens", content=json.dumps(body),
                                     headers={"Content-Type": "application/json",
                                              "Idempotency-Key": "key-0123456789"})
    try:
        r = asyncio.run(post())
    finally:
        store.close()
    assert r.status_code == 422
    assert r.json()["fields"] == fields
    assert PAN not in r.text
