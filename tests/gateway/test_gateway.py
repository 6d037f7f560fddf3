"""The gateway stub over real mutual TLS on loopback, and ToneGuard's client against it."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.pki import PkiError, init_pki
from gateway.server import build_server
from gateway.store import TokenStore, load_key
from proxy.securepay.gateway_client import (
    GatewayClient,
    GatewayDeclinedError,
    GatewayTlsError,
    GatewayUnavailableError,
)
from tests.conftest import pick_tcp_port

VISA = {"payment-card-number": "4111111111111111", "expiration-date": "1230",
        "security-code": "123"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return init_pki(tmp_path_factory.mktemp("gateway"))


@pytest.fixture
async def gateway(pki) -> AsyncIterator[str]:
    port = pick_tcp_port()
    server = build_server(pki, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    await task


def client(pki, url: str, **kwargs) -> GatewayClient:
    return GatewayClient(url, ca_file=kwargs.get("ca", pki.ca_cert),
                         cert_file=kwargs.get("cert", pki.client_cert),
                         key_file=kwargs.get("key", pki.client_key))


def test_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    paths = init_pki(tmp_path)
    for key in (paths.ca_key, paths.server_key, paths.client_key, paths.aes_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(PkiError, match="--force"):
        init_pki(tmp_path)
    init_pki(tmp_path, force=True)


def test_card_numbers_are_stored_only_encrypted(pki, tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite3"
    store = TokenStore(db, load_key(pki.aes_key))
    record = store.add("5555555555554444", "mastercard", "1230")
    assert store.reveal(record.token) == "5555555555554444"
    store.close()
    raw = db.read_bytes()
    assert b"5555555555554444" not in raw and b"555555555555" not in raw
    assert b"4444" in raw  # last four kept in clear, as PCI DSS allows


async def test_approve_decline_and_idempotency_over_mutual_tls(pki, gateway: str) -> None:
    c = client(pki, gateway)
    try:
        first = await c.tokenise(dict(VISA), "idem-key-0001")
        again = await c.tokenise(dict(VISA), "idem-key-0001")
        assert first == again and first.token.startswith("tok_")
        assert (first.brand, first.last4, first.expiry) == ("visa", "1111", "1230")
        with pytest.raises(GatewayDeclinedError) as declined:
            await c.tokenise({**VISA, "payment-card-number": "4000000000000002"},
                             "idem-key-0002")
        assert declined.value.code == "card_declined"
        with pytest.raises(GatewayDeclinedError) as bad:
            await c.tokenise({**VISA, "payment-card-number": "4111111111111112"},
                             "idem-key-0003")
        assert bad.value.code == "invalid_number"
    finally:
        await c.close()


async def test_clients_without_a_certificate_from_our_ca_are_refused(
        pki, gateway: str, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    stranger = client(pki, gateway, cert=other.client_cert, key=other.client_key)
    with pytest.raises(GatewayTlsError):
        await stranger.tokenise(dict(VISA), "idem-key-0004")
    await stranger.close()
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with httpx.AsyncClient(verify=context) as anonymous:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await anonymous.get(f"{gateway}/health")
    wrong_ca = client(pki, gateway, ca=other.ca_cert)
    with pytest.raises(GatewayTlsError):
        await wrong_ca.tokenise(dict(VISA), "idem-key-0005")
    await wrong_ca.close()


async def test_gateway_down_is_a_clear_error(pki) -> None:
    c = client(pki, f"https://127.0.0.1:{pick_tcp_port()}")
    with pytest.raises(GatewayUnavailableError):
        await c.tokenise(dict(VISA), "idem-key-0006")
    await c.close()


async def test_invalid_requests_never_echo_the_card_number(pki, gateway: str) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with httpx.AsyncClient(verify=context) as http:
        response = await http.post(f"{gateway}/v1/tokens", headers={"Idempotency-Key": "k" * 9},
                                   json={"pan": "4111111111111111", "expiry": "bad",
                                         "security_code": "1"})
    assert response.status_code == 422
    assert "4111111111111111" not in response.text and "fields" in response.json()
