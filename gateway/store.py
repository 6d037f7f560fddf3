"""Tokens in SQLite; card numbers only ever stored AES-256-GCM encrypted.

Each row's nonce is random; the token is the GCM associated data, so a ciphertext moved to
another row does not decrypt. The security code is never stored (PCI DSS 3.2.2).

Idempotency records hold nothing an attacker with the database alone can use: the key is kept
as an HMAC (a card number sent as a key by mistake is not in the file), and the request's
fingerprint is an HMAC over everything submitted. Both HMAC keys are derived by HKDF from the
card key (which lives outside the database), each under its own label, so the fingerprint
cannot be brute-forced back to a card number without that key (PCI DSS 3.5.1: a keyed hash
with a managed key). Version 1 databases (key in clear, hash keyed with it) are migrated by
dropping their idempotency rows, securely deleted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, nonce BLOB NOT NULL, pan_ciphertext BLOB NOT NULL,
    brand TEXT NOT NULL, last4 TEXT NOT NULL, expiry TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency_v2 (
    key_hash TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, response TEXT NOT NULL,
    created REAL NOT NULL);
"""
IDEMPOTENCY_TTL_SECONDS = 24 * 3600  # replies kept for retries this long, then purged

# HKDF labels: each derived key serves one purpose only (RFC 5869 "info").
_LABEL_KEY_HASH = b"toneguard-gateway/v1/idempotency-key"
_LABEL_FINGERPRINT = b"toneguard-gateway/v1/request-fingerprint"


class StoreError(RuntimeError):
    """The key is unusable or the database cannot be opened."""


def load_key(path: Path) -> bytes:
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a base64 AES key ({exc.__class__.__name__})") from None
    if len(key) != 32:
        raise StoreError(f"{path}: AES-256 key must be 32 bytes, got {len(key)}")
    return key


@dataclass(frozen=True)
class TokenRecord:
    token: str
    brand: str
    last4: str
    expiry: str


def _derive(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(key)


log = logging.getLogger("toneguard.gateway")


class TokenStore:
    def __init__(self, path: Path | str, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._key_hash_key = _derive(key, _LABEL_KEY_HASH)
        self._fingerprint_key = _derive(key, _LABEL_FINGERPRINT)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None)
            # Deleted rows are overwritten, not left in free pages.
            self._db.execute("PRAGMA secure_delete = ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the token database "
                             f"({exc.__class__.__name__})") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"token database has schema version {version}; this gateway "
                             f"knows up to {SCHEMA_VERSION} (upgrade the gateway)")
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if "idempotency" in tables:
            # v1 kept the Idempotency-Key in clear and a hash of the card number keyed with
            # it: unusable and unsafe. Its rows only served retries; drop them.
            count = self._db.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0]
            self._db.execute("DROP TABLE idempotency")
            self._db.execute("VACUUM")
            log.warning("token database migrated to schema %d: %d old idempotency records "
                        "dropped (they held card-derived hashes)", SCHEMA_VERSION, count)
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def key_hash(self, idempotency_key: str) -> str:
        return hmac.new(self._key_hash_key, idempotency_key.encode(), hashlib.sha256).hexdigest()

    def fingerprint(self, fields: dict[str, str | None]) -> str:
        """Keyed hash of every submitted field (canonical JSON: no separator ambiguity)."""
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._fingerprint_key, canonical.encode(), hashlib.sha256).hexdigest()

    def close(self) -> None:
        self._db.close()

    def add(self, pan: str, brand: str, expiry: str) -> TokenRecord:
        token = "tok_" + secrets.token_urlsafe(18)
        nonce = secrets.token_bytes(12)
        ciphertext = self._aead.encrypt(nonce, pan.encode(), token.encode())
        self._db.execute("INSERT INTO tokens VALUES (?,?,?,?,?,?,?)",
                         (token, nonce, ciphertext, brand, pan[-4:], expiry, time.time()))
        return TokenRecord(token, brand, pan[-4:], expiry)

    def reveal(self, token: str) -> str | None:
        """Decrypt a stored PAN (what the PSP does to charge it; used by tests)."""
        row = self._db.execute("SELECT nonce, pan_ciphertext FROM tokens WHERE token=?",
                               (token,)).fetchone()
        if row is None:
            return None
        return self._aead.decrypt(row[0], row[1], token.encode()).decode()

    def remembered(self, key: str) -> tuple[str, dict] | None:
        """(fingerprint, response) stored under the Idempotency-Key ``key``, if fresh."""
        row = self._db.execute(
            "SELECT fingerprint, response FROM idempotency_v2 WHERE key_hash=? AND created>?",
            (self.key_hash(key), time.time() - IDEMPOTENCY_TTL_SECONDS)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def remember(self, key: str, fingerprint: str, response: dict) -> None:
        now = time.time()
        self._db.execute("DELETE FROM idempotency_v2 WHERE created<=?",
                         (now - IDEMPOTENCY_TTL_SECONDS,))
        self._db.execute("INSERT OR REPLACE INTO idempotency_v2 VALUES (?,?,?,?)",
                         (self.key_hash(key), fingerprint, json.dumps(response), now))
