"""Shared fixtures of the in-process API tests."""

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
    """The real app in-process with one agent, ann, assigned call ``c-ann``; her API key."""
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # cheap scrypt, as in test_app.py
    agents = AgentDirectory()
    key = agents.add("ann", "agent")
    manager = PaymentManager(None)
    manager.call_started("c-ann", "agent=ann")
    with TestClient(create_app(manager, agents)) as client:
        yield client, key
