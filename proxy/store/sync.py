"""Writes leave the node here: a bounded set of changed calls, drained by one task.

Why a set of call ids and not a queue of records: a hook on the ng or payment path only adds
an id (O(1), no serialising, no I/O), and ten changes of one call before the writer runs are
one write of its latest state. The writer reads the state when it writes.

Trouble: a batch that fails is retried ``attempts`` times with a doubling pause; then the node
is *degraded* (``problems()``, a metric), stops queueing (the set cannot grow without bound),
pings the store every ``recheck`` seconds, and once it answers re-syncs everything it owns
(``replace``: live calls written, calls gone since deleted). Calls keep relaying and masking
throughout: nothing on the media path waits for this.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from proxy.store.base import StateStore, StoreError

log = structlog.get_logger("toneguard.store")

# Module level so tests can shorten them (as aioice does with its retry constants).
BATCH_DELAY = 0.02  # gather changes this long before a write (an offer and its masking)
RETRY_ATTEMPTS = 4
RETRY_FIRST_PAUSE = 0.1  # then doubling: 0.1 + 0.2 + 0.4 s before degrading
RECHECK_SECONDS = 1.0
HEARTBEAT_SECONDS = 2.0  # an idle writer pings this often: an outage shows without a write


@dataclass(slots=True)
class SyncCounters:
    writes: int = 0  # call records written or deleted
    batches: int = 0  # round trips that succeeded
    failures: int = 0  # attempts (writes, heartbeat pings) that failed: retried or degrading
    resyncs: int = 0  # full re-syncs after an outage
    dropped: int = 0  # changes not queued: degraded or the set was full (a re-sync follows)


Collect = Callable[[str], bytes | None]  # call id → its record now (None: gone)


class StateSync:
    def __init__(self, store: StateStore, node: str, collect: Collect,
                 live: Callable[[], Iterable[str]], *, limit: int = 10_000) -> None:
        self.store = store
        self.node = node
        self._collect = collect
        self._live = live  # every call id this node owns now (for a re-sync)
        self._limit = limit
        self._dirty: dict[str, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.degraded = ""  # why, when the store is not being written
        self._resync = False
        self.counters = SyncCounters()
        # Run once the store answers again, before the re-sync replaces what it holds (a node
        # that started while the store was down restores its calls then); False: not yet.
        self.before_resync: Callable[[], Awaitable[bool]] | None = None

    # --- hooks (synchronous, O(1)) ------------------------------------------------------------

    def mark(self, call_id: str) -> None:
        """The call changed (or ended): write its state soon."""
        if self.degraded or self._resync:
            self.counters.dropped += 1  # the re-sync will carry it
            return
        if call_id not in self._dirty and len(self._dirty) >= self._limit:
            self.counters.dropped += 1
            self._resync = True
            self._dirty.clear()
            log.warning("store queue full: a full re-sync follows", limit=self._limit)
        else:
            self._dirty[call_id] = None
        self._idle.clear()
        self._wake.set()

    def lost(self, reason: str) -> None:
        """The store failed outside the writer (e.g. at start): degraded until a re-sync."""
        self.degraded = reason
        self._resync = True
        self._dirty.clear()
        self._idle.clear()
        self._wake.set()

    def problems(self) -> list[str]:
        return [f"degraded: store {self.degraded}"] if self.degraded else []

    @property
    def pending(self) -> int:
        return len(self._dirty)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-sync")

    async def flush(self, timeout: float = 5.0) -> bool:
        """Until every change so far is written (False: not within ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Write what is pending (bounded), then stop. The records stay: a node stopped for
        an upgrade gets its calls back when it starts again."""
        if self._task is not None:
            await self.flush(timeout=2.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.close()

    # --- the writer ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                if not await self._attempt(self.store.ping):
                    await self._outage()
                continue
            await asyncio.sleep(BATCH_DELAY)
            self._wake.clear()
            if self._resync:
                if not await self._full_sync():
                    await self._outage()
            else:
                ids, self._dirty = list(self._dirty), {}
                batch = {call_id: self._collect(call_id) for call_id in ids}
                if await self._attempt(functools.partial(self.store.write, self.node, batch)):
                    self.counters.writes += len(batch)
                    self.counters.batches += 1
                else:
                    await self._outage()
            if not self._dirty and not self._resync:
                self._idle.set()

    async def _attempt(self, write: Callable[[], Awaitable[None]]) -> bool:
        pause = RETRY_FIRST_PAUSE
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                await write()
            except StoreError as exc:
                self.counters.failures += 1
                log.warning("store write failed", attempt=attempt, of=RETRY_ATTEMPTS,
                            reason=str(exc))
                if attempt < RETRY_ATTEMPTS:
                    await asyncio.sleep(pause)
                    pause *= 2
                continue
            return True
        return False

    async def _outage(self) -> None:
        """Degraded until the store answers again, then a full re-sync."""
        self._dirty.clear()
        self._resync = True
        self.degraded = "unreachable: writes paused, calls unaffected"
        log.error("store unreachable: degraded (calls go on; state re-synced on recovery)")
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await self.store.ping()
            except StoreError:
                continue
            if await self._full_sync():
                return

    async def _full_sync(self) -> bool:
        if self.before_resync is not None and not await self.before_resync():
            return False
        records = {c: r for c in list(self._live()) if (r := self._collect(c)) is not None}
        self._dirty.clear()
        if not await self._attempt(functools.partial(self.store.replace, self.node, records)):
            self.degraded = self.degraded or "unreachable: writes paused, calls unaffected"
            return False
        self.counters.resyncs += 1
        self.counters.writes += len(records)
        self._resync = False
        if self.degraded:
            log.info("store reachable again: re-synced", calls=len(records))
        self.degraded = ""
        return True
