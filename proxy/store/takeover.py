"""Same-address takeover: a node adopts the calls of a node that died (rtpengine's failover).

How it works (README "Many nodes and restarts"):

- Every node with a Redis store **heartbeats**: ``toneguard:alive:<node>`` is set with a TTL
  (``store.heartbeat_ttl_seconds``) every ``store.heartbeat_seconds``. Its first beat is
  written *before* the node loads its own calls at start (see "a node that comes back").
  Each node also publishes where its media lives (``toneguard:media``: address, advertised
  address, port range), which is what a taker needs to bind the same sockets.
- A node configured with ``store.takeover = ["node-a", ...]`` watches those nodes' heartbeats.
  When one has expired it runs :data:`CLAIM` — one Lua script, so Redis runs it atomically
  against every other command: if the dead node's heartbeat is back it does nothing; if
  another node already holds the claim (``toneguard:takeover:<node>``) it does nothing; else
  it takes the claim and moves every call of the dead node to the taker (``toneguard:calls``
  → the taker, the call ids from the dead node's set into the taker's) and returns their
  records. Of two takers racing, exactly one wins; the other learns who did.
- The winner binds the calls on the dead node's **own media address and ports** (in
  production a floating IP that keepalived moves to the taker first; on loopback 127.0.0.x is
  local to every process) with a second media engine for that address
  (:class:`AdoptingEngine`), adopted into its call registry as a restart does, so masking is
  configured before the parties are linked (masked from the first packet) and an open payment
  resumes (asked again from the card number).
- The taker also answers on the dead node's **ng address** (rtpengine's keepalived setups
  move the control address with the media one): Kamailio's rtpengine module keeps sending a
  call's commands to the node that took its offer — it remembers it per Call-ID and, that node
  disabled, answers "no available proxies" rather than ask another — so the taker must be
  there. It gives the address back as soon as the dead node beats again (whose start retries
  its ng bind meanwhile). The taker has the call, so ``query``/``delete``/``block DTMF`` work.
  The API routes actions on the call to the taker: ``toneguard:calls`` says it owns it now.
- A node that comes back (restarted) beats first, then loads its calls: its set is empty if a
  taker moved them, and the script refuses to move anything once the beat is back, so the two
  never both bind a call. It then clears the claim (a later death can be taken over again) and
  logs who took its calls.

- A node that was alive all along but taken for dead (cut off from Redis, or stalled, for
  longer than the TTL) finds out at its next beat: the key it refreshes was gone. It then lets
  go of every call the store says another node owns now (in production keepalived has moved
  the address away, so their media reaches the taker anyway), and clears the claim. Until then
  its writes cannot take those calls back: :data:`proxy.store.redis_store.WRITE` skips a call
  another live node owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from proxy.control.calls import CallRegistry
from proxy.control.ng_client import NgClient, NgTimeout
from proxy.media.types import (
    LocalEndpoint,
    MediaEngine,
    MediaError,
    MediaEvent,
    MediaTotals,
    RestoredStream,
    StreamConfig,
    StreamStats,
)
from proxy.store.orphans import OrphanReaper
from proxy.store.records import CallRecord, RecordError
from proxy.store.redis_store import (
    ALIVE,
    DOWN,
    MEDIA,
    OWNERS,
    PREFIX,
    as_bytes,
    as_text,
    call_key,
    node_key,
)
from proxy.store.sealing import SealError

log = structlog.get_logger("toneguard.store")

ADOPT_RETRY_SECONDS = 5.0  # a port still held (a killed node's sockets closing), an address
ADOPT_RETRY_PAUSE = 0.1  # not yet moved here: retried this long, this often
# The first beat, at start, lives this long at least: a starting node (restoring its calls,
# importing and starting its API: seconds on a loaded machine, its event loop busy) is not
# dead. Regular beats begin once the node is up.
START_GRACE_SECONDS = 15.0


def alive_key(node: str) -> str:
    return f"{ALIVE}{node}"


def claim_key(node: str) -> str:
    return f"{PREFIX}:takeover:{node}"


def moved_key(node: str) -> str:
    """The set of call ids a taker moved off ``node``: what ``node``, back, relays."""
    return f"{PREFIX}:takeover:{node}:calls"


# KEYS: the dead node's heartbeat, its claim, its call set, the taker's call set, the owners
# hash, the set of the ids moved (read by the dead node when it is back: it relays the next
# commands of those calls, an offer too, to the taker). ARGV: the taker, the prefix of call
# record keys. Returns {"alive"}, {"taken", holder}, {"empty"} (no calls to take: no claim,
# so a node not started yet is not reported taken over) or {"won", id1, record1, id2, ...}.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive'} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'taken', holder} end
if redis.call('SCARD', KEYS[3]) == 0 then return {'empty'} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[6])
local out = {'won'}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local record = redis.call('GET', ARGV[2] .. id)
  if record then
    redis.call('HSET', KEYS[5], id, ARGV[1])
    redis.call('SADD', KEYS[4], id)
    redis.call('SADD', KEYS[6], id)
    table.insert(out, id)
    table.insert(out, record)
  else
    redis.call('HDEL', KEYS[5], id)
  end
end
redis.call('DEL', KEYS[3])
return out
"""


