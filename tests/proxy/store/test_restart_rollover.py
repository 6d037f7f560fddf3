"""kill -9 a node after both phones' SRTP sequence numbers wrapped (ROC 1), start it again:
the stored rollover counters let it decrypt what each phone sends and encrypt what each can
decrypt, and the caller's digits keyed after the restart are still masked at the agent."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from proxy.control import sdes
from proxy.control.ng_client import NgClient
from proxy.control.sdp import parse as parse_sdp
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import Talker, after, cluster, hang_up, heard_masked, record
from tests.proxy.store.test_restart import _until

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]

SUITE = "AES_CM_128_HMAC_SHA1_80"
NEAR_WRAP = 65_535 - 40  # each phone's first sequence number: ROC 1 after 0.8 s of talk


async def _stored_rocs(redis_server: RedisServer, call_id: str) -> list[int | None]:
    """The stored ROC of each stream and direction of the call (None: nothing stored)."""
    stored = await record(redis_server, call_id)
    if stored is None:
        return []
    rocs: list[int | None] = []
    for party in stored["call"]["parties"]:
        for media in party["medias"]:
            index = media.get("srtp_index") or {}
            rocs += [index[d][1] if index.get(d) else None for d in ("recv", "send")]
    return rocs


async def test_kill_9_after_the_srtp_rollover_restores_the_rollover_counters(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    caller_key = sdes.generate(SUITE, 1)
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-roc", store_url=redis_server.url, media_ports=media_ports)
        await node.start()
        await node.ready()
        caller = await RtpPeer(seed=1, srtp_send=caller_key.params, sequence=NEAR_WRAP).start()
        agent_key = sdes.generate(SUITE, 1)  # its tag: the one the node offers this suite with
        agent = await RtpPeer(seed=2, srtp_send=agent_key.params, sequence=NEAR_WRAP).start()
        ng = await NgClient.connect(node.ng)
        talkers: list[Talker] = []
        try:
            offer = await ng.request({
                "command": "offer", "call-id": "roc-1", "from-tag": "ft", "label": "customer",
                "sdp": audio_sdp("127.0.0.1", caller.port, proto="RTP/SAVP",
                                 crypto=[caller_key])})
            to_agent = next(a for a in sdes.offered(
                parse_sdp(offer["sdp"]).media[0].attributes("crypto")) if a.suite == SUITE)
            agent_key = sdes.CryptoAttribute(to_agent.tag, SUITE, agent_key.params)
            answer = await ng.request({
                "command": "answer", "call-id": "roc-1", "from-tag": "ft", "to-tag": "tt",
                "label": "agent", "sdp": audio_sdp("127.0.0.1", agent.port, proto="RTP/SAVP",
                                                   crypto=[agent_key])})
            to_caller = sdes.offered(parse_sdp(answer["sdp"]).media[0].attributes("crypto"))
            agent.set_srtp_recv(to_agent.params)
            caller.set_srtp_recv(to_caller[0].params)
            caller_talker = Talker(caller, media_endpoint(answer["sdp"])).start()
            talkers = [caller_talker, Talker(agent, media_endpoint(offer["sdp"])).start()]

            # Both phones wrapped, and the node wrote ROC 1 for all four directions.
            async def wrapped() -> bool:
                return await _stored_rocs(redis_server, "roc-1") == [1, 1, 1, 1]
            await _until(wrapped, 15, "ROC 1 stored for every stream and direction")
            assert caller.received.errors == agent.received.errors == 0
            assert caller.received.packets and agent.received.packets

            loop = asyncio.get_running_loop()
            killed = await node.kill9_and_restart()
            # Relayed again, both ways, and it decrypts (bounded wait, then say what came).
            deadline = loop.time() + 15
            while loop.time() < deadline and min(
                    len(after(p.received, killed).packets) for p in (agent, caller)) < 25:
                await asyncio.sleep(0.1)
            got = {name: (len(after(p.received, killed).packets), p.received.errors)
                   for name, p in (("agent", agent), ("caller", caller))}
            assert min(n for n, _ in got.values()) >= 25, f"(decrypted, undecryptable): {got}"

            keyed_from = loop.time()
            await caller_talker.say(card_audio("4111111111111111"))
            await heard_masked(agent, caller_talker.sent_since(keyed_from - 0.01), keyed_from)
            # Nothing either phone got after the restart failed to decrypt.
            assert caller.received.errors == 0 and agent.received.errors == 0
            assert await _stored_rocs(redis_server, "roc-1") == [1, 1, 1, 1]
        finally:
            await hang_up(talkers, ng, caller, agent)
        await node.stop()
        log = node.log.read_text(errors="replace")
        assert "calls restored from the store" in log
        assert "4111111111111111" not in log
