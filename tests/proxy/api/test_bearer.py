"""The Authorization header as clients really spell it: the scheme is case-insensitive (RFC 9110
§11.1), surrounding blanks are tolerated, and anything that is not a bearer key is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from proxy.api import auth
from proxy.api.app import create_app
from proxy.api.auth import AgentDirectory
from proxy.securepay.manager import PaymentManager


@pytest.fixture
def client_and_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # cheap scrypt, as in test_app.py
    agents = AgentDirectory()
    key = agents.add("ann", "agent")
    manager = PaymentManager(None)
    manager.call_started("c-ann", "agent=ann")
    with TestClient(create_app(manager, agents)) as client:
        yield client, key


@pytest.mark.parametrize("spelling", ["Bearer {k}", "bearer {k}", "BEARER {k}", " Bearer  {k} "])
def test_any_case_of_the_bearer_scheme_is_accepted(client_and_key: tuple[TestClient, str],
                                                   spelling: str) -> None:
    client, key = client_and_key
    r = client.get("/v1/calls", headers={"Authorization": spelling.format(k=key)})
    assert r.status_code == 200, r.text
    assert [c["call_id"] for c in r.json()] == ["c-ann"]


@pytest.mark.parametrize("spelling", ["{k}", "Basic {k}", "Bearer", "Bearer ", "Bearerx {k}",
                                      "Token {k}"])
def test_other_schemes_and_a_missing_key_are_refused(client_and_key: tuple[TestClient, str],
                                                     spelling: str) -> None:
    client, key = client_and_key
    r = client.get("/v1/calls", headers={"Authorization": spelling.format(k=key)})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
