"""Orphaned records: the calls of a node that died, never came back and that no node took over.

Without this, such a node's call records (with its payments' metadata), its entries in
``toneguard:calls`` and its call set stay in Redis for ever, and every node's API keeps
forwarding to (and listing) a node that is gone. rtpengine's answer (``daemon/redis.c``) is a
TTL on every call key (``redis-expires``, a day by default), refreshed by each write; a
ToneGuard record is written only when its call changes, so a long quiet call would expire while
it relays. Here the owner's **heartbeat** decides instead (``toneguard:alive:<node>``, which
every node with Redis refreshes, :mod:`proxy.store.takeover`):

- Every node sweeps every ``interval`` (its heartbeat TTL): for each other node it knows of
  (media in ``toneguard:media``, published at a node's first beat; an API in
  ``toneguard:nodes``) it runs :data:`REAP`, one Lua script (atomic against every other
  command, so two sweepers and a node coming back never race): a node whose heartbeat is
  there is alive (its down mark, if any, is cleared); one whose heartbeat is gone gets a
  down mark, ``toneguard:down:<node>`` = when a sweeper first saw it gone (Redis's clock,
  shared by every sweeper); once that is ``grace`` (``store.orphan_seconds``) old, the script
  deletes the records of the calls it still owns, their owner entries and its call set, its
  API entry and the down mark. A call a taker moved off it is the taker's and is left alone;
  the list of moved calls (which the node, if it ever comes back, relays) keeps only those
  calls still owned by someone, and once none is left its claim and media entry go too.
- Meanwhile the API lists such calls as ``owner_down`` (:func:`down_calls`, read by
  :mod:`proxy.store.forward`) instead of trying the dead node's API for every listing.
- A node that comes back clears its own down mark when it beats first (the grace counts from
  each death, not from the first); a node back after its records were reaped restores nothing.

Why the grace is long (5 min by default, above ``media.idle_timeout_seconds``): the same
records are what a restart restores (an upgrade, a host reboot) and what a taker adopts (after
``heartbeat_ttl_seconds``); a call whose owner has been gone longer than its idle timeout has
had no media relayed for that long, which its owner, alive, would have ended itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from proxy.store.base import StoreError
from proxy.store.redis_store import (
    ALIVE,
    DOWN,
    MEDIA,
    NODES,
    OWNERS,
    PREFIX,
    as_text,
    call_key,
    node_key,
)

log = structlog.get_logger("toneguard.store")

MAX_LISTED = 1000  # owner-down calls read per listing at most (a bounded MGET)


# KEYS: the node's heartbeat, its down mark, its call set, the owners hash, the nodes hash,
# the media hash, its takeover claim, the set of calls moved off it. ARGV: the node, the grace
# (ms), the prefix of call record keys. Returns {"alive"}, {"down", ms since first seen down}
# or {"reaped", ms, id1, id2, ...} (the ids whose records were deleted).
REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return {'alive'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace = tonumber(ARGV[2])
local since = redis.call('GET', KEYS[2])
if not since then
  -- The mark outlives the grace by a margin, so one nobody looks at again does not linger.
  redis.call('SET', KEYS[2], now, 'PX', grace * 2 + 60000)
  return {'down', 0}
end
local down = now - tonumber(since)
if down < grace then return {'down', down} end
local out = {'reaped', down}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local owner = redis.call('HGET', KEYS[4], id)
  if not owner or owner == ARGV[1] then
    redis.call('DEL', ARGV[3] .. id)
    redis.call('HDEL', KEYS[4], id)
    table.insert(out, id)
  end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[5], ARGV[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[8])) do
  if redis.call('HEXISTS', KEYS[4], id) == 0 then redis.call('SREM', KEYS[8], id) end
end
-- Calls a taker moved off it still live: its media entry stays, so it stays known and
-- the list is pruned again by a later sweep; none left: nothing of it remains.
if redis.call('SCARD', KEYS[8]) == 0 then
  redis.call('DEL', KEYS[7])
  redis.call('HDEL', KEYS[6], ARGV[1])
end
redis.call('DEL', KEYS[2])
return out
"""


@dataclass(frozen=True)
class Sweep:
    """What one run of :data:`REAP` found for one node."""

    node: str
    outcome: str  # "alive", "down" (not for long enough yet) or "reaped"
    down_seconds: float = 0.0
    reaped: list[str] = field(default_factory=list)


