"""The panel softphone's server side, in-process: where it registers (GET /v1/softphone, for
the key's own agent only), the one WebSocket origin the CSP adds, the JsSIP bundle served by
exact name, and config values that would widen the CSP refused. The browser end to end is
tests/proxy/control/test_softphone_chromium.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from proxy.api import auth
from proxy.api.app import ApiSettings, create_app
from proxy.api.auth import AgentDirectory
from proxy.securepay.manager import PaymentManager
from proxy.service.config import ConfigError, load_config


def _client(monkeypatch: pytest.MonkeyPatch, **settings: str) -> tuple[TestClient, str]:
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)  # fast key checks (as test_app.py)
    agents = AgentDirectory()
    key = agents.add("ann", "agent")
    app = create_app(PaymentManager(None), agents, settings=ApiSettings(**settings))
    return TestClient(app), key


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    client, key = _client(monkeypatch, softphone_ws_url="wss://sip.example.com:8443/ws",
                          softphone_domain="agents.example.com")
    with client:
        yield client, key


def test_the_softphone_registers_as_the_keys_own_agent(
        configured: tuple[TestClient, str]) -> None:
    client, key = configured
    assert client.get("/v1/softphone").status_code == 401  # a key is needed
    r = client.get("/v1/softphone", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert r.json() == {"enabled": True, "ws_url": "wss://sip.example.com:8443/ws",
                        "uri": "sip:ann@agents.example.com", "display_name": "ann"}


def test_csp_allows_exactly_the_sip_websocket_origin(configured: tuple[TestClient, str]) -> None:
    client, _ = configured
    csp = client.get("/panel").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["connect-src"] == "'self' wss://sip.example.com:8443"
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert "*" not in csp and "unsafe" not in csp


def test_without_a_softphone_url_nothing_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    client, key = _client(monkeypatch)
    with client:
        csp = client.get("/panel").headers["content-security-policy"]
        r = client.get("/v1/softphone", headers={"Authorization": f"Bearer {key}"})
    assert "connect-src 'self';" in csp
    assert r.json() == {"enabled": False}


def test_the_domain_defaults_to_the_websocket_host(monkeypatch: pytest.MonkeyPatch) -> None:
    client, key = _client(monkeypatch, softphone_ws_url="ws://127.0.0.1:8088")
    with client:
        r = client.get("/v1/softphone", headers={"Authorization": f"Bearer {key}"})
    assert r.json()["uri"] == "sip:ann@127.0.0.1"


def test_the_panel_loads_the_jssip_bundle_and_the_softphone(
        configured: tuple[TestClient, str]) -> None:
    client, _ = configured
    panel = client.get("/panel").text
    assert '<script src="/static/jssip.min.js">' in panel
    assert '<script src="/static/softphone.js">' in panel
    bundle = client.get("/static/jssip.min.js")
    assert bundle.status_code == 200 and "var JsSIP=" in bundle.text
    assert bundle.text.startswith("/* JsSIP 3.13.8 (MIT)")
    licences = client.get("/static/jssip.LICENSE.txt").text
    assert "==== jssip 3.13.8" in licences and "MIT" in licences
    assert "JsSIP.UA" in client.get("/static/softphone.js").text


@pytest.mark.parametrize("url", [
    "http://sip.example.com",  # not a WebSocket
    "wss://sip.example.com; script-src *",  # a CSP directive smuggled in
    "wss://*.example.com",  # a wildcard source
    "wss://sip.example.com 'unsafe-inline'",
    "wss://sip.example.com/a,b",
])
def test_a_softphone_url_that_would_widen_the_csp_is_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        load_config(overrides={"api": {"softphone_ws_url": url}})


def test_a_sip_domain_with_odd_characters_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_config(overrides={"api": {"softphone_domain": "a@b;c"}})
    config = load_config(overrides={"api": {"softphone_ws_url": "wss://[::1]:8443",
                                             "softphone_domain": "agents.example.com"}})
    assert config.api.softphone_ws_url == "wss://[::1]:8443"
