"""The Redis store (``[store] url = "redis://HOST:PORT/DB"``), with the async ``redis`` client.

Layout (every key under ``toneguard:``)::

    toneguard:call:<call id>        the call's record (JSON, see proxy.store.records)
    toneguard:node:<node>:calls     set: the call ids that node owns (what a restart loads)
    toneguard:calls                 hash: call id → owning node (what any node's API lists)
    toneguard:nodes                 hash: node → its API's base URL (where actions are sent)
    toneguard:alive:<node>          the node's heartbeat, with a TTL (proxy.store.takeover)
    toneguard:media                 hash: node → its media address, ports, ng address (takeover)
    toneguard:down:<node>           when its heartbeat was first seen gone (proxy.store.orphans)

A write of a batch is one round trip: a Lua script (:data:`WRITE`, three writes per call)
that skips a call another node owns while that node's heartbeat is alive — after a takeover
(:mod:`proxy.store.takeover`) the node that was taken for dead cannot write the calls back as
its own, nor delete their records when it lets them go. The client does
not retry on its own: :mod:`proxy.store.sync` decides how often and how long, so a Redis that
is down costs one refused connection per attempt, never a blocked caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.store.base import StoreError

log = structlog.get_logger("toneguard.store")

PREFIX = "toneguard"
OWNERS = f"{PREFIX}:calls"
NODES = f"{PREFIX}:nodes"
ALIVE = f"{PREFIX}:alive:"  # + node: its heartbeat
MEDIA = f"{PREFIX}:media"  # hash: node → its media (JSON of proxy.store.takeover.NodeMedia)
DOWN = f"{PREFIX}:down:"  # + node: when a sweeper first saw its heartbeat gone (ms, Redis clock)

# KEYS: the owners hash, the writer's call set. ARGV: the writer, the heartbeat key prefix, the
# call key prefix, then (call id, record or "" to delete) pairs. Returns the ids skipped: owned
# by another node whose heartbeat is alive (a dead or unknown owner's call may be written: a
# re-offer that Kamailio sent elsewhere, a node without heartbeats).
WRITE = """
local moved = {}
for i = 4, #ARGV, 2 do
  local id, record = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', KEYS[1], id)
  if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
    table.insert(moved, id)
  elseif record == '' then
    redis.call('DEL', ARGV[3] .. id)
    redis.call('SREM', KEYS[2], id)
    redis.call('HDEL', KEYS[1], id)
  else
    redis.call('SET', ARGV[3] .. id, record)
    redis.call('SADD', KEYS[2], id)
    redis.call('HSET', KEYS[1], id, ARGV[1])
  end
end
return moved
"""


def call_key(call_id: str) -> str:
    return f"{PREFIX}:call:{call_id}"


def node_key(node: str) -> str:
    return f"{PREFIX}:node:{node}:calls"


class RedisStore:
    """A :class:`proxy.store.base.StateStore` on one Redis database."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.ops = 0
        self.fenced = 0  # call writes skipped: another live node owns the call
        self._write: Any = None  # the registered WRITE script (made on first use)
        try:
            self._redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), decode_responses=False)
        except ValueError as exc:  # a malformed URL (checked by the config too)
            raise StoreError(f"store url: {exc}") from exc

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool (the event fan-out publishes and subscribes through it)."""
        return self._redis

    async def write(self, node: str, batch: Mapping[str, bytes | None]) -> None:
        await self.write_fenced(node, batch)

    async def write_fenced(self, node: str, batch: Mapping[str, bytes | None]) -> list[str]:
        """:meth:`write`, returning the call ids skipped because another live node owns
        them (logged; the caller may let those calls go)."""
        if not batch:
            return []
        if self._write is None:
            self._write = self._redis.register_script(WRITE)
        args: list[str | bytes] = [node, ALIVE, call_key("")]
        for call_id, record in batch.items():
            args += [call_id, b"" if record is None else record]
        try:
            moved = await self._write(keys=[OWNERS, node_key(node)], args=args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 3 * len(batch)  # the writes, as before the script (the figures' unit)
        skipped = [as_text(m) for m in moved]
        if skipped:
            self.fenced += len(skipped)
            log.warning("calls not written: another live node owns them", calls=len(skipped))
        return skipped

    async def replace(self, node: str, records: Mapping[str, bytes]) -> None:
        try:
            known = {as_text(m) for m in await self._redis.smembers(node_key(node))}
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1
        await self.write(node, {**dict.fromkeys(known - set(records)), **records})

    async def load(self, node: str) -> dict[str, bytes]:
        try:
            ids = sorted(as_text(m) for m in await self._redis.smembers(node_key(node)))
            values = await self._redis.mget([call_key(c) for c in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 2
        return {c: as_bytes(v) for c, v in zip(ids, values, strict=True) if v is not None}

    async def owners(self) -> dict[str, str]:
        try:
            found = await self._redis.hgetall(OWNERS)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1
        return {as_text(k): as_text(v) for k, v in found.items()}

    async def announce(self, node: str, api_url: str) -> None:
        try:
            await self._redis.hset(NODES, node, api_url)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1

    async def nodes(self) -> dict[str, str]:
        try:
            found = await self._redis.hgetall(NODES)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1
        return {as_text(k): as_text(v) for k, v in found.items()}

    async def shared(self, name: str, value: bytes) -> bytes:
        try:
            key = f"toneguard:shared:{name}"
            await self._redis.set(key, value, nx=True)  # the first node's value wins
            found = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 2
        if found is None:  # deleted in between: ours then
            return value
        return found.encode() if isinstance(found, str) else found

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1

    async def close(self) -> None:
        await self._redis.aclose()


def as_text(value: bytes | str) -> str:
    """The client returns bytes (``decode_responses=False``); its types say bytes or str."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
