"""Tokens in SQLite; card numbers only ever stored AES-256-GCM encrypted.

Each row's nonce is random; the token is the GCM associated data, so a ciphertext moved to
another row does not decrypt. The security code is never stored (PCI DSS 3.2.2).
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, nonce BLOB NOT NULL, pan_ciphertext BLOB NOT NULL,
    brand TEXT NOT NULL, last4 TEXT NOT NULL, expiry TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, response TEXT NOT NULL,
    created REAL NOT NULL);
"""


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


class TokenStore:
    def __init__(self, path: Path | str, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)

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
        row = self._db.execute("SELECT request_hash, response FROM idempotency WHERE key=?",
                               (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def remember(self, key: str, request_hash: str, response: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO idempotency VALUES (?,?,?,?)",
                         (key, request_hash, json.dumps(response), time.time()))
