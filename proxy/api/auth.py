"""Agents and their API keys: roles agent < supervisor < admin; keys stored only as hashes.

A key looks like ``tg_<id>_<secret>``: the id finds the agent without hashing against every
entry; the secret is checked against a salted scrypt hash in constant time.

scrypt is slow on purpose (~50 ms), which makes it a denial-of-service lever: run on the event
loop, a burst of bogus keys stalls every call's media relay. So :class:`KeyGuard` checks keys
in a small thread pool (``hashlib.scrypt`` releases the GIL), remembers keys it has verified
under a fast keyed hash (a valid key costs one scrypt per process, not one per request), limits
failed attempts per source address and locks a key id out after repeated wrong secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger("toneguard.api.auth")

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_PATTERN = re.compile(r"tg_([0-9a-f]{8})_([A-Za-z0-9_-]{1,128})")
# The ASGI scope key under which the cluster router (proxy/store/forward.py) hands the app the
# agent a verified node assertion vouches for: set by the server side only, never by a client.
FORWARDED_PRINCIPAL = "toneguard.forwarded_principal"


class AgentsFileError(ValueError):
    """The agents file is missing, unreadable or not an agents file; the message says which."""


class DuplicateAgentError(ValueError):
    """The agent already has a key (replace it with ``rotate=True``)."""


@dataclass(frozen=True)
class Principal:
    agent_id: str
    role: Role

    def at_least(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def split_key(api_key: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None (checked without hashing)."""
    match = _KEY_PATTERN.fullmatch(api_key)
    return None if match is None else (match.group(1), match.group(2))


def _parse_entries(path: Path, text: str) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AgentsFileError(f"{path}: not an agents file (invalid JSON)") from exc
    fields = {"agent_id", "role", "salt", "hash"}
    if not isinstance(data, dict) or not all(
            isinstance(v, dict) and fields <= set(v) and v["role"] in ROLES
            for v in data.values()):
        raise AgentsFileError(f"{path}: not an agents file (unexpected layout)")
    return data


