"""A refused API request says where it was invalid, never what was sent — and a location can
hold names the client chose (an unknown key), so one holding a card number is masked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from proxy.api import auth
from proxy.api.app import create_app
from proxy.api.auth import AgentDirectory
from proxy.securepay.manager import PaymentManager

PAN = "4111111111111111"


@pytest.fixture
def client_and_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # cheap scrypt, as in test_app.py
    agents = AgentDirectory()
    key = agents.add("ann", "agent")
    manager = PaymentManager(None)
    manager.call_started("c-ann", "agent=ann")
    with TestClient(create_app(manager, agents)) as client:
        yield client, key


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
