"""RedisStore against a real redis-server; StateSync's bounded retries, degraded state and
re-sync when that server stops and comes back (empty)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.control.calls import CallRegistry
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine
from proxy.securepay.manager import PaymentManager
from proxy.store import sync
from proxy.store.base import StoreError
from proxy.store.node import NodeState
from proxy.store.redis_store import RedisStore, call_key
from tests.proxy.store.conftest import RedisServer


async def test_write_load_owners_and_replace(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    try:
        await store.write("a", {"c1": b"one", "c2": b"two"})
        await store.write("b", {"c3": b"three"})
        assert await store.load("a") == {"c1": b"one", "c2": b"two"}
        assert await store.owners() == {"c1": "a", "c2": "a", "c3": "b"}
        await store.replace("a", {"c2": b"TWO"})  # c1 ended while we could not write
        assert await store.load("a") == {"c2": b"TWO"}
        assert await store.owners() == {"c2": "a", "c3": "b"}
        await store.write("a", {"c2": None})
        assert await store.load("a") == {} and store.ops > 0
    finally:
        await store.close()


async def test_a_stopped_server_is_a_store_error_quickly(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    await redis_server.stop()
    try:
        async with asyncio.timeout(3):  # refused, not a hang
            with pytest.raises(StoreError, match="redis"):
                await store.write("a", {"c1": b"x"})
    finally:
        await store.close()


async def _offer(registry: CallRegistry, call_id: str) -> None:
    await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "ft",
                           "sdp": audio_sdp("127.0.0.1", 40000)})


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_outage_degrades_with_bounded_retries_then_resyncs(
        redis_server: RedisServer, store_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "RETRY_FIRST_PAUSE", 0.01)
    monkeypatch.setattr(sync, "RECHECK_SECONDS", 0.1)
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    payments = PaymentManager(None)
    state = await NodeState.open(url=redis_server.url, key_file=str(store_key), node="n1",
                                 registry=registry, payments=payments)
    client = redis_server.client()
    try:
        await _offer(registry, "before")
        assert await state.sync.flush()
        assert await client.exists(call_key("before"))

        await redis_server.stop()
        await _offer(registry, "during")  # the call works; its write cannot
        await _until(lambda: bool(state.sync.degraded))
        assert state.problems() and state.problems()[0].startswith("degraded")
        assert state.sync.counters.failures == sync.RETRY_ATTEMPTS  # bounded
        await registry.handle({"command": "delete", "call-id": "before"})
        assert set(registry.calls) == {"during"}

        await redis_server.start()  # empty: nothing persisted
        await client.aclose()
        await _until(lambda: not state.sync.degraded)
        assert state.sync.counters.resyncs >= 1
        client = redis_server.client()
        assert await client.exists(call_key("during"))
        assert not await client.exists(call_key("before"))
        assert await state.store.owners() == {"during": "n1"}
    finally:
        await client.aclose()
        await state.stop()
