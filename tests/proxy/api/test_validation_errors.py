"""A refused API request says where it was invalid, never what was sent — and a location can
hold names the client chose (an unknown key), so one holding a card number is masked."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

PAN = "4111111111111111"


@pytest.mark.parametrize(("body", "fields"), [
    ({PAN: 1}, ["body.[PAN redacted …1111]"]),
    ({f"note{PAN}": "x"}, ["body.note[PAN redacted …1111]"]),
    ({"x" * 500: 1}, ["body." + "x" * 59]),
])
def test_a_refusal_never_echoes_a_card_number_or_a_long_name(
        client_and_key: tuple[TestClient, str], body: dict[str, object],
        fields: list[str]) -> None:
    client, key = client_and_key
    r = client.post("/v1/calls/c-ann/payments", json=body,
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 422
    assert r.json()["fields"] == fields
    assert PAN not in r.text
