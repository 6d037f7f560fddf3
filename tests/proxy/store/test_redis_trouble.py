"""redis-server stopped during calls: calls keep relaying and masking, a new call works,
/readyz and /metrics say degraded; redis-server back (empty) → the node re-syncs its calls."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.phone import RtpPeer
from proxy.store.redis_store import call_key
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import Talker, call_on, cluster, hang_up, heard_masked
from tests.proxy.store.test_restart import _until

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]


async def test_redis_down_calls_go_on_degraded_then_resynced(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-a", store_url=redis_server.url, media_ports=media_ports)
        await node.start()
        assert (await node.ready())["status"] == "ready"
        phones = [await RtpPeer(seed=s).start() for s in (1, 2, 3, 4)]
        talkers: list[Talker] = []
        supervisor = {"Authorization": f"Bearer {c.keys['supervisor']}"}
        try:
            async with await NgClient.connect(node.ng) as ng:
                talkers.append((await call_on(ng, "call-1", phones[0], phones[1])).talker)
            await phones[1].wait_for(10)

            await redis_server.stop()
            async with httpx.AsyncClient(base_url=node.api, timeout=5) as http:
                async def degraded() -> dict:
                    r = await http.get("/readyz")
                    return r.json() if r.json()["status"] == "degraded" else {}
                ready = await _until(degraded, 15, "/readyz says degraded")
                assert ready["problems"][0].startswith("degraded: store")
                metrics = (await http.get("/metrics", headers=supervisor)).text
                assert "toneguard_store_degraded 1.0" in metrics
                assert "toneguard_store_failures_total 4.0" in metrics  # bounded retries

                # A new call works while Redis is down, and relays.
                async with await NgClient.connect(node.ng) as ng:
                    talkers.append((await call_on(ng, "call-2", phones[2], phones[3])).talker)
                await phones[3].wait_for(10)

                # The first call still relays and masks.
                loop = asyncio.get_running_loop()
                keyed_from = loop.time()
                await talkers[0].say(card_audio("4111111111111111"))
                await heard_masked(phones[1], talkers[0].sent_since(keyed_from - 0.01),
                                   keyed_from)

                # Redis back, empty: the node writes both calls again.
                await redis_server.start()

                async def ready_again() -> bool:
                    return (await http.get("/readyz")).json()["status"] == "ready"
                await _until(ready_again, 15, "/readyz ready again")
                metrics = (await http.get("/metrics", headers=supervisor)).text
                assert "toneguard_store_degraded 0.0" in metrics
                assert "toneguard_store_resyncs_total 1.0" in metrics
            client = redis_server.client()
            try:
                assert await client.exists(call_key("call-1"), call_key("call-2")) == 2
                assert await client.hgetall("toneguard:calls") == {
                    b"call-1": b"node-a", b"call-2": b"node-a"}
            finally:
                await client.aclose()
        finally:
            await hang_up(talkers, *phones)
