"""A re-INVITE of an adopted call that reaches the node that came back: after node-b took node-a's
call over, node-a restarts, and Kamailio 5.6 sends the call's next command — a re-offer for a
hold, then its delete — to node-a, the node that took the offer. node-a must not take the
re-offer as a new call (a second call on its own ports, the media split between two nodes): it
relays it to node-b, which keeps the call, masked."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.store.redis_store import OWNERS, call_key
from proxy.store.takeover import Heartbeat, NodeMedia, moved_key
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import Talker, after, cluster, stored
from tests.proxy.store.test_many_nodes import _calls
from tests.proxy.store.test_restart import _until
from tests.proxy.store.test_takeover import HEARTBEAT, TTL, _logged, _true

CARD = "5555555555554444"

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]


def test_only_a_node_taken_over_relays_and_an_offer_only_for_a_call_moved_off_it() -> None:
    """No Redis round trip for unknown calls before a takeover; after one, commands for calls
    this node does not have are looked up, and offers only for the calls the taker moved."""
    beat = Heartbeat(None, "node-a", NodeMedia("127.0.0.2", "127.0.0.2", 30000, 30100),  # type: ignore[arg-type]
                     interval=1.0, ttl=3.0)
    assert not beat.relays("c1", starts_a_call=False)
    assert not beat.relays("c1", starts_a_call=True)
    beat.taken_by, beat.taken_calls = "node-b", {"c1"}
    assert beat.relays("c1", starts_a_call=True)  # a re-INVITE of a moved call
    assert not beat.relays("new", starts_a_call=True)  # a new call: taken here, no lookup
    assert beat.relays("other", starts_a_call=False)  # e.g. a delete: the owner is looked up


async def test_a_hold_re_offer_sent_to_node_a_back_after_a_takeover_is_relayed_to_the_adopter(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    low, high = media_ports
    mid = low + (high - low) // 2 // 2 * 2
    beat = f"heartbeat_seconds = {HEARTBEAT}\nheartbeat_ttl_seconds = {TTL}\n"
    async with cluster(tmp_path, store_key) as c:
        a = c.node("node-a", store_url=redis_server.url, media_ports=(low, mid - 1),
                   media_address="127.0.0.2", extra=beat)
        b = c.node("node-b", store_url=redis_server.url, media_ports=(mid, high),
                   media_address="127.0.0.3", extra=beat + 'takeover = ["node-a"]\n')
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.ready(), b.ready())
        caller, agent = await RtpPeer(seed=71).start(), await RtpPeer(seed=72).start()
        ng = await NgClient.connect(a.ng)
        talker: Talker | None = None
        redis = redis_server.client()
        loop = asyncio.get_running_loop()
        try:
            offer = await ng.request({
                "command": "offer", "call-id": "hold-1", "from-tag": "ft",
                "label": "customer", "sdp": audio_sdp("127.0.0.1", caller.port)})
            answer = await ng.request({
                "command": "answer", "call-id": "hold-1", "from-tag": "ft", "to-tag": "tt",
                "label": "agent", "sdp": audio_sdp("127.0.0.1", agent.port)})
            to_caller, to_agent = media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])
            assert to_caller[0] == "127.0.0.2"
            talker = Talker(caller, to_caller).start()
            await agent.wait_for(10)
            await stored(redis_server, "hold-1", lambda r: len(r["call"]["parties"]) == 2)

            killed = loop.time()
            await a.kill9()
            await _until(lambda: _true(any(t > killed + 0.05 for t, _ in
                                           agent.received.packets)),
                         20, "media flows again after the takeover")
            assert await redis.hget(OWNERS, "hold-1") == b"node-b"
            assert "hold-1" in await _calls(b)
            assert await redis.smembers(moved_key("node-a")) == {b"hold-1"}

            await a.start()  # back: its ng address again (node-b gives it back), no call
            await a.ready()
            assert _logged(a, "this node's calls were taken over")["taken_by"] == "node-b"
            assert await redis.smembers(moved_key("node-a")) == {b"hold-1"}  # kept

            # Kamailio's re-offer for the hold goes to node-a, the node that took the offer.
            hold = audio_sdp("127.0.0.1", caller.port, session=4243).replace(
                "a=sendrecv", "a=sendonly")

            async def reoffered() -> dict:
                try:  # node-a's ng socket may still be node-b's for a poll or two
                    return await ng.request({
                        "command": "offer", "call-id": "hold-1", "from-tag": "ft",
                        "label": "customer", "sdp": hold})
                except TimeoutError:
                    return {}
            reply = await _until(reoffered, 15, "node-a answers the re-offer")
            assert reply["result"] == "ok", reply
            # node-b's answer: the call's own address and ports (node-a's, adopted by node-b).
            assert media_endpoint(reply["sdp"]) == to_agent
            assert "hold-1" not in await _calls(a)  # no second call on node-a
            assert "hold-1" in await _calls(b)
            assert await redis.hget(OWNERS, "hold-1") == b"node-b"
            adopted = await stored(redis_server, "hold-1")
            assert adopted["node"] == "node-b"

            # The media goes on through node-b, the caller's card masked.
            keyed_from = loop.time()
            await talker.say(card_audio(CARD))
            await _until(lambda: _true(len(after(agent.received, keyed_from).packets) >= 100),
                         10, "the card's audio reaches the agent")
            heard = after(agent.received, keyed_from)
            sent = talker.sent_since(keyed_from - 0.01)
            assert len(heard.packets) >= 0.9 * sent > 100, (len(heard.packets), sent)
            audio = heard.audio()
            assert float(np.sqrt(np.mean(audio.astype(float) ** 2))) > 10  # not silence
            assert spandsp_detect(audio) == "" and multimon_detect(audio) == ""
            assert "hold-1" not in await _calls(a)

            # The BYE's delete, to node-a too: relayed, the call ends on node-b.
            deleted = await ng.request({"command": "delete", "call-id": "hold-1",
                                                   "from-tag": "ft"})
            assert deleted["result"] == "ok" and "warning" not in deleted, deleted
            assert "hold-1" not in await _calls(b)

            async def gone() -> bool:
                return await redis.hget(OWNERS, "hold-1") is None and not await redis.exists(
                    call_key("hold-1"))
            await _until(gone, 10, "the record deleted")
        finally:
            if talker is not None:
                await talker.stop()
            ng.close()
            caller.close()
            agent.close()
            await redis.aclose()
