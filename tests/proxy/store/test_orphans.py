"""Orphaned records: a node dies, never comes back and no node takes its calls over. Its calls
are listed as "owner down" by the other nodes' APIs, then, once its heartbeat has been gone for
``store.orphan_seconds``, any live node deletes their records, owner entries, its call set and
its API entry; the live nodes' own calls are untouched (real redis-server, real nodes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp
from proxy.store.orphans import known_nodes, sweep_node
from proxy.store.redis_store import DOWN, MEDIA, NODES, OWNERS, RedisStore, call_key, node_key
from proxy.store.takeover import Heartbeat, NodeMedia, alive_key, claim, claim_key, moved_key
from tests.proxy.store.conftest import RedisServer, dump_all
from tests.proxy.store.nodes import NodeProcess, cluster, stored
from tests.proxy.store.test_restart import _no_card_data, _until
from tests.proxy.store.test_takeover import HEARTBEAT, TTL, _logged

ORPHAN = 4.0  # seconds down before the records go (above the test's 2 s TTL)

pytestmark = [pytest.mark.peer]


# --- the sweep, against a real redis-server ----------------------------------------------------

async def test_a_dead_nodes_records_go_only_after_the_grace_and_a_live_nodes_never(
        redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    client = redis_server.client()
    try:
        await store.write("dead", {"d1": b"record d1", "d2": b"record d2"})
        await store.write("live", {"l1": b"record l1"})
        for node in ("dead", "live"):
            await store.announce(node, f"http://{node}")
            await client.hset(MEDIA, node, "{}")
        await client.set(alive_key("live"), "x", px=60_000)
        assert await known_nodes(client) == {"dead", "live"}

        first = await sweep_node(client, "dead", grace=0.5)
        assert (first.outcome, first.down_seconds) == ("down", 0.0)
        assert await client.exists(down_key := f"{DOWN}dead")
        again = await sweep_node(client, "dead", grace=0.5)
        assert again.outcome == "down" and again.reaped == []
        assert set(await store.load("dead")) == {"d1", "d2"}  # nothing gone within the grace
        await asyncio.sleep(0.6)  # the grace is Redis's clock: wait it out
        reaped = await sweep_node(client, "dead", grace=0.5)
        assert reaped.outcome == "reaped" and sorted(reaped.reaped) == ["d1", "d2"]
        assert reaped.down_seconds >= 0.5
        assert not await client.exists(call_key("d1"), call_key("d2"), node_key("dead"),
                                       down_key)
        assert await store.owners() == {"l1": "live"}
        assert await store.nodes() == {"live": "http://live"}
        assert await client.hkeys(MEDIA) == [b"live"]
        assert await known_nodes(client) == {"live"}

        assert (await sweep_node(client, "live", grace=0.0)).outcome == "alive"
        assert await store.load("live") == {"l1": b"record l1"}
    finally:
        await client.aclose()
        await store.close()


async def test_a_node_back_within_the_grace_clears_its_mark_and_keeps_its_calls(
        redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    client = redis_server.client()
    media = NodeMedia("127.0.0.2", "127.0.0.2", 30000, 30100)
    try:
        await store.write("node-a", {"a1": b"r1"})
        assert (await sweep_node(client, "node-a", grace=0.3)).outcome == "down"
        await asyncio.sleep(0.4)
        back = Heartbeat(store.client, "node-a", media, interval=0.1, ttl=1.0)
        await back.start()  # its first beat clears the mark: a later death counts anew
        assert not await client.exists(f"{DOWN}node-a")
        assert (await sweep_node(client, "node-a", grace=0.3)).outcome == "alive"
        await back.stop()
        await client.delete(alive_key("node-a"))  # dead again: the grace starts over
        assert (await sweep_node(client, "node-a", grace=0.3)).outcome == "down"
        assert await store.load("node-a") == {"a1": b"r1"}
    finally:
        await client.aclose()
        await store.close()


async def test_calls_a_taker_moved_off_a_dead_node_stay_and_its_relay_list_is_pruned(
        redis_server: RedisServer) -> None:
    """node-b took node-a's calls over and node-a never came back: the sweep leaves the taken
    calls to node-b; the list of moved calls (what node-a would relay) keeps those still
    owned, and with the last one gone its claim and media entry go too."""
    store = RedisStore(redis_server.url)
    client = redis_server.client()
    try:
        await store.write("node-a", {"t1": b"r1", "t2": b"r2"})
        await client.hset(MEDIA, "node-a", "{}")
        assert (await claim(client, "node-a", "node-b")).outcome == "won"
        await store.write("node-b", {"t2": None})  # one adopted call ended on node-b
        await sweep_node(client, "node-a", grace=0.2)
        await asyncio.sleep(0.3)
        swept = await sweep_node(client, "node-a", grace=0.2)
        assert swept.outcome == "reaped" and swept.reaped == []
        assert await store.owners() == {"t1": "node-b"}
        assert await client.get(call_key("t1")) == b"r1"
        assert await client.smembers(moved_key("node-a")) == {b"t1"}
        assert await client.hexists(MEDIA, "node-a")  # still known: pruned again later
        await store.write("node-b", {"t1": None})
        await sweep_node(client, "node-a", grace=0.2)
        await asyncio.sleep(0.3)
        await sweep_node(client, "node-a", grace=0.2)
        assert not await client.exists(moved_key("node-a"), claim_key("node-a"))
        assert await known_nodes(client) == set()
    finally:
        await client.aclose()
        await store.close()


# --- two real nodes, one killed for good ---------------------------------------------------

async def test_a_node_killed_for_good_has_its_calls_listed_owner_down_then_reaped(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    low, high = media_ports
    mid = low + (high - low) // 2 // 2 * 2
    settings = (f"heartbeat_seconds = {HEARTBEAT}\nheartbeat_ttl_seconds = {TTL}\n"
                f"orphan_seconds = {ORPHAN}\n")
    async with cluster(tmp_path, store_key) as c:
        a = c.node("node-a", store_url=redis_server.url, media_ports=(low, mid - 1),
                   media_address="127.0.0.2", extra=settings)
        b = c.node("node-b", store_url=redis_server.url, media_ports=(mid, high),
                   media_address="127.0.0.3", extra=settings)  # no takeover configured
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.ready(), b.ready())
        caller, agent = await RtpPeer(seed=81).start(), await RtpPeer(seed=82).start()
        alice = {"Authorization": f"Bearer {c.keys['alice']}"}
        supervisor = {"Authorization": f"Bearer {c.keys['supervisor']}"}
        redis = redis_server.client()
        try:
            for node, call_id in ((a, "orphan-1"), (b, "live-1")):
                await _call(node, call_id, caller.port, agent.port)
            async with httpx.AsyncClient(base_url=a.api, timeout=5) as http:
                r = await http.post("/v1/calls/orphan-1/payments", json={}, headers=alice)
                assert r.status_code == 201, r.text
                sid = r.json()["sid"]
            await stored(redis_server, "orphan-1", lambda r: bool(r["payments"]))
            await stored(redis_server, "live-1")

            async def beating() -> bool:  # regular beats (the start's first beat lives 15 s)
                return 0 < await redis.pttl(alive_key("node-a")) <= TTL * 1000
            await _until(beating, 10, "node-a's regular heartbeat")
            killed = asyncio.get_running_loop().time()
            await a.kill9()  # and never started again

            async with httpx.AsyncClient(base_url=b.api, timeout=5) as http:
                async def listed_down() -> dict:
                    calls = (await http.get("/v1/calls", headers=alice)).json()
                    return next((x for x in calls if x["call_id"] == "orphan-1"
                                 and x.get("owner_down")), {})
                entry = await _until(listed_down, 15, "node-b lists node-a's call as down")
                assert entry["node"] == "node-a" and entry["agent_id"] == "alice"
                assert entry["last_payment_sid"] == sid and entry["payment_sid"] == ""
                calls = (await http.get("/v1/calls", headers=alice)).json()
                live = [x for x in calls if x["call_id"] == "live-1"]
                assert live and not live[0].get("owner_down")  # node-b's own, as before
                # Records are still there: node-a could come back within the grace.
                assert await redis.exists(call_key("orphan-1"))

                async def reaped() -> bool:
                    return not await redis.exists(call_key("orphan-1"), node_key("node-a"))
                await _until(reaped, 30, "node-a's records reaped")
                gone_after = asyncio.get_running_loop().time() - killed
                print(f"\nnode-a's records reaped {gone_after:.1f} s after its kill -9 "
                      f"(TTL {TTL} s + orphan_seconds {ORPHAN} s + up to two sweeps)")
                assert gone_after >= ORPHAN + TTL - 0.5  # not before its grace
                assert await redis.hget(OWNERS, "orphan-1") is None
                assert not await redis.hexists(NODES, "node-a")
                assert await redis.hget(OWNERS, "live-1") == b"node-b"
                assert await redis.exists(call_key("live-1"))
                assert "live-1" in await _list(b)
                calls = (await http.get("/v1/calls", headers=supervisor)).json()
                assert "orphan-1" not in {x["call_id"] for x in calls}
                assert "live-1" in {x["call_id"] for x in calls}
            logged = _logged(b, "reaped the records of a node that did not come back")
            assert logged["node"] == "node-a" and logged["calls"] == 1
            dump = await dump_all(redis_server)
            assert not [k for k in dump if b"orphan-1" in k or b":node-a" in k], list(dump)
            assert _no_card_data(dump) == []
        finally:
            caller.close()
            agent.close()
            await redis.aclose()


async def _call(node: NodeProcess, call_id: str, caller_port: int, agent_port: int) -> None:
    ng = await NgClient.connect(node.ng)
    try:
        offer = await ng.request({
            "command": "offer", "call-id": call_id, "from-tag": "ft", "label": "customer",
            "metadata": "agent=alice", "sdp": audio_sdp("127.0.0.1", caller_port)})
        assert offer["result"] == "ok", offer
        answer = await ng.request({
            "command": "answer", "call-id": call_id, "from-tag": "ft", "to-tag": "tt",
            "label": "agent", "sdp": audio_sdp("127.0.0.1", agent_port)})
        assert answer["result"] == "ok", answer
    finally:
        ng.close()


async def _list(node: NodeProcess) -> set[str]:
    ng = await NgClient.connect(node.ng)
    try:
        return set((await ng.request({"command": "list"}))["calls"])
    finally:
        ng.close()