async def sweep_node(redis: aioredis.Redis, node: str, grace: float) -> Sweep:
    """Run :data:`REAP` for ``node`` once."""
    keys = [f"{ALIVE}{node}", f"{DOWN}{node}", node_key(node), OWNERS, NODES, MEDIA,
            f"{PREFIX}:takeover:{node}", f"{PREFIX}:takeover:{node}:calls"]
    try:
        reply = await redis.eval(REAP, len(keys), *keys, node, round(grace * 1000),
                                 call_key(""))
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
    outcome = as_text(reply[0])
    if outcome == "alive":
        return Sweep(node, outcome)
    return Sweep(node, outcome, int(reply[1]) / 1000, [as_text(i) for i in reply[2:]])


async def known_nodes(redis: aioredis.Redis) -> set[str]:
    """Every node the store has heard of: its media (published at its first beat, so every
    node with a heartbeat is there) or its API. Not the owners of calls: that hash holds every
    call, too big to read every few seconds, and a node that never beat has nothing to miss."""
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hkeys(NODES)
        pipe.hkeys(MEDIA)
        apis, media = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
    return {as_text(n) for n in (*apis, *media)}


@dataclass(frozen=True)
class DownCall:
    """A call whose owner's heartbeat is gone: what the API lists of it (no keys, no digits)."""

    call_id: str
    node: str
    agent_id: str
    created: float
    last_payment_sid: str


async def down_calls(redis: aioredis.Redis, exclude: str) -> tuple[set[str], list[DownCall]]:
    """The nodes (other than ``exclude``) whose heartbeat is gone, and their calls (at most
    :data:`MAX_LISTED`), read from the records' plain fields."""
    try:
        nodes = sorted(await known_nodes(redis) - {exclude})
        pipe = redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(f"{ALIVE}{node}")
        alive = await pipe.execute() if nodes else []
        down = {n for n, a in zip(nodes, alive, strict=True) if not a}
        owners: dict[str, str] = {}  # the down nodes' calls that are still theirs
        for node in sorted(down):
            ids = sorted(as_text(i) for i in await redis.smembers(node_key(node)))
            ids = ids[:MAX_LISTED - len(owners)]
            found = await redis.hmget(OWNERS, ids) if ids else []
            owners |= {c: node for c, o in zip(ids, found, strict=True)
                       if o is not None and as_text(o) == node}
        ids = sorted(owners)
        values = await redis.mget([call_key(c) for c in ids]) if ids else []
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
    calls = []
    for call_id, value in zip(ids, values, strict=True):
        if value is None:
            continue
        try:
            body: dict[str, Any] = json.loads(value)
            payments = body.get("payments") or []
            calls.append(DownCall(call_id, owners[call_id], str(body.get("agent_id", "")),
                                  float(body["call"]["created"]),
                                  str(payments[-1]["sid"]) if payments else ""))
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # unreadable: left out of the listing (the reaper deletes it in time)
    return down, calls


class OrphanReaper:
    """Sweeps every ``interval`` seconds: reaps the records of nodes down for ``grace``."""

    def __init__(self, redis: aioredis.Redis, node: str, *, grace: float,
                 interval: float) -> None:
        self._redis = redis
        self.node = node
        self.grace = grace
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.reaped: list[str] = []  # call ids whose records this node deleted
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-orphans")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> list[Sweep]:
        """One pass over every other node the store knows of."""
        results = []
        for node in sorted(await known_nodes(self._redis) - {self.node}):
            result = await sweep_node(self._redis, node, self.grace)
            results.append(result)
            if result.outcome == "down" and result.down_seconds == 0:
                log.warning("a node's heartbeat is gone: its calls are listed as owner down "
                            "until it comes back, is taken over or is reaped", node=node,
                            reap_after_seconds=self.grace)
            elif result.outcome == "reaped":
                self.reaped += result.reaped
                log.warning("reaped the records of a node that did not come back", node=node,
                            calls=len(result.reaped), down_seconds=round(result.down_seconds))
        return results

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except StoreError as exc:  # Redis trouble: the writer reports it; next pass
                self.failures += 1
                log.info("orphan sweep failed", reason=str(exc))
