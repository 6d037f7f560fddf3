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
from gateway.store import TokenStore, load_key
from proxy.securepay.gateway_client import (
    GatewayClient,
    GatewayDeclinedError,
    GatewayTlsError,
    GatewayUnavailableError,
)
from tests.conftest import pick_tcp_port
from tests.gateway.stub import running_gateway

VISA = {"payment-card-number": "4111111111111111", "expiration-date": "1230",
        "security-code": "123"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return init_pki(tmp_path_factory.mktemp("gateway"))


@pytest.fixture
async def gateway(pki) -> AsyncIterator[str]:
    async with running_gateway(pki) as running:
        yield running.url


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


# --- hostile input (issue 12) ----------------------------------------------------------------

def mtls(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


async def _post(pki, gateway: str, key: str, **fields: str) -> httpx.Response:
    body = {"pan": VISA["payment-card-number"], "expiry": "1230", "security_code": "123",
            **fields}
    async with httpx.AsyncClient(verify=mtls(pki)) as http:
        return await http.post(f"{gateway}/v1/tokens", json=body,
                               headers={"Idempotency-Key": key})


async def test_the_database_alone_does_not_give_the_card_number_back(
        pki, gateway: str) -> None:
    """Issue 12 recovered 4111111111111111 in 0.5 s from `request_hash` (an HMAC keyed with the
    Idempotency-Key in the same row). Now every value derived from the card needs a key that
    is not in the database: trying every candidate with anything the row holds finds nothing,
    while the gateway's own HKDF-derived key does match (the fingerprint is real)."""
    import hashlib
    import hmac
    import json
    import sqlite3

    key = "idem-store-0001"
    approved = await _post(pki, gateway, key)
    assert approved.status_code == 201
    with sqlite3.connect(pki.database) as db:
        rows = db.execute("SELECT key_hash, fingerprint, response FROM idempotency_v2").fetchall()
        assert not db.execute("SELECT name FROM sqlite_master WHERE name='idempotency'"
                              ).fetchall()
    raw = pki.database.read_bytes()
    assert key.encode() not in raw and b"4111111111111111" not in raw
    store = TokenStore(pki.database, load_key(pki.aes_key))
    row = next(r for r in rows if r[0] == store.key_hash(key))
    submitted = {"pan": "4111111111111111", "expiry": "1230", "security_code": "123",
                 "postal_code": None}
    canonical = json.dumps(submitted, sort_keys=True, separators=(",", ":")).encode()
    for secret in (*(str(v).encode() for v in row), key.encode(), b""):
        for message in (canonical, b"4111111111111111|1230", b"4111111111111111"):
            assert hmac.new(secret, message, hashlib.sha256).hexdigest() != row[1]
            assert hashlib.sha256(secret + message).hexdigest() != row[1]
    try:
        assert store.fingerprint(submitted) == row[1]  # positive control
    finally:
        store.close()


async def test_a_reused_key_with_any_field_changed_is_a_conflict(pki, gateway: str) -> None:
    first = await _post(pki, gateway, "idem-reuse-0001")
    assert first.status_code == 201
    same = await _post(pki, gateway, "idem-reuse-0001")
    assert same.status_code == 201 and same.json()["token"] == first.json()["token"]
    for changed in ({"security_code": "456"}, {"postal_code": "12345"}, {"expiry": "1231"},
                    {"pan": "5555555555554444"}):
        r = await _post(pki, gateway, "idem-reuse-0001", **changed)
        assert r.status_code == 409, changed
        assert r.json() == {"status": "error", "error": "idempotency_key_reused"}


async def test_a_card_number_as_idempotency_key_is_refused_unechoed(
        pki, gateway: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="toneguard.gateway")
    for key in ("4111111111111111", "5555 5555 5555 4444", "order-378282246310005",
                "4111-1111-1111-1111"):
        r = await _post(pki, gateway, key)
        assert r.status_code == 422, key
        assert r.json()["fields"] == ["idempotency-key"]
        assert key not in r.text and key.replace(" ", "") not in r.text
    ok = await _post(pki, gateway, "PA" + "4111111111111111" + "0f" * 7)  # a hex session id
    assert ok.status_code == 201
    assert b"4111111111111111" not in pki.database.read_bytes()
    lines = [r.getMessage() for r in caplog.records if r.name == "toneguard.gateway"]
    assert any(line.startswith("POST /v1/tokens 422") for line in lines)
    assert not any("4111" in line or "5555" in line for line in lines)


async def test_a_version_1_database_is_migrated_and_its_card_hashes_scrubbed(
        pki, tmp_path: Path) -> None:
    import sqlite3

    from gateway.store import StoreError

    db = tmp_path / "v1.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript("""
            CREATE TABLE tokens (token TEXT PRIMARY KEY, nonce BLOB NOT NULL,
                pan_ciphertext BLOB NOT NULL, brand TEXT NOT NULL, last4 TEXT NOT NULL,
                expiry TEXT NOT NULL, created REAL NOT NULL);
            CREATE TABLE idempotency (key TEXT PRIMARY KEY, request_hash TEXT NOT NULL,
                response TEXT NOT NULL, created REAL NOT NULL);""")
        old.execute("INSERT INTO idempotency VALUES (?,?,?,?)",
                    ("4111111111111111", "ab" * 32, '{"status": 201}', 0.0))
    store = TokenStore(db, load_key(pki.aes_key))
    record = store.add("5555555555554444", "mastercard", "1230")
    assert store.reveal(record.token) == "5555555555554444"
    store.close()
    assert b"4111111111111111" not in db.read_bytes()
    with sqlite3.connect(db) as migrated:
        assert migrated.execute("PRAGMA user_version").fetchone()[0] == 2
        migrated.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        TokenStore(db, load_key(pki.aes_key))


async def _status_line(pki, gateway: str, head: bytes, body: list[bytes]) -> bytes:
    host, port = gateway.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=mtls(pki),
                                                   server_hostname="localhost")
    try:
        writer.write(head)
        for part in body:
            writer.write(part)
            try:
                await writer.drain()
            except ConnectionError:
                break
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


async def test_bodies_over_the_limit_are_refused_unread(pki, gateway: str) -> None:
    head = (b"POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: idem-big-01\r\n"
            b"Content-Type: application/json\r\n")
    declared = await _status_line(pki, gateway, head + b"Content-Length: 100000000\r\n\r\n", [])
    assert declared.startswith(b"HTTP/1.1 413"), declared
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    chunked = await _status_line(pki, gateway, head + b"Transfer-Encoding: chunked\r\n\r\n",
                                 [chunk] * 8)  # 128 KiB and never finished
    assert chunked.startswith(b"HTTP/1.1 413"), chunked
    assert (await _post(pki, gateway, "idem-big-02")).status_code == 201  # still serving


def test_gateway_serve_logs_listening_each_request_and_shutdown(pki) -> None:
    """The real command: a listening line, one line per request (method, path, status,
    duration; never the card, the key or the body), and a line when it stops."""
    import signal
    import subprocess
    import sys
    import threading

    port = pick_tcp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.service.cli", "gateway", "serve", "--data-dir",
         str(pki.root), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(30), lines
        with httpx.Client(verify=mtls(pki)) as http:
            r = http.post(f"https://127.0.0.1:{port}/v1/tokens",
                          json={"pan": "4111111111111111", "expiry": "1230",
                                "security_code": "123"},
                          headers={"Idempotency-Key": "idem-log-secret-0001"})
            assert r.status_code == 201
            assert http.get(f"https://127.0.0.1:{port}/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    text = "".join(lines)
    assert f"listening on https://127.0.0.1:{port}" in text
    assert " gateway POST /v1/tokens 201 " in text and " gateway GET /health 200 " in text
    assert text.rstrip().endswith("gateway stopped")
    for secret in ("4111111111111111", "idem-log-secret", "123\"", "security"):
        assert secret not in text
    assert proc.returncode == 0


async def test_the_client_reports_a_reused_key_by_its_code(pki, gateway: str) -> None:
    from proxy.securepay.gateway_client import GatewayError

    c = client(pki, gateway)
    try:
        await c.tokenise(dict(VISA), "idem-client-0001")
        with pytest.raises(GatewayError, match=r"HTTP 409 \(idempotency_key_reused\)") as err:
            await c.tokenise({**VISA, "security-code": "999"}, "idem-client-0001")
        assert "999" not in str(err.value) and "4111" not in str(err.value)
    finally:
        await c.close()
