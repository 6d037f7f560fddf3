"""SDES (RFC 4568) ``a=crypto`` lines: parse what a peer offers, generate our own keys.

Each endpoint announces the key it *sends* with; a relay terminates SRTP per leg, so it
generates a fresh key for each leg it sends on and never passes a peer's key through.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from proxy.media.types import SRTP_SUITES, SrtpParams

# Master key + salt lengths in bytes (RFC 4568 §6.2, RFC 7714 §12).
KEY_SALT_LENGTH = {
    "AEAD_AES_256_GCM": 32 + 12,
    "AEAD_AES_128_GCM": 16 + 12,
    "AES_CM_128_HMAC_SHA1_80": 16 + 14,
    "AES_CM_128_HMAC_SHA1_32": 16 + 14,
}
assert set(KEY_SALT_LENGTH) == set(SRTP_SUITES)


class SdesError(ValueError):
    """An ``a=crypto`` line we cannot use (the message never contains key material)."""


@dataclass(frozen=True)
class CryptoAttribute:
    tag: int
    suite: str
    params: SrtpParams

    def format(self) -> str:
        key = base64.b64encode(self.params.key_salt).decode("ascii")
        return f"{self.tag} {self.suite} inline:{key}"


def parse_crypto(value: str) -> CryptoAttribute | None:
    """Parse the value of one ``a=crypto:`` line; None if its suite is one we do not support."""
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit():
        raise SdesError("malformed a=crypto line")
    tag, suite, key_params = int(parts[0]), parts[1], parts[2]
    if suite not in KEY_SALT_LENGTH:
        return None
    first = key_params.split(";")[0]  # several keys (MKI) → use the first
    if not first.startswith("inline:"):
        raise SdesError(f"a=crypto tag {tag}: key method is not inline")
    b64 = first[len("inline:"):].split("|")[0]
    if "|" in first[len("inline:"):] and ":" in first.split("|")[-1]:
        raise SdesError(f"a=crypto tag {tag}: MKI is not supported")
    try:
        key_salt = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SdesError(f"a=crypto tag {tag}: key is not valid base64") from exc
    if len(key_salt) != KEY_SALT_LENGTH[suite]:
        raise SdesError(f"a=crypto tag {tag}: {suite} needs {KEY_SALT_LENGTH[suite]} bytes "
                        f"of key and salt, got {len(key_salt)}")
    return CryptoAttribute(tag, suite, SrtpParams(suite, key_salt))


def generate(suite: str, tag: int = 1) -> CryptoAttribute:
    if suite not in KEY_SALT_LENGTH:
        raise SdesError(f"unsupported SRTP suite {suite}")
    key_salt = secrets.token_bytes(KEY_SALT_LENGTH[suite])
    return CryptoAttribute(tag, suite, SrtpParams(suite, key_salt))


def offered(values: list[str]) -> list[CryptoAttribute]:
    """The usable crypto attributes of a media section, in the peer's order of preference."""
    out = []
    for value in values:
        attribute = parse_crypto(value)
        if attribute is not None:
            out.append(attribute)
    return out
