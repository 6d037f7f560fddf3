"""Same-address takeover: node-b adopts the calls of node-a after a kill -9 (node-a's heartbeat
expires), on node-a's own media address and ports; media flows again through node-b, masked;
the payment resumes there; ng and the API reach the call on node-b; node-a restarted leaves
the call to node-b. Two takers racing for one dead node: exactly one wins."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.phone import RtpPeer
from proxy.store.redis_store import OWNERS, RedisStore, call_key, node_key
from proxy.store.takeover import Heartbeat, NodeMedia, alive_key, claim, claim_key
from tests.conftest import pick_udp_port
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer, dump_all
from tests.proxy.store.nodes import (
    Cluster,
    NodeProcess,
    Talker,
    call_on,
    cluster,
    hang_up,
    heard_masked,
    key_the_rest,
    reoffer,
)
from tests.proxy.store.test_many_nodes import _calls, _kamailio, _uac
from tests.proxy.store.test_restart import _no_card_data, _until

PAN, EXPIRY, CODE = "4111111111111111", "1230", "737"
# Seconds: short, so that the test's gap is short; the TTL still above the event-loop stalls
# of a node on this shared, loaded machine (a node taken for dead lets its calls go).
HEARTBEAT, TTL = 0.25, 2.0

pytestmark = [pytest.mark.peer]


# --- the claim, against a real redis-server --------------------------------------------------

async def test_two_takers_racing_for_a_dead_node_exactly_one_adopts_its_calls(
        redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    clients = [redis_server.client(), redis_server.client()]
    try:
        for round_ in range(20):
            dead = f"dead-{round_}"
            calls = {f"{dead}-call-{i}": f"record {i}".encode() for i in range(5)}
            await store.write(dead, calls)
            results = await asyncio.gather(claim(clients[0], dead, "node-b"),
                                           claim(clients[1], dead, "node-c"))
            won = [r for r in results if r.outcome == "won"]
            assert len(won) == 1, results
            winner = won[0].holder
            assert won[0].records == calls
            lost = next(r for r in results if r is not won[0])
            assert (lost.outcome, lost.holder) == ("taken", winner)
            owners = await store.owners()
            assert {c: owners[c] for c in calls} == dict.fromkeys(calls, winner)
            assert set(await store.load(winner)) >= set(calls)
            assert await store.load(dead) == {}
    finally:
        for client in clients:
            await client.aclose()
        await store.close()


async def test_a_node_whose_heartbeat_is_alive_is_not_taken_over_and_clears_a_claim_when_back(
        redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    client = redis_server.client()
    media = NodeMedia("127.0.0.2", "127.0.0.2", 30000, 30100)
    try:
        await store.write("node-a", {"call-1": b"r1"})
        beat = Heartbeat(store.client, "node-a", media, interval=0.1, ttl=1.0)
        await beat.start()
        beat.begin()
        assert (await claim(client, "node-a", "node-b")).outcome == "alive"
        assert await store.load("node-a") == {"call-1": b"r1"}  # nothing moved
        await beat.stop()
        await client.delete(alive_key("node-a"))  # as if its TTL ran out
        result = await claim(client, "node-a", "node-b")
        assert result.outcome == "won" and result.records == {"call-1": b"r1"}
        assert await client.get(claim_key("node-a")) == b"node-b"
        # node-a back: its first beat stops further claims, clears this one, says who has them.
        back = Heartbeat(store.client, "node-a", media, interval=0.1, ttl=1.0)
        await back.start()
        back.begin()
        assert back.taken_by == "node-b"
        assert await client.get(claim_key("node-a")) is None
        assert await store.load("node-a") == {}  # it restores nothing: node-b has the call
        assert (await claim(client, "node-a", "node-c")).outcome == "alive"
        await back.stop()
        await client.delete(alive_key("node-a"))
        # Dead with no calls: nothing to claim, and no claim left for its next start to report.
        assert (await claim(client, "node-a", "node-c")).outcome == "empty"
        assert await client.get(claim_key("node-a")) is None
    finally:
        await client.aclose()
        await store.close()


async def test_a_node_taken_for_dead_cannot_write_its_calls_back_and_lets_them_go(
        redis_server: RedisServer) -> None:
    """node-a stalls past its TTL (its beats come every 2 s, the TTL is 0.3 s): node-b claims
    its calls; node-a's writes and deletes of them are skipped; at its next beat node-a sees
    the lapse and lets go of exactly the calls node-b owns."""
    store = RedisStore(redis_server.url)
    client = redis_server.client()
    let_go: list[str] = []

    async def forget(call_id: str) -> None:
        let_go.append(call_id)
        await store.write("node-a", {call_id: None})  # what the registry's delete writes

    beat = Heartbeat(store.client, "node-a", NodeMedia("127.0.0.2", "127.0.0.2", 30000, 30100),
                     interval=2.0, ttl=0.3, calls=lambda: ["c1", "c2", "c3"], forget=forget)
    try:
        await store.write("node-a", {"c1": b"a1", "c2": b"a2"})
        await beat.start()
        await client.pexpire(alive_key("node-a"), 300)  # past the start's grace: stalled
        beat.begin()
        await _until(lambda: _not(client.exists(alive_key("node-a"))), 5, "node-a expired")
        await client.set(alive_key("node-b"), b"b", px=30_000)  # node-b is alive
        result = await claim(client, "node-a", "node-b")
        assert result.outcome == "won" and set(result.records or {}) == {"c1", "c2"}
        await store.write("node-a", {"c3": b"a3"})  # a call node-a took meanwhile: its own
        assert await store.write_fenced("node-a", {"c1": b"a1-changed"}) == ["c1"]
        assert await store.write_fenced("node-a", {"c2": None}) == ["c2"]
        assert await client.get(call_key("c1")) == b"a1"
        assert await client.get(call_key("c2")) == b"a2"  # not deleted
        await _until(lambda: _true(beat.lapses == 1), 5, "node-a's next beat sees the lapse")
        assert sorted(let_go) == ["c1", "c2"]  # c3 is still node-a's
        owners = await store.owners()
        assert owners == {"c1": "node-b", "c2": "node-b", "c3": "node-a"}
        assert await client.get(call_key("c2")) == b"a2"  # its let-go delete was skipped too
        assert await client.get(claim_key("node-a")) is None  # a later death: claimable
        # A dead owner's call can be written by another node (a re-offer sent elsewhere).
        await client.delete(alive_key("node-b"))
        assert await store.write_fenced("node-c", {"c1": b"c1"}) == []
        assert (await store.owners())["c1"] == "node-c"
    finally:
        await beat.stop()
        await client.aclose()
        await store.close()


async def _not(value) -> bool:  # type: ignore[no-untyped-def]
    return not await value


# --- two real nodes ---------------------------------------------------------------------------

async def _two_nodes(c: Cluster, redis_server: RedisServer, media_ports: tuple[int, int]
                     ) -> tuple[NodeProcess, NodeProcess]:
    """node-a, and node-b that takes node-a's calls over, each on its own media address and
    half of the port range, both started and ready."""
    low, high = media_ports
    mid = low + (high - low) // 2 // 2 * 2
    beat = f"heartbeat_seconds = {HEARTBEAT}\nheartbeat_ttl_seconds = {TTL}\n"
    a = c.node("node-a", store_url=redis_server.url, media_ports=(low, mid - 1),
               media_address="127.0.0.2", extra=beat)
    b = c.node("node-b", store_url=redis_server.url, media_ports=(mid, high),
               media_address="127.0.0.3", extra=beat + 'takeover = ["node-a"]\n')
    await asyncio.gather(a.start(), b.start())
    await asyncio.gather(a.ready(), b.ready())
    return a, b


@pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")
async def test_kill_9_node_a_mid_payment_node_b_takes_the_call_over_on_the_same_address(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    async with cluster(tmp_path, store_key) as c:
        a, b = await _two_nodes(c, redis_server, media_ports)
        caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
        ng = await NgClient.connect(a.ng)
        talker: Talker | None = None
        alice = {"Authorization": f"Bearer {c.keys['alice']}"}
        redis = redis_server.client()
        try:
            call = await call_on(ng, "takeover-1", caller, agent,
                                 offer={"metadata": "agent=alice"})
            talker = call.talker
            assert call.caller_dest[0] == "127.0.0.2" and call.agent_dest[0] == "127.0.0.2"
            ng.close()
            await agent.wait_for(10)

            async with httpx.AsyncClient(base_url=a.api, timeout=5) as http:
                r = await http.post("/v1/calls/takeover-1/payments", json={}, headers=alice)
                assert r.status_code == 201, r.text
                sid = r.json()["sid"]
            await talker.say(card_audio(PAN[:6]))  # part of the card, then the crash

            async def stored() -> bool:  # node-a's writer has written the open payment
                raw = await redis.get(call_key("takeover-1"))
                return bool(raw) and any(p["sid"] == sid for p in json.loads(raw)["payments"])
            await _until(stored, 10, "the payment is in node-a's record")

            loop = asyncio.get_running_loop()
            killed = loop.time()
            await a.kill9()
            await _until(lambda: _true(any(t > killed + 0.05 for t, _ in
                                           agent.received.packets)),
                         20, "media flows again after the takeover")
            first_after = min(t for t, _ in agent.received.packets if t > killed + 0.05)
            last_before = max(t for t, _ in agent.received.packets if t <= killed)
            adopted_ms = _logged(b, "took over a dead node's calls")["ms"]
            print(f"\nmedia gap across kill -9 of node-a + takeover by node-b: "
                  f"{first_after - last_before:.2f} s (heartbeat every {HEARTBEAT} s, "
                  f"dead after {TTL} s; node-b's claim + adoption {adopted_ms} ms)")

            assert await redis.hget(OWNERS, "takeover-1") == b"node-b"
            assert await redis.smembers(node_key("node-a")) == set()
            ng = await NgClient.connect(b.ng)  # Kamailio's next command goes to node-b
            query = await ng.request({"command": "query", "call-id": "takeover-1"})
            assert set(query["tags"]) == {"ft", "tt"}
            # Statistics (and metrics, readiness) sum the adopted calls' engine with node-b's.
            stats = await ng.request({"command": "statistics"})
            assert stats["result"] == "ok", stats
            # node-b answers on node-a's ng address too (where Kamailio keeps asking).
            async with await NgClient.connect(a.ng) as ng_a:
                async def answered() -> dict:
                    try:
                        return await ng_a.request({"command": "query", "call-id": "takeover-1"})
                    except TimeoutError:
                        return {}
                assert set((await _until(answered, 15, "node-a's ng address answers"))[
                    "tags"]) == {"ft", "tt"}
            # A re-INVITE's offer keeps the call on node-a's address and ports.
            assert await reoffer(ng, "takeover-1", caller) == call.agent_dest

            async with httpx.AsyncClient(base_url=b.api, timeout=5) as http:
                p = (await http.get(f"/v1/calls/takeover-1/payments/{sid}",
                                    headers=alice)).json()
                assert p["status"] == "capturing" and p["error"] == "node-restarted", p
                assert p["fields"]["payment-card-number"] == ""  # nothing before the crash
                keyed_from = loop.time()
                payment = await key_the_rest(talker, http, "takeover-1", p, {
                    "payment-card-number": PAN, "expiration-date": EXPIRY, "security-code": CODE,
                }, alice)
            assert payment["status"] == "complete", payment
            assert payment["token"] and payment["last4"] == "1111"

            # The agent heard the caller through node-b, and no digit in it.
            await heard_masked(agent, talker.sent_since(keyed_from - 0.01), keyed_from)

            # node-a comes back: it leaves the call to node-b, whose media goes on; node-a's
            # API forwards an action on the call to node-b (the owner in Redis now).
            await a.start()
            await a.ready()
            back = loop.time()
            assert "takeover-1" not in await _calls(a)
            assert _logged(a, "this node's calls were taken over")["taken_by"] == "node-b"
            await _until(lambda: _true(sum(1 for t, _ in agent.received.packets
                                           if t > back) > 10), 10, "media after node-a is back")
            async with httpx.AsyncClient(base_url=a.api, timeout=5) as http:
                r = await http.get(f"/v1/calls/takeover-1/payments/{sid}", headers=alice)
                assert r.status_code == 200 and r.json()["status"] == "complete", r.text

            # Kamailio's delete for the call reaches node-b, which owns it.
            deleted = await ng.request({"command": "delete",
                                        "call-id": "takeover-1", "from-tag": "ft"})
            assert deleted["result"] == "ok"
            assert "takeover-1" not in await _calls(b)
            await _until(lambda: _gone(redis), 5, "the record deleted")

            dump = await dump_all(redis_server)
            assert _no_card_data(dump) == []
        finally:
            await hang_up([talker], ng, caller, agent)
            await redis.aclose()
        for node in (a, b):
            await node.stop()
            log = node.log.read_text(errors="replace")
            assert PAN not in log and PAN[:6] not in log


async def _gone(redis) -> bool:  # type: ignore[no-untyped-def]
    return await redis.hget(OWNERS, "takeover-1") is None and not await redis.exists(
        call_key("takeover-1"))


async def _true(value: bool) -> bool:
    return value


def _events(node: NodeProcess, event: str) -> list[dict]:
    """Every JSON log line of ``node`` whose event is exactly ``event``."""
    out = []
    for line in node.log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out


def _logged(node: NodeProcess, event: str) -> dict:
    """The last JSON log line of ``node`` whose event starts with ``event``."""
    found: dict = {}
    for line in node.log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("event", "")).startswith(event):
            found = entry
    assert found, f"{node.name} never logged {event!r}"
    return found


# --- through Kamailio --------------------------------------------------------------------------

@pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                    reason="needs kamailio and sip-tester (sipp)")
async def test_kamailio_deletes_reach_the_taker_after_node_a_is_killed(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    """sipp calls through Kamailio's rtpengine module with a set of both nodes (node-a
    weighted 10:1, so that calls land on it); kill -9 node-a mid-call; node-b adopts them and
    answers on node-a's ng address, where the module keeps sending those calls' commands;
    node-a restarted takes its address back and relays those commands to node-b: each BYE's
    delete reaches node-b, which ends the call there."""
    from tests.proxy.control.sip_peers import stop

    calls, hold_ms = 4, 25_000
    procs: list[asyncio.subprocess.Process] = []
    async with cluster(tmp_path, store_key) as c:
        a, b = await _two_nodes(c, redis_server, media_ports)
        sip_port, uas_port = pick_udp_port(), pick_udp_port()
        redis = redis_server.client()
        try:
            procs.append(await asyncio.create_subprocess_exec(
                "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                "-mi", "127.0.0.1", "-mp", str(pick_udp_port()), "-m", str(calls),
                "-nostdin", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL))
            # node-a weighted 10:1, so that calls land on it; a dead node costs one 2 s timeout
            # (not less: a node busy on this loaded machine must not be disabled by the
            # module's first ping).
            procs.append(await _kamailio(tmp_path, sip_port, [a, b], uas_port, weights=[10, 1],
                                         timeout_ms=2000))
            await asyncio.sleep(0.5)  # kamailio binds; a lost first INVITE is retransmitted
            uac = await _uac(tmp_path, sip_port, calls, hold_ms)
            procs.append(uac)

            async def all_up() -> tuple[set[str], set[str]]:
                on_a, on_b = await _calls(a), await _calls(b)
                return (on_a, on_b) if len(on_a | on_b) == calls else ()  # type: ignore[return-value]
            on_a, on_b = await _until(all_up, 30, f"{calls} calls set up through kamailio")
            print(f"\ncalls: node-a {len(on_a)}, node-b {len(on_b)}")
            assert on_a, "no call on node-a (kamailio disabled it at its first ping?)"

            async def stored() -> bool:  # node-a's writer has written every call it has
                return {x.encode() for x in on_a} <= set(await redis.hkeys(OWNERS))
            await _until(stored, 10, "node-a's calls written to the store")
            await a.kill9()

            async def adopted() -> bool:
                return on_a <= await _calls(b)
            await _until(adopted, 15, "node-b adopted node-a's calls")
            owners = await redis.hgetall(OWNERS)
            assert {owners[x.encode()] for x in on_a} == {b"node-b"}
            async with await NgClient.connect(a.ng) as ng:  # node-b answers there now
                reply = await ng.request({"command": "query", "call-id": sorted(on_a)[0]})
            assert reply["result"] == "ok"
            await a.start()  # node-a back: its address again, the calls stay on node-b
            await a.ready()
            assert not on_a & await _calls(a)
            assert "gave a node's ng address back" in b.log.read_text()

            # The BYEs come at the end of the hold: each delete times out on node-a, then
            # goes to node-b, which has the call.
            async def ended() -> bool:
                return not (on_a | on_b) & await _calls(b)
            await _until(ended, hold_ms / 1000 + 40, "every call deleted on node-b")
            async with asyncio.timeout(60):
                rc = await uac.wait()
            errors = (await uac.stderr.read()).decode() if uac.stderr else ""
            assert rc == 0, errors[-2000:]

            async def forgotten() -> bool:  # node-b's writer removes each deleted call's owner
                return not set(await redis.hkeys(OWNERS)) & {x.encode() for x in on_a}
            await _until(forgotten, 10, "the deleted calls' owners gone from the store")
            assert "answering on a dead node's ng address" in b.log.read_text()
            # Ended by Kamailio's deletes (relayed by node-a), not by node-b's idle reaping.
            deleted = {e["call_id"] for e in _events(b, "call deleted")}
            assert on_a <= deleted, (on_a, deleted)
        finally:
            for proc in reversed(procs):
                await stop(proc)
            await redis.aclose()