class AgentDirectory:
    """Key id → {agent_id, role, salt, hash}. Bound to a file, it re-reads it when it changes
    (checked on use by :meth:`refresh`), so keys added or revoked while serving take effect."""

    def __init__(self, path: Path | None = None) -> None:
        self._entries: dict[str, dict[str, str]] = {}
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.generation = 0  # bumped on every change: verified-key caches drop their entries

    @classmethod
    def load(cls, path: Path, *, missing_ok: bool = False) -> AgentDirectory:
        """Read ``path``; a missing file is an :class:`AgentsFileError` unless ``missing_ok``
        (then the directory starts empty, e.g. for the first ``agents add``)."""
        directory = cls(path)
        if not path.exists():
            if missing_ok:
                return directory
            raise AgentsFileError(f"{path}: no such agents file (create it with "
                                  f"`toneguard agents add NAME --file {path}`)")
        directory._read()
        return directory

    def _read(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            text = self.path.read_text("utf-8")
        except FileNotFoundError as exc:
            raise AgentsFileError(f"{self.path}: no such agents file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentsFileError(f"{self.path}: cannot read: "
                                  f"{getattr(exc, 'strerror', None) or 'not UTF-8'}") from exc
        self._entries = _parse_entries(self.path, text)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        self.generation += 1

    def refresh(self) -> None:
        """Re-read the file if its mtime, size or inode changed (one ``stat`` per call).

        A file that disappears empties the directory (fail closed: every key is refused); one
        that cannot be parsed keeps the previous keys and is logged (a half-written edit must
        not lock every agent out), and is retried when it changes again."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            if self._entries or self._stamp is not None:
                log.warning("agents file gone: every API key is refused", path=str(self.path))
                self._entries, self._stamp = {}, None
                self.generation += 1
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
            return
        try:
            self._read()
        except AgentsFileError as exc:
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            log.warning("agents file not reloaded, previous keys kept", error=str(exc))
            return
        log.info("agents file reloaded", path=str(self.path), keys=len(self._entries))

    def save(self, path: Path | None = None) -> None:
        """Write atomically (temporary file, then rename), mode 0600: a server reloading the
        file never sees half of it."""
        path = path or self.path
        assert path is not None
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.generation += 1

    def add(self, agent_id: str, role: str, *, rotate: bool = False) -> str:
        """Create a key for ``agent_id``; returns it (the only time it exists in clear).

        An agent has one key: adding it again raises :class:`DuplicateAgentError` unless
        ``rotate``, which replaces the old key (it stops working at once)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not valid_name(agent_id):
            raise ValueError("name must be 1-64 characters of A-Z a-z 0-9 . _ -")
        old = [k for k, e in self._entries.items() if e["agent_id"] == agent_id]
        if old and not rotate:
            raise DuplicateAgentError(f"agent {agent_id!r} already has a key")
        for key_id in old:
            del self._entries[key_id]
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        self._entries[key_id] = {"agent_id": agent_id, "role": role, "salt": salt.hex(),
                                 "hash": _hash(secret, salt).hex()}
        self.generation += 1
        return f"tg_{key_id}_{secret}"

    def revoke(self, agent_id: str) -> bool:
        """Remove every key of ``agent_id``; False if it had none."""
        old = [k for k, e in self._entries.items() if e["agent_id"] == agent_id]
        for key_id in old:
            del self._entries[key_id]
        self.generation += 1
        return bool(old)

    def entry(self, key_id: str) -> dict[str, str] | None:
        return self._entries.get(key_id)

    def authenticate(self, api_key: str) -> Principal | None:
        """Check a key synchronously (runs scrypt: never call it on the event loop of a
        server; :class:`KeyGuard` does it in a thread)."""
        parts = split_key(api_key)
        if parts is None:
            return None
        entry = self._entries.get(parts[0])
        if entry is None:
            _hash(parts[1], b"0" * 16)  # same cost whether or not the id exists
            return None
        if not hmac.compare_digest(_hash(parts[1], bytes.fromhex(entry["salt"])).hex(),
                                   entry["hash"]):
            return None
        return Principal(entry["agent_id"], entry["role"])  # type: ignore[arg-type]

    def agents(self) -> list[tuple[str, str]]:
        return sorted({(e["agent_id"], e["role"]) for e in self._entries.values()})


@dataclass(frozen=True)
class AuthSettings:
    """Limits on failed authentication (``[api]`` in the configuration)."""

    failures_per_source: int = 10  # failed (or in-flight) checks per source address ...
    failure_window_seconds: float = 60.0  # ... within this window; then 429 + Retry-After
    key_lockout_failures: int = 5  # wrong secrets for one key id before it is locked out
    key_lockout_seconds: float = 300.0
    # scrypt runs here, never on the event loop. One thread: however many wrong keys arrive,
    # checking them takes one core at most, and the relay keeps the others (with two, a flood
    # on a 2-core node took both, and ng answers slowed to 1.9 s in CI).
    verify_threads: int = 1
    max_pending: int = 32  # checks queued for a thread, node-wide; beyond: 429 at once
    cache_size: int = 1024  # verified keys remembered (by keyed hash)


class AuthRefused(Exception):
    """The key was not accepted: ``status`` 401 (wrong) or 429 (too many attempts)."""

    def __init__(self, status: int, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Window:
    """Timestamps of recent failures (and the number of checks still running)."""

    failures: deque[float] = field(default_factory=deque)
    pending: int = 0


class KeyGuard:
    """Checks presented keys off the event loop, with rate limits and lock-out.

    ``audit(action, **fields)`` records lock-outs (key id and source only, never the secret).
    """

    _MAX_SOURCES = 10_000  # tracked sources; expired ones are pruned first

    def __init__(self, directory: AgentDirectory, settings: AuthSettings | None = None, *,
                 audit: Callable[..., object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.settings = settings or AuthSettings()
        self._audit = audit
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=self.settings.verify_threads,
                                        thread_name_prefix="tg-keycheck")
        self._cache_key = secrets.token_bytes(32)  # per process: the cache is never persisted
        self._verified: dict[bytes, tuple[str, Principal]] = {}  # keyed hash → (key id, who)
        self._generation = -1
        self._pending = 0
        self._sources: dict[str, _Window] = {}
        self._key_failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self.counters = {"verified": 0, "cached": 0, "refused": 0, "limited": 0, "locked": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- bookkeeping ---------------------------------------------------------------------

    def _window(self, source: str, now: float) -> _Window:
        window = self._sources.get(source)
        if window is None:
            if len(self._sources) >= self._MAX_SOURCES:
                self._prune(now)
            window = self._sources[source] = _Window()
        horizon = now - self.settings.failure_window_seconds
        while window.failures and window.failures[0] <= horizon:
            window.failures.popleft()
        return window

    def _prune(self, now: float) -> None:
        horizon = now - self.settings.failure_window_seconds
        for source in [s for s, w in self._sources.items()
                       if not w.pending and (not w.failures or w.failures[-1] <= horizon)]:
            del self._sources[source]
        if len(self._sources) >= self._MAX_SOURCES:
            # Still full of live attackers: forget the oldest half rather than grow.
            for source in list(self._sources)[: self._MAX_SOURCES // 2]:
                if not self._sources[source].pending:
                    del self._sources[source]
        for key_id in [k for k, t in self._locked_until.items() if t <= now]:
            del self._locked_until[key_id]
            self._key_failures.pop(key_id, None)

    def _limited(self, window: _Window, now: float) -> float:
        """Seconds until the source may try again, or 0."""
        if len(window.failures) + window.pending < self.settings.failures_per_source:
            return 0.0
        if not window.failures:
            return 1.0  # only checks in flight: come back shortly
        return max(1.0, window.failures[0] + self.settings.failure_window_seconds - now)

    def _fail(self, source: str, key_id: str | None, now: float) -> None:
        self.counters["refused"] += 1
        self._window(source, now).failures.append(now)
        if key_id is None or (self.directory.entry(key_id) is None
                              and key_id not in self._key_failures):
            # Unknown ids are not tracked (an attacker could fill memory with made-up ids),
            # and locking them changes nothing.
            return
        failures = self._key_failures.setdefault(key_id, deque())
        horizon = now - self.settings.key_lockout_seconds
        while failures and failures[0] <= horizon:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.settings.key_lockout_failures:
            self._locked_until[key_id] = now + self.settings.key_lockout_seconds
            failures.clear()
            self.counters["locked"] += 1
            log.warning("API key locked out after repeated wrong secrets", key_id=key_id,
                        source=source, seconds=self.settings.key_lockout_seconds)
            if self._audit is not None:
                self._audit("auth.lockout", actor=f"source:{source}", key_id=key_id,
                            seconds=self.settings.key_lockout_seconds)

    # --- the check -----------------------------------------------------------------------

    async def check(self, api_key: str, source: str) -> Principal:
        """The principal of ``api_key`` or :class:`AuthRefused` (401 or 429)."""
        now = self._clock()
        window = self._window(source, now)
        if (wait := self._limited(window, now)) > 0:
            self.counters["limited"] += 1
            raise AuthRefused(429, "too many failed authentication attempts", wait)
        self.directory.refresh()
        if self.directory.generation != self._generation:
            self._verified.clear()  # a key revoked or rotated stops working at once
            self._generation = self.directory.generation
        parts = split_key(api_key)
        if parts is None:
            self._fail(source, None, now)
            raise AuthRefused(401, "invalid API key")
        key_id, secret = parts
        if (until := self._locked_until.get(key_id, 0.0)) > now:
            raise AuthRefused(429, "API key locked out after repeated wrong secrets",
                              until - now)
        fingerprint = hmac.new(self._cache_key, api_key.encode(), hashlib.sha256).digest()
        if (cached := self._verified.get(fingerprint)) is not None:
            self.counters["cached"] += 1
            return cached[1]
        if self._pending >= self.settings.max_pending:
            self.counters["limited"] += 1
            raise AuthRefused(429, "too many authentication attempts in progress", 1.0)
        entry = self.directory.entry(key_id)
        salt = bytes.fromhex(entry["salt"]) if entry else b"0" * 16
        self._pending += 1
        window.pending += 1
        try:
            digest = await asyncio.get_running_loop().run_in_executor(
                self._pool, _hash, secret, salt)
        finally:
            self._pending -= 1
            window.pending -= 1
        now = self._clock()
        entry = self.directory.entry(key_id)  # the file may have been reloaded meanwhile
        if entry is None or not hmac.compare_digest(digest.hex(), entry["hash"]):
            self._fail(source, key_id, now)
            raise AuthRefused(401, "invalid API key")
        who = Principal(entry["agent_id"], entry["role"])  # type: ignore[arg-type]
        if len(self._verified) >= self.settings.cache_size:
            self._verified.clear()
        self._verified[fingerprint] = (key_id, who)
        self.counters["verified"] += 1
        self._key_failures.pop(key_id, None)
        return who
