"""The gateway's token store: PANs only AES-GCM encrypted, bound to their token, keys checked."""

from __future__ import annotations

import base64
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.store import StoreError, TokenRecord, TokenStore, load_key

PAN, OTHER = "4111111111111111", "5555555555554444"


@pytest.fixture
def key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> TokenStore:
    s = TokenStore(tmp_path / "tokens.sqlite3", key)
    yield s
    s.close()


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT token, nonce, pan_ciphertext, brand, last4, expiry, created "
                          "FROM tokens ORDER BY created").fetchall()


def test_load_key_reads_a_base64_256_bit_key(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "aes.key"
    path.write_text("\n  " + base64.b64encode(key).decode() + "\n")
    assert load_key(path) == key


@pytest.mark.parametrize(("content", "message"), [
    ("not base64!", r"not a base64 AES key \(Error\)"),
    (base64.b64encode(bytes(16)).decode(), "AES-256 key must be 32 bytes, got 16"),
    (base64.b64encode(bytes(33)).decode(), "AES-256 key must be 32 bytes, got 33"),
    ("", "AES-256 key must be 32 bytes, got 0"),
])
def test_load_key_refuses_anything_but_32_bytes_of_base64(
        tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "aes.key"
    path.write_text(content)
    with pytest.raises(StoreError, match=message) as refused:
        load_key(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert refused.value.__cause__ is None  # the key's bytes are not carried along


def test_a_key_file_with_stray_characters_is_refused_not_read_past(
        tmp_path: Path, key: bytes) -> None:
    # A lenient decoder would drop the "*" and return some key; an edited or corrupted key file
    # must fail loudly instead.
    text = base64.b64encode(key).decode()
    path = tmp_path / "aes.key"
    path.write_text(text[:20] + "*" + text[20:])
    with pytest.raises(StoreError, match=r"not a base64 AES key \(Error\)"):
        load_key(path)


def test_load_key_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"absent.key: not a base64 AES key \(FileNotFound"):
        load_key(tmp_path / "absent.key")


def test_a_pan_is_stored_encrypted_under_its_token(tmp_path: Path, store: TokenStore) -> None:
    record = store.add(PAN, "visa", "1230")
    assert record == TokenRecord(record.token, "visa", "1111", "1230")
    assert record.token.startswith("tok_") and len(record.token) == 4 + 24  # 18 random bytes
    [(token, nonce, ciphertext, brand, last4, expiry, created)] = rows(tmp_path / "tokens.sqlite3")
    assert (token, brand, last4, expiry) == (record.token, "visa", "1111", "1230")
    assert len(nonce) == 12 and created > 0
    assert PAN.encode() not in ciphertext and len(ciphertext) == len(PAN) + 16  # GCM tag
    assert store.reveal(record.token) == PAN


def test_each_row_has_its_own_nonce_and_token(tmp_path: Path, store: TokenStore) -> None:
    first, second = store.add(PAN, "visa", "1230"), store.add(PAN, "visa", "1230")
    assert first.token != second.token
    (_, n1, c1, *_), (_, n2, c2, *_) = rows(tmp_path / "tokens.sqlite3")
    assert n1 != n2 and c1 != c2


def test_a_ciphertext_moved_to_another_token_does_not_decrypt(
        tmp_path: Path, store: TokenStore) -> None:
    a, b = store.add(PAN, "visa", "1230"), store.add(OTHER, "mastercard", "0131")
    with sqlite3.connect(tmp_path / "tokens.sqlite3") as db:
        nonce, ciphertext = db.execute("SELECT nonce, pan_ciphertext FROM tokens WHERE token=?",
                                       (a.token,)).fetchone()
        db.execute("UPDATE tokens SET nonce=?, pan_ciphertext=? WHERE token=?",
                   (nonce, ciphertext, b.token))
    with pytest.raises(InvalidTag):
        store.reveal(b.token)
    assert store.reveal(a.token) == PAN


def test_an_unknown_token_reveals_nothing(store: TokenStore) -> None:
    store.add(PAN, "visa", "1230")
    assert store.reveal("tok_unknown") is None


def test_rows_are_committed_at_once_and_readable_with_the_key_only(
        tmp_path: Path, store: TokenStore, key: bytes) -> None:
    record = store.add(PAN, "visa", "1230")
    second = TokenStore(tmp_path / "tokens.sqlite3", key)  # another connection, while open
    assert second.reveal(record.token) == PAN
    second.close()
    wrong = TokenStore(tmp_path / "tokens.sqlite3", AESGCM.generate_key(bit_length=256))
    with pytest.raises(InvalidTag):
        wrong.reveal(record.token)
    wrong.close()


def test_the_store_may_be_used_from_another_thread(store: TokenStore) -> None:
    # The gateway server answers requests from worker threads.
    seen: list[str | None] = []
    worker = threading.Thread(target=lambda: seen.append(
        store.reveal(store.add(PAN, "visa", "1230").token)))
    worker.start()
    worker.join(timeout=10)
    assert seen == [PAN]


def test_idempotency_responses_are_remembered_and_replaced(
        tmp_path: Path, store: TokenStore, key: bytes) -> None:
    assert store.remembered("k1") is None
    store.remember("k1", "hash-a", {"status": "approved", "token": "tok_x"})
    store.remember("k2", "hash-b", {"status": "declined"})
    assert store.remembered("k1") == ("hash-a", {"status": "approved", "token": "tok_x"})
    store.remember("k1", "hash-c", {"status": "declined", "code": "do_not_honor"})
    assert store.remembered("k1") == ("hash-c", {"status": "declined", "code": "do_not_honor"})
    assert store.remembered("k2") == ("hash-b", {"status": "declined"})
    again = TokenStore(tmp_path / "tokens.sqlite3", key)
    assert again.remembered("k2") == ("hash-b", {"status": "declined"})
    again.close()


# --- schema versions, idempotency records (in process; test_gateway.py does it over TLS) -------

V1_SCHEMA = """
    CREATE TABLE tokens (token TEXT PRIMARY KEY, nonce BLOB NOT NULL,
        pan_ciphertext BLOB NOT NULL, brand TEXT NOT NULL, last4 TEXT NOT NULL,
        expiry TEXT NOT NULL, created REAL NOT NULL);
    CREATE TABLE idempotency (key TEXT PRIMARY KEY, request_hash TEXT NOT NULL,
        response TEXT NOT NULL, created REAL NOT NULL);"""


def test_a_version_1_database_loses_its_idempotency_rows_and_their_bytes(
        tmp_path: Path, key: bytes, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "v1.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript(V1_SCHEMA)
        for n, card in enumerate((PAN, OTHER)):
            old.execute("INSERT INTO idempotency VALUES (?,?,?,?)",
                        (card, "ab" * 32, '{"status": 201}', float(n)))
    old.close()
    assert PAN.encode() in db.read_bytes()  # positive control: v1 kept the key in clear
    with caplog.at_level("WARNING", logger="toneguard.gateway"):
        store = TokenStore(db, key)
    record = store.add(OTHER, "mastercard", "1230")
    store.close()
    assert PAN.encode() not in db.read_bytes()
    with sqlite3.connect(db) as migrated:
        assert migrated.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in migrated.execute("SELECT name FROM sqlite_master")}
    assert "idempotency" not in tables and {"tokens", "idempotency_v2"} <= tables
    assert [r.getMessage() for r in caplog.records] == [
        "token database migrated to schema 2: 2 old idempotency records dropped (they held "
        "card-derived hashes)"]
    again = TokenStore(db, key)  # version 2 opens as it is, without a warning
    assert again.reveal(record.token) == OTHER
    again.close()
    assert len(caplog.records) == 1


def test_a_database_from_a_newer_gateway_is_refused(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "new.sqlite3"
    with sqlite3.connect(db) as newer:
        newer.execute("PRAGMA user_version = 3")
    newer.close()
    with pytest.raises(StoreError, match=r"^token database has schema version 3; this "
                       r"gateway knows up to 2 \(upgrade the gateway\)$"):
        TokenStore(db, key)


def test_a_database_that_cannot_be_opened_is_a_store_error(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(StoreError, match=r"cannot open the token database "
                       r"\(OperationalError\)") as refused:
        TokenStore(tmp_path, key)  # a folder
    assert str(refused.value).startswith(f"{tmp_path}: ")
    assert isinstance(refused.value.__cause__, sqlite3.Error)


def _hkdf(key: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(key)


def test_idempotency_hashes_are_keyed_with_their_own_derived_keys(
        store: TokenStore, key: bytes) -> None:
    import hashlib
    import hmac
    fields = {"pan": PAN, "expiry": "1230", "security_code": "123", "postal_code": None}
    canonical = b'{"expiry":"1230","pan":"4111111111111111","postal_code":null,' \
                b'"security_code":"123"}'
    key_label = b"toneguard-gateway/v1/idempotency-key"
    fingerprint_label = b"toneguard-gateway/v1/request-fingerprint"
    assert store.key_hash("k1") == hmac.new(_hkdf(key, key_label), b"k1",
                                            hashlib.sha256).hexdigest()
    assert store.fingerprint(fields) == hmac.new(_hkdf(key, fingerprint_label), canonical,
                                                 hashlib.sha256).hexdigest()
    # Field order does not matter; every field does.
    assert store.fingerprint(dict(reversed(fields.items()))) == store.fingerprint(fields)
    assert store.fingerprint({**fields, "postal_code": ""}) != store.fingerprint(fields)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_idempotency_records_expire_after_a_day_and_are_then_purged(
        tmp_path: Path, store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.store
    clock = _Clock(1_000_000.0)
    monkeypatch.setattr(gateway.store, "time", clock)
    ttl = gateway.store.IDEMPOTENCY_TTL_SECONDS
    assert ttl == 24 * 3600
    store.remember("old", "fp", {"marker": "remembered-reply-0001"})

    def count() -> int:
        with sqlite3.connect(tmp_path / "tokens.sqlite3") as db:
            return db.execute("SELECT COUNT(*) FROM idempotency_v2").fetchone()[0]

    clock.now += ttl - 0.5
    assert store.remembered("old") == ("fp", {"marker": "remembered-reply-0001"})
    store.remember("k2", "fp2", {})
    assert count() == 2  # not yet purged
    clock.now += 0.5  # exactly a day
    assert store.remembered("old") is None
    assert store.remembered("k2") == ("fp2", {})
    store.remember("k3", "fp3", {})
    assert count() == 2  # "old" purged, its bytes overwritten (secure_delete)
    assert b"remembered-reply-0001" not in (tmp_path / "tokens.sqlite3").read_bytes()
    # (Debian's SQLite has secure_delete on by default; the store asks for it on any build.)
    assert store._db.execute("PRAGMA secure_delete").fetchone() == (1,)
