"""A node's side of the shared store: what it writes for each call, and its calls back at start.

``NodeState.open`` (from ``toneguard serve`` when ``[store] url`` is set) loads the records
this node owns, adopts each call (same ports, same keys, masking configured before the parties
are linked), resumes open payments (masking on before capture), then hooks the call registry
and the payment manager so every later change is written by :class:`proxy.store.sync.StateSync`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path

import structlog

from proxy.control.calls import CallRegistry
from proxy.media.dtls import DtlsError, NodeCertificate
from proxy.media.types import MediaError
from proxy.securepay.manager import PaymentError, PaymentManager
from proxy.securepay.states import PaymentStatus
from proxy.store.base import StateStore, StoreError
from proxy.store.events import EventFanout
from proxy.store.memory import MemoryStore
from proxy.store.records import CallRecord, PaymentRecord, RecordError, decode, encode
from proxy.store.redis_store import RedisStore
from proxy.store.sealing import Sealer, SealError
from proxy.store.sync import StateSync

log = structlog.get_logger("toneguard.store")
CERTIFICATE_CONTEXT = "toneguard:dtls-certificate"  # the sealed private key's associated data


class StoreConfigError(ValueError):
    """The store cannot be set up as configured (names the setting)."""


def open_store(url: str) -> StateStore:
    if not url or url == "memory://":
        return MemoryStore()
    return RedisStore(url)


class NodeState:
    def __init__(self, store: StateStore, sealer: Sealer, node: str, registry: CallRegistry,
                 payments: PaymentManager, *, limit: int = 10_000) -> None:
        self.store = store
        self.node = node
        self._sealer = sealer
        self._registry = registry
        self._payments = payments
        self._last_sid: dict[str, str] = {}  # call id → its latest payment (kept once ended)
        self.sync = StateSync(store, node, self.collect, lambda: list(registry.calls),
                              limit=limit)
        self.events: EventFanout | None = None
        self.restored: list[str] = []
        self.restore_seconds = 0.0
        self._media_ready: Awaitable[None] | None = None

    @classmethod
    async def open(cls, *, url: str, key_file: str, node: str, registry: CallRegistry,
                   payments: PaymentManager, limit: int = 10_000,
                   store: StateStore | None = None,
                   media_ready: Awaitable[None] | None = None,
                   shared_certificate: bool = False) -> NodeState:
        """Restore this node's calls and start writing. ``media_ready``: the media engine's
        start, still under way (its worker processes starting): the records are read and
        decoded meanwhile, and awaited before the first port is bound. ``shared_certificate``:
        no DTLS certificate is configured; the node set's is read from the store (this node's
        stored there if it is the first)."""
        try:
            sealer = Sealer.from_file(Path(key_file))
        except OSError as exc:
            raise StoreConfigError(f"store.key_file: cannot read {key_file}: "
                                   f"{exc.strerror}") from exc
        except SealError as exc:
            raise StoreConfigError(f"store.key_file: {exc}") from exc
        state = cls(store or open_store(url), sealer, node, registry, payments, limit=limit)
        state._media_ready = media_ready
        if shared_certificate:
            await state._share_certificate()
        await state.restore()
        registry.on_state = state.sync.mark
        payments.on_state = state.sync.mark
        state.sync.start()
        if isinstance(state.store, RedisStore):  # several nodes: events fan out
            state.events = EventFanout(state.store.client, state.store.url, node,
                                        payments.bus)
            state.events.start()
        return state

    async def _share_certificate(self) -> None:
        """One DTLS certificate for the node set, kept in the store with its private key
        sealed: a restarted node presents the fingerprint its WebRTC legs were offered (a
        browser refuses a changed one in a re-offer). Store trouble: this start's own."""
        ours = self._registry.certificate
        blob = json.dumps({"certificate": ours.certificate.decode(),
                           "private_key": self._sealer.seal(ours.private_key,
                                                            CERTIFICATE_CONTEXT)}).encode()
        try:
            stored = json.loads(await self.store.shared("dtls-certificate", blob))
            certificate = NodeCertificate.load(
                stored["certificate"].encode(),
                self._sealer.open(stored["private_key"], CERTIFICATE_CONTEXT))
        except (StoreError, SealError, DtlsError, ValueError, KeyError, TypeError) as exc:
            log.warning("DTLS certificate not shared through the store: this start's own "
                        "(a restart changes its fingerprint)", reason=f"{type(exc).__name__}")
            return
        self._registry.use_certificate(certificate)
        log.info("DTLS certificate of the node set", sha256=certificate.fingerprint("sha-256"))

    def collect(self, call_id: str) -> bytes | None:
        """The call's record as of now (None once the call is gone: its record is deleted)."""
        call = self._registry.calls.get(call_id)
        if call is None:
            self._last_sid.pop(call_id, None)
            return None
        info = self._payments.calls.get(call_id)
        active = self._payments._active.get(call_id)  # one dict read, no digits
        if active is not None:
            self._last_sid[call_id] = active
        sid = self._last_sid.get(call_id)
        session = self._payments.sessions.get(sid) if sid else None
        record = CallRecord(call, self.node, info.agent_id if info else "",
                            [PaymentRecord.of(session)] if session is not None else [])
        return encode(record, self._sealer)

    async def restore(self) -> bool:
        """Adopt every call the store says this node owns. A call that cannot be restored
        (unreadable, a port taken) is logged and its record deleted. A store that cannot be
        read leaves the node degraded (calls it takes now work as usual) and this is tried
        again when the store answers, before the re-sync (which would otherwise delete the
        records of the calls not restored). False: the store could not be read."""
        started = time.monotonic()
        try:
            records = await self.store.load(self.node)
        except StoreError as exc:
            log.error("store unreadable at start: calls not restored yet", reason=str(exc))
            if self.sync.before_resync is None:
                self.sync.before_resync = self.restore
                self.sync.lost("unreadable at start")
            return False
        self.sync.before_resync = None
        decoded: list[CallRecord] = []
        failed = 0
        for call_id, data in records.items():
            if call_id in self._registry.calls:
                continue  # a late restore: Kamailio re-offered it meanwhile; ours is newer
            try:
                decoded.append(decode(data, self._sealer))
            except (RecordError, SealError) as exc:
                log.error("call not restored", call_id=call_id, reason=str(exc))
                self.sync.mark(call_id)  # not in the registry: its record is deleted
                failed += 1
        loaded = time.monotonic()
        if self._media_ready is not None:  # decoded while the media workers were starting
            await self._media_ready
        media_ready = time.monotonic()

        async def adopt(record: CallRecord) -> bool:
            call_id = record.call.call_id
            if call_id in self._registry.calls:
                return True  # re-offered while the media engine was starting
            try:
                await self._registry.adopt(record.call)
            except MediaError as exc:
                log.error("call not restored", call_id=call_id, reason=str(exc))
                self.sync.mark(call_id)
                return False
            except Exception as exc:  # one bad record must not keep the others down
                log.error("call not restored", call_id=call_id, reason=type(exc).__name__)
                self.sync.mark(call_id)
                return False
            self._restore_payments(record)
            self.restored.append(call_id)
            return True

        # All at once: with media worker processes each call is one round trip, and the
        # workers answer them in parallel instead of one after another.
        done = await asyncio.gather(*(adopt(r) for r in decoded))
        failed += done.count(False)
        self.restore_seconds = time.monotonic() - started
        # ms: all of it; then its parts: read and decode, waiting for the media engine's
        # start (its worker processes), and the calls' adoption (bind, configure, link).
        log.info("calls restored from the store", calls=len(self.restored), failed=failed,
                 ms=round(self.restore_seconds * 1000, 1),
                 load_ms=round((loaded - started) * 1000, 1),
                 media_wait_ms=round((media_ready - loaded) * 1000, 1),
                 adopt_ms=round((time.monotonic() - media_ready) * 1000, 1))
        return True

    def _restore_payments(self, record: CallRecord) -> None:
        call_id = record.call.call_id
        if record.agent_id and self._payments.owner(call_id) != record.agent_id:
            self._payments.assign(call_id, record.agent_id, "restart")
        for p in record.payments:
            if PaymentStatus(p.status).terminal:
                continue
            try:
                self._payments.resume(call_id, p.sid, p.agent_id, p.fields)
            except PaymentError as exc:
                log.error("payment not resumed", call_id=call_id, session_id=p.sid,
                          reason=type(exc).__name__)

    async def announce(self, api_url: str) -> None:
        """Where this node's API answers, for the other nodes' forwarding (best effort)."""
        try:
            await self.store.announce(self.node, api_url)
        except StoreError as exc:
            log.warning("could not announce this node's API", reason=str(exc))

    def problems(self) -> list[str]:
        return self.sync.problems()

    async def stop(self) -> None:
        self._registry.on_state = None
        self._payments.on_state = None
        if self.events is not None:
            await self.events.stop()
        await self.sync.stop()
