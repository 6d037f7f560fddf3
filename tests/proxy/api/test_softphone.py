"""The panel softphone's server side, in-process: where it registers (GET /v1/softphone, for
the key's own agent only), the one WebSocket origin the CSP adds, the JsSIP bundle served by
exact name, and config values that would widen the CSP refused. The browser end to end is
tests/proxy/control/test_softphone_chromium.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from proxy.api import auth
from proxy.api.app import ApiSettings, create_app, sip_credential
from proxy.api.auth import AgentDirectory
from proxy.securepay.manager import PaymentManager
from proxy.service.config import Config, ConfigError, load_config
from proxy.service.serve import load_softphone_secret


def _client(monkeypatch: pytest.MonkeyPatch, **settings: object) -> tuple[TestClient, str]:
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


def test_with_a_secret_the_agent_gets_a_sip_credential_for_its_own_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    client, key = _client(monkeypatch, softphone_ws_url="ws://127.0.0.1:8088",
                          softphone_secret=secret, softphone_credential_seconds=3600)
    with client:
        r = client.get("/v1/softphone", headers={"Authorization": f"Bearer {key}"})
    body = r.json()
    expiry, _, agent = body["authorization_user"].partition(":")
    assert agent == "ann" and abs(int(expiry) - (time.time() + 3600)) < 60
    # What Kamailio computes (crypto_hmac_sha256: base64url, unpadded) from the same secret.
    mac = hmac.new(secret, body["authorization_user"].encode(), hashlib.sha256).digest()
    assert body["password"] == base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert key not in str(body)  # the API key never goes to Kamailio
    assert sip_credential(secret, "ann", 60, now=1000.0) == sip_credential(
        secret, "ann", 60, now=1000.0)
    assert sip_credential(secret, "ann", 60, now=1000.0)[1] != sip_credential(
        secret, "bob", 60, now=1000.0)[1]


def test_a_missing_or_short_softphone_secret_stops_start(tmp_path: Path) -> None:
    def config(path: Path) -> Config:
        return load_config(overrides={"api": {"softphone_secret_file": str(path)}})
    with pytest.raises(ConfigError, match="softphone_secret_file"):
        load_softphone_secret(config(tmp_path / "missing"))
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="under 16 bytes"):
        load_softphone_secret(config(tmp_path / "short"))
    (tmp_path / "good").write_text("0123456789abcdef0123\n")
    assert load_softphone_secret(config(tmp_path / "good")) == (
        b"0123456789abcdef0123")
