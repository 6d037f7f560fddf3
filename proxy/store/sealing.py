"""SRTP key material at rest: AES-GCM under a key the node set shares (``[store] key_file``).

A record in Redis holds a stream's SRTP master keys only sealed; the call id is the associated
data, so a sealed key copied into another call's record does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class SealError(ValueError):
    """A key file that is not a key, or a sealed value that does not open (never says more)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise SealError(f"store key must be 16, 24 or 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        """A file holding the key in base64 (``head -c 32 /dev/urandom | base64``)."""
        try:
            key = base64.b64decode(path.read_text("ascii").strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SealError(f"{path}: not a base64 key") from exc
        return cls(key)

    def seal(self, plain: bytes, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plain, context.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, text: str, context: str) -> bytes:
        try:
            raw = base64.b64decode(text, validate=True)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SealError("a sealed key does not open with this node set's key") from exc
