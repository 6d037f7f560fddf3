"""Every caller keys a card at once, on calls spread over two media worker processes (the
set-up overlapping as in test_workers_concurrent): each agent leg is decoded with spandsp and
multimon-ng (and the leak meter) and holds no key, while its own caller's audio did arrive and
nobody else's. Half the callers key in-band, half as RFC 4733 events (with no tone beneath).
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from proxy.control.calls import CallRegistry
from proxy.control.ng_client import NgClient
from proxy.control.ng_server import NgServer
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import media_endpoint
from proxy.demo.simulate import TEST_CARDS
from proxy.media.workers import WorkerPoolEngine
from tests.proxy.failclosed.wire import LAWS, RtpSource, by_source, judge, keyed_audio, send
from tests.proxy.media.test_workers_concurrent import set_up_at_once

CALLS = 12  # 24 streams: fits one shard (100 ports = 50 pairs) even if the hash put all there
ARRIVED_FRACTION = 0.8  # of each caller's audio packets, at least this many reach its agent
SETTLE_SECONDS = 5.0  # bound on waiting for the last packets after the callers finished

pytestmark = pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")


def _keys(i: int) -> str:
    card, expiry, code = list(TEST_CARDS.values())[i % len(TEST_CARDS)]
    return f"{card}#{expiry}#{code}"


async def test_every_caller_keys_a_card_at_once_and_no_agent_leg_on_any_worker_decodes_a_key(
        media_ports: tuple[int, int]) -> None:
    pool = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2)
    await pool.start()
    registry = CallRegistry(pool, address="127.0.0.1")
    server = NgServer(registry.handle)
    client = await NgClient.connect(await server.start("127.0.0.1", 0))
    ids = [f"keyed-{i}" for i in range(CALLS)]
    assert {pool.worker_for(c) for c in ids} == {0, 1}
    peers: list[RtpPeer] = []
    try:
        callers, agents, _, answers = await set_up_at_once(client, ids, peers)
        plans = []
        for i, (caller, answer) in enumerate(zip(callers, answers, strict=True)):
            rfc4733 = i % 2 == 1
            audio, keys = keyed_audio(_keys(i), inband=not rfc4733, seed=10 + i)
            plans.append(RtpSource(caller.ssrc, seed=200 + i).segment(
                audio, media_endpoint(answer["sdp"]), keys=keys,
                event_pt=101 if rfc4733 else None))
        await asyncio.gather(*(send(caller, plan)
                               for caller, plan in zip(callers, plans, strict=True)))
        sent = [sum(1 for _, p, _ in plan if p.payload_type in LAWS) for plan in plans]

        def all_arrived() -> bool:
            return all(sum(1 for _, p in agent.received.packets if p.ssrc == caller.ssrc)
                       >= n - 2 for caller, agent, n in zip(callers, agents, sent, strict=True))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while not all_arrived() and loop.time() < deadline:
            await asyncio.sleep(0.05)

        problems = []
        for i, (caller, agent, n) in enumerate(zip(callers, agents, sent, strict=True)):
            how = "RFC 4733" if i % 2 else "in-band"
            for ssrc, heard in by_source(agent.received).items():
                if ssrc != caller.ssrc:
                    problems.append(f"call {i}: {heard.packets} packet(s) of SSRC {ssrc:#x}, "
                                    "not its caller's, reached its agent")
                verdict = judge(heard.audio)
                if not verdict.clean:
                    problems.append(f"call {i} ({how}) agent leg: {verdict}")
                if events := heard.payload_types[101]:
                    problems.append(f"call {i}: {events} RFC 4733 event packet(s) reached "
                                    "its agent")
            got = sum(1 for _, p in agent.received.packets
                      if p.ssrc == caller.ssrc and p.payload_type in LAWS)
            if got < ARRIVED_FRACTION * n:
                problems.append(f"call {i}: only {got} of its caller's {n} audio packets "
                                "reached its agent")
        assert not problems, "\n".join(problems)
        stats = await pool.totals()  # the workers' own count: they saw the keys and masked them
        assert stats.dtmf_masked >= CALLS, f"only {stats.dtmf_masked} keys masked in all"
        deleted = await asyncio.gather(*(client.request({
            "command": "delete", "call-id": c, "from-tag": "c"}) for c in ids))
        assert all(r["result"] == "ok" for r in deleted)
    finally:
        for peer in peers:
            peer.close()
        client.close()
        await server.stop()
        await registry.close()
        await pool.stop()
