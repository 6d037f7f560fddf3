"""The Redis store (``[store] url = "redis://HOST:PORT/DB"``), with the async ``redis`` client.

Layout (every key under ``toneguard:``)::

    toneguard:call:<call id>        the call's record (JSON, see proxy.store.records)
    toneguard:node:<node>:calls     set: the call ids that node owns (what a restart loads)
    toneguard:calls                 hash: call id → owning node (what any node's API lists)
    toneguard:nodes                 hash: node → its API's base URL (where actions are sent)

A write of a batch is one pipelined round trip (three commands per call). The client does
not retry on its own: :mod:`proxy.store.sync` decides how often and how long, so a Redis that
is down costs one refused connection per attempt, never a blocked caller.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.store.base import StoreError

PREFIX = "toneguard"
OWNERS = f"{PREFIX}:calls"
NODES = f"{PREFIX}:nodes"


def call_key(call_id: str) -> str:
    return f"{PREFIX}:call:{call_id}"


def node_key(node: str) -> str:
    return f"{PREFIX}:node:{node}:calls"


class RedisStore:
    """A :class:`proxy.store.base.StateStore` on one Redis database."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.ops = 0
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
        if not batch:
            return
        pipe = self._redis.pipeline(transaction=False)
        for call_id, record in batch.items():
            if record is None:
                pipe.delete(call_key(call_id))
                pipe.srem(node_key(node), call_id)
                pipe.hdel(OWNERS, call_id)
            else:
                pipe.set(call_key(call_id), record)
                pipe.sadd(node_key(node), call_id)
                pipe.hset(OWNERS, call_id, node)
        await self._run(pipe, 3 * len(batch))

    async def replace(self, node: str, records: Mapping[str, bytes]) -> None:
        try:
            known = {_text(m) for m in await self._redis.smembers(node_key(node))}
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1
        await self.write(node, {**dict.fromkeys(known - set(records)), **records})

    async def load(self, node: str) -> dict[str, bytes]:
        try:
            ids = sorted(_text(m) for m in await self._redis.smembers(node_key(node)))
            values = await self._redis.mget([call_key(c) for c in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 2
        return {c: _bytes(v) for c, v in zip(ids, values, strict=True) if v is not None}

    async def owners(self) -> dict[str, str]:
        try:
            found = await self._redis.hgetall(OWNERS)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        self.ops += 1
        return {_text(k): _text(v) for k, v in found.items()}

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
        return {_text(k): _text(v) for k, v in found.items()}

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

    async def _run(self, pipe: aioredis.client.Pipeline, commands: int) -> None:
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        finally:
            await pipe.reset()
        self.ops += commands


def _text(value: bytes | str) -> str:
    """The client returns bytes (``decode_responses=False``); its types say bytes or str."""
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
