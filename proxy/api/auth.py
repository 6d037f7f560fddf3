"""Agents and their API keys: roles agent < supervisor < admin; keys stored only as hashes.

A key looks like ``tg_<id>_<secret>``: the id finds the agent without hashing against every
entry; the secret is checked against a salted scrypt hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


@dataclass(frozen=True)
class Principal:
    agent_id: str
    role: Role

    def at_least(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


class AgentDirectory:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, str]] = {}  # key id → {agent_id, role, salt, hash}

    @classmethod
    def load(cls, path: Path) -> AgentDirectory:
        directory = cls()
        if path.exists():
            directory._entries = json.loads(path.read_text())
        return directory

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._entries, f, indent=1)

    def add(self, agent_id: str, role: str) -> str:
        """Create a key for ``agent_id``; returns it (the only time it exists in clear)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        self._entries[key_id] = {"agent_id": agent_id, "role": role, "salt": salt.hex(),
                                 "hash": _hash(secret, salt).hex()}
        return f"tg_{key_id}_{secret}"

    def authenticate(self, api_key: str) -> Principal | None:
        parts = api_key.split("_", 2)
        if len(parts) != 3 or parts[0] != "tg":
            return None
        entry = self._entries.get(parts[1])
        if entry is None:
            _hash(parts[2], b"0" * 16)  # same cost whether or not the id exists
            return None
        if not hmac.compare_digest(_hash(parts[2], bytes.fromhex(entry["salt"])).hex(),
                                   entry["hash"]):
            return None
        return Principal(entry["agent_id"], entry["role"])  # type: ignore[arg-type]

    def agents(self) -> list[tuple[str, str]]:
        return sorted({(e["agent_id"], e["role"]) for e in self._entries.values()})