class TakeoverError(Exception):
    """The store could not be asked (its cause says why)."""


@dataclass(frozen=True)
class NodeMedia:
    """Where a node's media sockets live: what a taker binds again."""

    address: str
    advertised_address: str
    port_min: int
    port_max: int
    ng: str = ""  # its ng control socket, HOST:PORT (a taker answers there too)


@dataclass(frozen=True)
class Claim:
    """The result of one claim: ``won`` with the dead node's records, or why not."""

    outcome: str  # "won", "alive" (its heartbeat is back), "taken" (by ``holder``), "empty"
    holder: str = ""
    records: dict[str, bytes] | None = None


async def claim(redis: aioredis.Redis, dead: str, taker: str) -> Claim:
    """Run :data:`CLAIM` once: atomically, exactly one taker wins a dead node's calls."""
    keys = [alive_key(dead), claim_key(dead), node_key(dead), node_key(taker), OWNERS,
            moved_key(dead)]
    try:
        reply = await redis.eval(CLAIM, len(keys), *keys, taker, call_key(""))
    except (RedisError, OSError) as exc:
        raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
    outcome = as_text(reply[0])
    if outcome == "taken":
        return Claim("taken", holder=as_text(reply[1]))
    if outcome != "won":
        return Claim(outcome)
    pairs = reply[1:]
    return Claim("won", holder=taker, records={
        as_text(pairs[i]): as_bytes(pairs[i + 1]) for i in range(0, len(pairs), 2)})


