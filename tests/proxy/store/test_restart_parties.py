"""kill -9 a node whose call has a third party (a supervisor's subscription), start it again:
every party comes back, the agent and the supervisor both hear the customer again, masked
(spandsp and multimon-ng decode nothing from either while both heard the audio), and the
subscription can be ended and a new one made over ng after the restart."""

from __future__ import annotations

import asyncio
import shutil
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp
from proxy.demo.spandsp import spandsp_detect
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import Talker, after, call_on, cluster, hang_up, stored, tags

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]


def _audio(peer: RtpPeer, since: float) -> tuple[int, np.ndarray]:
    heard = after(peer.received, since)
    return sum(1 for _, p in heard.packets if p.payload_type == 0), heard.audio()


async def test_kill_9_restores_a_supervisors_subscription_masked(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-sub", store_url=redis_server.url, media_ports=media_ports)
        await node.start()
        await node.ready()
        phones = [await RtpPeer(seed=n).start() for n in range(1, 5)]
        customer, agent, supervisor, second = phones
        ng = await NgClient.connect(node.ng)
        talker: Talker | None = None
        try:
            call = await call_on(ng, "sub-1", customer, agent, from_tag="cust", to_tag="agent",
                                 answer={"sip-code": 200}, talk=False)
            sub = await ng.request({
                "command": "subscribe request", "call-id": "sub-1", "from-tag": "cust",
                "set-label": "supervisor"})
            assert sub["result"] == "ok", sub
            ok = await ng.request({
                "command": "subscribe answer", "call-id": "sub-1", "to-tag": sub["to-tag"],
                "sdp": audio_sdp("127.0.0.1", supervisor.port)})
            assert ok["result"] == "ok", ok
            talker = call.talker.start()
            await agent.wait_for(10)
            await supervisor.wait_for(10)
            await stored(redis_server, "sub-1",
                         lambda r: tags(r) == {"cust", "agent", sub["to-tag"]})

            loop = asyncio.get_running_loop()
            killed = await node.kill9_and_restart()
            async with asyncio.timeout(15):
                while min(_audio(p, killed)[0] for p in (agent, supervisor)) < 25:
                    await asyncio.sleep(0.1)
            query = await ng.request({"command": "query", "call-id": "sub-1"})
            assert set(query["tags"]) == {"cust", "agent", sub["to-tag"]}

            keyed_from = loop.time()
            await talker.say(card_audio("4111111111111111"))
            sent = talker.sent_since(keyed_from - 0.01)
            with suppress(TimeoutError):  # the last packets' way through the look-ahead
                async with asyncio.timeout(5):  # (the filler that follows makes up for a loss)
                    while min(_audio(p, keyed_from)[0] for p in (agent, supervisor)) < sent:
                        await asyncio.sleep(0.05)
            for listener in (agent, supervisor):
                packets, audio = _audio(listener, keyed_from)
                assert packets >= 0.9 * sent > 100, (packets, sent)
                assert float(np.sqrt(np.mean(audio.astype(float) ** 2))) > 10  # not silence
                assert spandsp_detect(audio) == ""
                assert multimon_detect(audio) == ""

            # The restored subscription is a subscription: it ends over ng, the agent goes on.
            # A new one made after the restart mirrors the customer's restored section.
            ended = await ng.request({"command": "unsubscribe", "call-id": "sub-1",
                                      "to-tag": sub["to-tag"]})
            assert ended["result"] == "ok", ended
            again = await ng.request({
                "command": "subscribe request", "call-id": "sub-1", "from-tag": "cust",
                "set-label": "supervisor"})
            assert again["result"] == "ok", again
            assert "a=crypto" not in again["sdp"]
            ok = await ng.request({
                "command": "subscribe answer", "call-id": "sub-1", "to-tag": again["to-tag"],
                "sdp": audio_sdp("127.0.0.1", second.port)})
            assert ok["result"] == "ok", ok
            moved = loop.time()
            async with asyncio.timeout(10):
                while min(_audio(p, moved)[0] for p in (agent, second)) < 25:
                    await asyncio.sleep(0.1)
            stopped = _audio(supervisor, moved)[0]
            assert stopped <= 2, stopped  # what was in flight when it ended, at most
        finally:
            await hang_up([talker], ng, *phones)
        await node.stop()
        assert "calls restored from the store" in node.log.read_text(errors="replace")
