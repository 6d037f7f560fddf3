"""Many calls set up at once through the ng socket onto two media worker processes: their
commands overlap (the ng server serves different calls concurrently, the pipes carry many
requests at a time), and every call still gets its own ports and relays its own media."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from proxy.control.calls import CallRegistry
from proxy.control.ng_client import NgClient
from proxy.control.ng_server import NgServer
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.workers import WorkerPoolEngine

CALLS = 12  # 24 streams: fits one shard (100 ports = 50 pairs) even if the hash put all there


async def set_up_at_once(client: NgClient, ids: list[str], peers: list[RtpPeer]
                         ) -> tuple[list[RtpPeer], list[RtpPeer], list[dict[str, Any]],
                                    list[dict[str, Any]]]:
    """A caller and an agent phone for each call id (added to ``peers``, for the caller to
    close), every call's offer sent at once, then every answer at once. Returns the callers,
    agents, offer replies and answer replies, in the order of ``ids``."""
    callers = [await RtpPeer(seed=i).start() for i in range(len(ids))]
    peers += callers
    agents = [await RtpPeer(seed=100 + i).start() for i in range(len(ids))]
    peers += agents
    offers = await asyncio.gather(*(client.request({
        "command": "offer", "call-id": c, "from-tag": "c",
        "sdp": audio_sdp("127.0.0.1", caller.port)}) for c, caller in zip(
            ids, callers, strict=True)))
    answers = await asyncio.gather(*(client.request({
        "command": "answer", "call-id": c, "from-tag": "c", "to-tag": "a",
        "sdp": audio_sdp("127.0.0.1", agent.port)}) for c, agent in zip(
            ids, agents, strict=True)))
    return callers, agents, offers, answers


async def test_calls_set_up_at_once_overlap_and_each_relays_its_own_media(
        media_ports: tuple[int, int]) -> None:
    pool = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2)
    await pool.start()
    registry = CallRegistry(pool, address="127.0.0.1")
    running = peak = 0

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await registry.handle(body)
        finally:
            running -= 1

    server = NgServer(handle)
    client = await NgClient.connect(await server.start("127.0.0.1", 0))
    ids = [f"burst-{i}" for i in range(CALLS)]
    assert {pool.worker_for(c) for c in ids} == {0, 1}
    peers: list[RtpPeer] = []
    try:
        callers, agents, offers, answers = await set_up_at_once(client, ids, peers)
        assert peak > 1  # commands of different calls were in the registry at the same time
        ports = [media_endpoint(r["sdp"])[1] for r in offers + answers]
        assert len(set(ports)) == 2 * CALLS  # every stream its own port
        # Each caller's audio reaches its own agent, all of it, and nobody else's.
        silence = np.zeros(8000 // 5, dtype=np.int16)  # 200 ms: 10 packets
        sent = await asyncio.gather(*(caller.play(silence, media_endpoint(answer["sdp"]))
                                      for caller, answer in zip(callers, answers, strict=True)))
        for agent, count in zip(agents, sent, strict=True):
            await agent.wait_for(count, timeout=5)
        assert len({caller.ssrc for caller in callers}) == CALLS
        for caller, agent in zip(callers, agents, strict=True):
            assert {p.ssrc for _, p in agent.received.packets} == {caller.ssrc}
        deleted = await asyncio.gather(*(client.request({
            "command": "delete", "call-id": c, "from-tag": "c"}) for c in ids))
        assert all(r["result"] == "ok" for r in deleted)
        assert registry.calls == {} and server.pending == 0
    finally:
        for peer in peers:
            peer.close()
        client.close()
        await server.stop()
        await registry.close()
        await pool.stop()