class Heartbeat:
    """This node's heartbeat key, refreshed every ``interval`` seconds, expiring after ``ttl``.
    ``calls`` and ``forget``: this node's calls, and how to let one go (after a lapse)."""

    def __init__(self, redis: aioredis.Redis, node: str, media: NodeMedia, *,
                 interval: float, ttl: float,
                 calls: Callable[[], list[str]] = list,
                 forget: Callable[[str], Awaitable[object]] | None = None,
                 reap_after: float | None = None) -> None:
        self._redis = redis
        self.node = node
        self._media = media
        self._calls = calls
        self._forget = forget
        self._beaten = False  # a beat has been written (a missing key later: a lapse)
        self.lapses = 0
        self.let_go: list[str] = []
        self._interval = interval
        self._ttl_ms = max(1, round(ttl * 1000))
        self._instance = secrets.token_hex(8)  # which process of this node beats
        self._task: asyncio.Task[None] | None = None
        self.taken_by = ""  # the node that took this node's calls while it was down
        # The calls a taker moved off this node: Kamailio keeps sending their commands here
        # (a re-INVITE's offer too), and this node relays them to the owner (:meth:`relays`).
        self.taken_calls: set[str] = set()
        self.failures = 0
        # Every node sweeps for the records of nodes that never came back (once it is up).
        self.reaper = None if reap_after is None else OrphanReaper(
            redis, node, grace=reap_after, interval=ttl)

    async def start(self) -> None:
        """The first beat (before this node loads its calls), alive for the start's grace."""
        with contextlib.suppress(TakeoverError):
            await self._beat(max(self._ttl_ms, round(START_GRACE_SECONDS * 1000)))
            await self._back()

    def begin(self) -> None:
        """Beat every ``interval`` from now on (the node is up). Redis unreachable: the loop
        keeps trying (the restore is retried by the writer)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-heartbeat")
        if self.reaper is not None:
            self.reaper.start()

    async def _beat(self, ttl_ms: int | None = None) -> None:
        try:
            before = await self._redis.set(alive_key(self.node), self._instance,
                                           px=ttl_ms or self._ttl_ms, get=True)
        except (RedisError, OSError) as exc:
            self.failures += 1
            raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
        lapsed = self._beaten and before is None
        self._beaten = True
        if lapsed:
            await self._lapsed()

    async def _lapsed(self) -> None:
        """This node was taken for dead: let go of the calls another node has adopted."""
        self.lapses += 1
        ids = list(self._calls())
        try:
            holder = await self._redis.getdel(claim_key(self.node))
            owners = await self._redis.hmget(OWNERS, ids) if ids else []
            self.taken_calls |= await self._moved()
        except (RedisError, OSError) as exc:
            raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
        moved = [c for c, o in zip(ids, owners, strict=True)
                 if o is not None and as_text(o) != self.node]
        if holder:
            self.taken_by = as_text(holder)
        log.warning("heartbeat had lapsed: this node was taken for dead",
                    taken_by=as_text(holder) if holder else "", calls_moved=len(moved))
        for call_id in moved:
            if self._forget is not None:
                await self._forget(call_id)  # its delete is not written: another node owns it
            self.let_go.append(call_id)

    async def _back(self) -> None:
        """Publish where this node's media lives; clear a takeover of its calls (logged)."""
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(MEDIA, self.node, json.dumps(asdict(self._media)))
            pipe.getdel(claim_key(self.node))
            pipe.delete(f"{DOWN}{self.node}")  # back: a later death counts from then
            _, holder, _ = await pipe.execute()
            self.taken_calls |= await self._moved()
        except (RedisError, OSError) as exc:
            raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
        if holder:
            self.taken_by = as_text(holder)
            log.warning("this node's calls were taken over while it was down: left to the "
                        "node that has them", taken_by=self.taken_by)

    async def _moved(self) -> set[str]:
        """The ids of the calls a taker moved off this node. The set stays (a second restart
        of this node relays them too): the next claim replaces it, a sweep while this node is
        down drops the calls that ended (:mod:`proxy.store.orphans`)."""
        return {as_text(i) for i in await self._redis.smembers(moved_key(self.node))}

    def relays(self, call_id: str, starts_a_call: bool) -> bool:
        """Whether an ng command for ``call_id`` (a call this node does not have) may belong
        to a node that took this node's calls over, so its owner is looked up and the command
        relayed there. Never before a takeover (no Redis round trip for unknown calls). An
        offer for a call this node does not know is a new call — except for a call a taker
        moved off this node: Kamailio sends that call's re-INVITE here, and it must reach the
        adopter, not become a second call on this node's ports."""
        if not self.taken_by and not self.taken_calls:
            return False
        return not starts_a_call or call_id in self.taken_calls

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
            except TakeoverError as exc:
                log.warning("heartbeat not written", reason=str(exc))

    async def stop(self) -> None:
        """Stop beating. The key is left to expire: a node stopped with live calls has them
        taken over after the TTL unless it is back first (an upgrade's restart)."""
        if self.reaper is not None:
            await self.reaper.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class AdoptingEngine:
    """This node's media engine plus one in-process engine per adopted node's media address:
    each call's streams live on the engine its call was placed on (its own by default)."""

    def __init__(self, own: MediaEngine, make: Callable[[NodeMedia], MediaEngine]) -> None:
        self.own = own
        self._make = make
        self._extra: dict[str, MediaEngine] = {}  # media address → its engine
        self._call_engine: dict[str, tuple[MediaEngine, int]] = {}  # call → engine, streams
        self._stream_engine: dict[str, MediaEngine] = {}
        self._stream_call: dict[str, str] = {}  # streams on an adopted address only
        self._subscribers: list[Callable[[MediaEvent], None]] = []

    async def add(self, media: NodeMedia) -> None:
        """An engine bound on ``media``'s address (once per address)."""
        if media.address in self._extra:
            return
        engine = self._make(media)
        for callback in self._subscribers:
            engine.subscribe(callback)
        await engine.start()
        self._extra[media.address] = engine

    def place(self, call_id: str, address: str) -> None:
        """Put ``call_id``'s streams (those to come too: a re-offer) on ``address``'s engine."""
        self._call_engine[call_id] = (self._extra[address], 0)

    async def start(self) -> None:
        await self.own.start()

    async def stop(self) -> None:
        for engine in self._extra.values():
            await engine.stop()
        await self.own.stop()

    async def allocate(self, stream_id: str, call_id: str, *, rtcp_mux: bool,
                       port: int | None = None) -> LocalEndpoint:
        engine, streams = self._call_engine.get(call_id, (self.own, 0))
        local = await engine.allocate(stream_id, call_id, rtcp_mux=rtcp_mux, port=port)
        if engine is not self.own:
            self._call_engine[call_id] = (engine, streams + 1)
            self._stream_call[stream_id] = call_id
        self._stream_engine[stream_id] = engine
        return local

    async def restore(self, call_id: str, streams: list[RestoredStream],
                      links: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
        engine, count = self._call_engine.get(call_id, (self.own, 0))
        await engine.restore(call_id, streams, links, outputs)
        for s in streams:  # bookkept as ``allocate`` does, once the engine holds them all
            self._stream_engine[s.stream_id] = engine
            if engine is not self.own:
                self._stream_call[s.stream_id] = call_id
        if engine is not self.own:
            self._call_engine[call_id] = (engine, count + len(streams))

    def _of(self, stream_id: str) -> MediaEngine:
        return self._stream_engine.get(stream_id, self.own)

    async def configure(self, stream_id: str, config: StreamConfig) -> None:
        await self._of(stream_id).configure(stream_id, config)

    async def link(self, a: str, b: str) -> None:
        if self._of(a) is not self._of(b):
            raise MediaError(f"cannot link {a} and {b}: they live on different addresses")
        await self._of(a).link(a, b)

    async def add_output(self, source: str, sink: str) -> None:
        if self._of(source) is not self._of(sink):
            raise MediaError(f"cannot send {source} to {sink}: different addresses")
        await self._of(source).add_output(source, sink)

    async def remove_output(self, source: str, sink: str) -> None:
        await self._of(source).remove_output(source, sink)

    async def release(self, stream_id: str) -> None:
        engine = self._stream_engine.pop(stream_id, self.own)
        await engine.release(stream_id)
        call_id = self._stream_call.pop(stream_id, None)
        if call_id is not None and call_id in self._call_engine:
            placed, streams = self._call_engine[call_id]
            if streams <= 1:
                del self._call_engine[call_id]
            else:
                self._call_engine[call_id] = (placed, streams - 1)

    async def stats(self, stream_id: str) -> StreamStats:
        return await self._of(stream_id).stats(stream_id)

    async def totals(self) -> MediaTotals:
        total = await self.own.totals()
        for engine in self._extra.values():
            # The node's readiness counts its own engines only.
            total = total + replace(await engine.totals(), workers=0)
        return total

    def subscribe(self, callback: Callable[[MediaEvent], None]) -> None:
        self._subscribers.append(callback)
        self.own.subscribe(callback)
        for engine in self._extra.values():
            engine.subscribe(callback)


# Called with the call record of each adopted call (restores its payments, as a restart does).
Resume = Callable[[CallRecord], None]


class NgListener(Protocol):
    """An ng socket opened on a dead node's ng address (stopped when that node is back)."""

    async def stop(self) -> None: ...


OpenNg = Callable[[str], Awaitable[NgListener]]  # HOST:PORT → a listener answering there


class TakeoverWatcher:
    """Watches the heartbeats of ``watched`` and adopts the calls of one that died."""

    def __init__(self, redis: aioredis.Redis, node: str, watched: list[str], *,
                 registry: CallRegistry, engine: AdoptingEngine,
                 decode_record: Callable[[bytes], CallRecord], resume: Resume,
                 mark: Callable[[str], None], interval: float,
                 may_claim: Callable[[], bool] = lambda: True,
                 open_ng: OpenNg | None = None) -> None:
        self._redis = redis
        self.node = node
        self._watched = [w for w in watched if w != node]
        self._registry = registry
        self._engine = engine
        self._decode = decode_record
        self._resume = resume
        self._mark = mark  # the writer rewrites an adopted call's record as this node's
        self._interval = interval
        self._may_claim = may_claim  # not while the writer re-syncs (it would delete them)
        self._task: asyncio.Task[None] | None = None
        self._open_ng = open_ng
        self._ng_wanted: dict[str, str] = {}  # dead node → its ng address, to answer on
        self.ng: dict[str, NgListener] = {}  # dead node → our listener on its ng address
        self.taken: dict[str, float] = {}  # dead node → seconds its adoption took
        self.adopted: list[str] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-takeover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for dead in list(self.ng):
            await self._give_back(dead)

    async def _run(self) -> None:
        while True:
            for dead in self._watched:
                try:
                    await self.check(dead)
                except TakeoverError as exc:
                    log.warning("takeover check failed", node=dead, reason=str(exc))
            await asyncio.sleep(self._interval)

    async def check(self, dead: str) -> Claim | None:
        """Adopt ``dead``'s calls if its heartbeat has expired and no other node has."""
        try:
            alive = await self._redis.exists(alive_key(dead))
        except (RedisError, OSError) as exc:
            raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
        if alive:
            self.taken.pop(dead, None)  # it is back: a later death is taken over again
            await self._give_back(dead)
            return None
        if dead in self.taken:
            await self._answer_for(dead)
            return None
        if not self._may_claim():
            return None
        started = time.monotonic()
        result = await claim(self._redis, dead, self.node)
        if result.outcome == "taken":
            self.taken[dead] = 0.0
            log.info("a dead node's calls were taken by another node", node=dead,
                     taken_by=result.holder)
        if result.outcome != "won":
            return result
        adopted, failed = await self.adopt(dead, result.records or {})
        self.taken[dead] = time.monotonic() - started
        log.warning("took over a dead node's calls", node=dead, calls=adopted, failed=failed,
                    ms=round(self.taken[dead] * 1000, 1))
        await self._answer_for(dead)
        return result

    async def _answer_for(self, dead: str) -> None:
        """Answer on the dead node's ng address (retried each poll until it binds)."""
        address = self._ng_wanted.get(dead)
        if address is None or dead in self.ng or self._open_ng is None:
            return
        try:
            self.ng[dead] = await self._open_ng(address)
        except OSError as exc:
            log.warning("cannot answer on a dead node's ng address yet", node=dead,
                        address=address, error=exc.strerror or str(exc))
            return
        log.warning("answering on a dead node's ng address", node=dead, address=address)

    async def _give_back(self, dead: str) -> None:
        self._ng_wanted.pop(dead, None)
        listener = self.ng.pop(dead, None)
        if listener is not None:
            await listener.stop()
            log.info("gave a node's ng address back: it beats again", node=dead)

    async def adopt(self, dead: str, records: dict[str, bytes]) -> tuple[int, int]:
        """Bind each call on the dead node's address and ports; (adopted, failed)."""
        media = await self._media_of(dead)
        if media is not None and media.ng and records:
            self._ng_wanted[dead] = media.ng
        decoded: list[CallRecord] = []
        failed = 0
        for call_id, data in records.items():
            try:
                decoded.append(self._decode(data))
            except (RecordError, SealError) as exc:
                log.error("call not taken over", call_id=call_id, reason=str(exc))
                self._mark(call_id)  # not in the registry: its record is deleted
                failed += 1
        addresses = {m.local.address for r in decoded for p in r.call.parties.values()
                     for m in p.medias}
        advertised: dict[str, str] = {}
        for address in sorted(addresses):
            bound = (media if media is not None and media.address == address
                     else _fallback(address, decoded))
            await self._engine.add(bound)
            advertised[address] = bound.advertised_address
        adopted = 0
        for record in decoded:
            if await self._adopt_one(record, advertised):
                adopted += 1
            else:
                failed += 1
        return adopted, failed

    async def _adopt_one(self, record: CallRecord, advertised: dict[str, str]) -> bool:
        call = record.call
        if call.call_id in self._registry.calls:
            self._mark(call.call_id)
            return True  # re-offered here meanwhile: ours is newer
        address = next((m.local.address for p in call.parties.values() for m in p.medias),
                       None)
        deadline = time.monotonic() + ADOPT_RETRY_SECONDS
        while True:
            if address is not None:
                self._engine.place(call.call_id, address)
            try:
                await self._registry.adopt(call)
                break
            except MediaError as exc:
                if time.monotonic() >= deadline:
                    log.error("call not taken over", call_id=call.call_id, reason=str(exc))
                    self._mark(call.call_id)
                    return False
                await asyncio.sleep(ADOPT_RETRY_PAUSE)
        if address is not None:  # its SDP keeps the dead node's address (a re-offer, later)
            self._registry.addresses[call.call_id] = advertised[address]
        self._resume(record)
        self._mark(call.call_id)
        self.adopted.append(call.call_id)
        return True

    async def _media_of(self, node: str) -> NodeMedia | None:
        try:
            raw = await self._redis.hget(MEDIA, node)
        except (RedisError, OSError) as exc:
            raise TakeoverError(f"redis: {type(exc).__name__}: {exc}") from exc
        return NodeMedia(**json.loads(raw)) if raw else None


def _fallback(address: str, records: list[CallRecord]) -> NodeMedia:
    """A dead node that never published its media (an older version): its calls' own ports
    span the range (a re-offer's new streams then fail: refused, not relayed elsewhere)."""
    ports = [m.local.rtp_port for r in records for p in r.call.parties.values()
             for m in p.medias if m.local.address == address]
    low = min(ports) // 2 * 2
    return NodeMedia(address, address, low, max(ports) + 2)


# --- ng commands for a call another node adopted ---------------------------------------------

RELAYED = "toneguard-relayed"  # an ng key rtpengine's clients never send: relayed once, never again
RELAY_TIMEOUT = 0.5  # seconds per attempt; two attempts (Kamailio itself waits and retries)
LOOKUP_TIMEOUT = 0.25  # the owner's lookup: the ng worker waits for it (Redis slow: answer here)


class NgRelay:
    """A node back after a takeover gets Kamailio's commands for the calls its taker adopted
    (the rtpengine module keeps a call on the node that took its offer): such a command, for a
    call another live node owns, is relayed to that node's ng address and its reply returned.
    A relayed command carries :data:`RELAYED` and is never relayed again (no loops)."""

    def __init__(self, redis: aioredis.Redis, node: str) -> None:
        self._redis = redis
        self.node = node
        self.relayed = 0

    async def owner_ng(self, call_id: str) -> str | None:
        """The ng address of the live node that owns ``call_id``, if not this one."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                owner = await self._redis.hget(OWNERS, call_id)
                if owner is None or as_text(owner) == self.node:
                    return None
                pipe = self._redis.pipeline(transaction=False)
                pipe.exists(alive_key(as_text(owner)))
                pipe.hget(MEDIA, as_text(owner))
                alive, media = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("ng relay: store unreachable", error=type(exc).__name__)
            return None
        if not alive or not media:
            return None
        return str(json.loads(media).get("ng", "")) or None

    async def relay(self, body: dict[str, object], call_id: str) -> dict[str, object] | None:
        """The owner's reply to ``body``, error or not, as it came; None: not relayed (answer
        it here)."""
        if RELAYED in body:
            return None
        address = await self.owner_ng(call_id)
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        client = await NgClient.connect((host, int(port)), raise_on_error=False,
                                        rto=RELAY_TIMEOUT, rto_max=RELAY_TIMEOUT, retransmits=1)
        try:
            reply = await client.request({**body, RELAYED: self.node})
        except NgTimeout:
            log.warning("ng relay: the owning node did not answer", address=address)
            return None
        finally:
            client.close()
        self.relayed += 1
        return reply
