"""The first packet may come from a stranger, also for a call that comes back from the store.

A restored call (kill -9, the node restarted with the same config) and an adopted one (kill -9,
another node takes it over on the dead node's address) start unlatched: the latch is not in the
record, so the caller's stream learns its source again. A stranger on another host keys a whole
card at the caller's port, in-band and as RFC 4733 events, from before the node is back until
after the real caller talks again; its packets are seen by the node (counted as refused) before
the caller's first one. The agent must get nothing of the stranger (no packet of its SSRC, no
event, no key decoded by spandsp or multimon-ng) and the real caller's audio; the stranger
gets nothing of the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.phone import Received, RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from tests.proxy.failclosed.wire import KEYED, LAWS, RtpSource, by_source, judge, keyed_audio, send
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import NodeProcess, Talker, cluster, stored
from tests.proxy.store.test_restart import _until

# Another loopback address (a different host as far as UDP can tell), and the caller's own
# host (another phone behind the same carrier SBC, another port).
STRANGERS = {"other-host": "127.0.0.66", "callers-host": "127.0.0.1"}
HEARTBEAT, TTL = 0.25, 2.0  # as test_takeover: short, above a loaded machine's loop stalls
ARRIVED_FRACTION = 0.8

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")]


class Stranger:
    """Keys the whole card at ``dest`` over and over, each key both as a tone and as RFC 4733
    events (payload type 101, as the call's SDP names it)."""

    def __init__(self, phone: RtpPeer, dest: tuple[str, int]) -> None:
        self.phone = phone
        self.dest = dest
        self.source = RtpSource(phone.ssrc, seed=67)
        self.cards = 0  # whole cards sent
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Stranger:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            audio, keys = keyed_audio(KEYED, lead_ms=100, tail_ms=100, seed=6 + self.cards)
            await send(self.phone, self.source.segment(audio, self.dest, keys=keys,
                                                       event_pt=101))
            self.cards += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _caller_stream(ng_address: tuple[str, int], call_id: str) -> dict[str, Any]:
    ng = await NgClient.connect(ng_address)
    try:
        reply = await ng.request({"command": "query", "call-id": call_id})
    finally:
        ng.close()
    if reply.get("result") != "ok":
        return {}
    stream: dict[str, Any] = reply["tags"]["ft"]["medias"][0]["streams"][0]
    return stream


async def _set_up(ng_address: tuple[str, int], call_id: str, caller: RtpPeer, agent: RtpPeer
                  ) -> tuple[tuple[str, int], tuple[str, int]]:
    """Offer (the customer) and answer (the agent): where the caller and the agent send."""
    ng = await NgClient.connect(ng_address)
    try:
        offer = await ng.request({
            "command": "offer", "call-id": call_id, "from-tag": "ft", "label": "customer",
            "metadata": "agent=alice", "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await ng.request({
            "command": "answer", "call-id": call_id, "from-tag": "ft", "to-tag": "tt",
            "label": "agent", "sdp": audio_sdp("127.0.0.1", agent.port)})
    finally:
        ng.close()
    return media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])


async def _stranger_before_the_caller(
        node: NodeProcess, call_id: str, caller: RtpPeer, agent: RtpPeer,
        to_caller: tuple[str, int], back: asyncio.Future[None], host: str) -> list[str]:
    """The caller is silent; the stranger keys at its port; ``back`` resolves when the node
    relays the call again (restarted or adopted). Once the node has refused the stranger's
    packets on the call, the caller talks again; once the stranger has keyed another whole
    card, what the agent and the stranger received is judged (sentences, empty: fine)."""
    stranger_phone = await RtpPeer(host, seed=66).start()
    stranger = Stranger(stranger_phone, to_caller).start()
    talker: Talker | None = None
    try:
        await back
        # The stranger's packets reach the restored stream before any of the caller's:
        # refused (counted in errors) or, were it admitted, relayed (the checks below).
        await _until(lambda: _stranger_seen(node, call_id), 20,
                     "the stranger's packets reach the restored call")
        loop = asyncio.get_running_loop()
        resumed = loop.time()
        talker = Talker(caller, to_caller).start()
        cards = stranger.cards  # + 2: the card under way, then a whole one during the talk
        await _until(lambda: _async(stranger.cards >= cards + 2), 20,
                     "the stranger keyed a whole card while the caller talked")
        sent = talker.sent_since(resumed - 0.01)
        await talker.stop()
        talker = None
        heard = Received(packets=[(t, p) for t, p in agent.received.packets if t > resumed])
        stream = await _caller_stream(node.ng, call_id)
    finally:
        if talker is not None:
            await talker.stop()
        await stranger.stop()
        stranger_phone.close()
    problems = []
    for ssrc, h in by_source(heard).items():
        verdict = judge(h.audio)
        if not verdict.clean:
            problems.append(f"agent, SSRC {ssrc:#x} ({h.packets} packets): {verdict}")
        if events := sum(n for pt, n in h.payload_types.items() if pt not in LAWS):
            problems.append(f"agent, SSRC {ssrc:#x}: {events} non-audio packet(s) arrived")
    if n := sum(1 for _, p in heard.packets if p.ssrc == stranger_phone.ssrc):
        problems.append(f"agent: {n} packet(s) of the stranger's SSRC arrived")
    got = sum(1 for _, p in heard.packets if p.ssrc == caller.ssrc and p.payload_type in LAWS)
    if got < ARRIVED_FRACTION * sent:
        problems.append(f"only {got} of the caller's {sent} audio packets reached the agent")
    if stranger_phone.received.packets:
        problems.append(f"the stranger received {len(stranger_phone.received.packets)} "
                        "packet(s) of the agent's audio")
    if stream.get("endpoint", {}).get("port") == stranger_phone.port:
        problems.append(f"the caller's stream is latched to the stranger {stream['endpoint']}")
    return problems


async def _stranger_seen(node: NodeProcess, call_id: str) -> dict[str, Any] | None:
    try:
        stream = await _caller_stream(node.ng, call_id)
    except (TimeoutError, RuntimeError):  # not answering yet, or not knowing the call yet
        return None
    stats = stream.get("stats", {})
    return stream if stats.get("errors") or stats.get("packets") else None


def _caller_latched(record: dict[str, Any]) -> bool:
    """The record holds the caller stream's latch (what a restore latches on again)."""
    return any(m.get("latched") for p in record["call"]["parties"] if p["tag"] == "ft"
               for m in p["medias"])


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize("stranger", list(STRANGERS))
async def test_a_stranger_first_on_a_call_restored_after_kill_9_reaches_nothing(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int], stranger: str) -> None:
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-a", store_url=redis_server.url, media_ports=media_ports)
        await node.start()
        await node.ready()
        caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
        agent_talker: Talker | None = None
        try:
            to_caller, to_agent = await _set_up(node.ng, "stranger-restart", caller, agent)
            agent_talker = Talker(agent, to_agent).start()
            before = Talker(caller, to_caller).start()
            await agent.wait_for(10)
            await before.stop()  # the caller pauses across the crash: the stranger is first
            await stored(redis_server, "stranger-restart", _caller_latched)
            await node.kill9()

            async def restart() -> None:
                await node.start()
                await node.ready()

            problems = await _stranger_before_the_caller(
                node, "stranger-restart", caller, agent, to_caller,
                asyncio.ensure_future(restart()), STRANGERS[stranger])
        finally:
            if agent_talker is not None:
                await agent_talker.stop()
            caller.close()
            agent.close()
        await node.stop()
    assert "calls restored from the store" in node.log.read_text(errors="replace")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stranger", list(STRANGERS))
async def test_a_stranger_first_on_a_call_adopted_after_takeover_reaches_nothing(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int], stranger: str) -> None:
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
        caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
        agent_talker: Talker | None = None
        try:
            to_caller, to_agent = await _set_up(a.ng, "stranger-takeover", caller, agent)
            assert to_caller[0] == "127.0.0.2"
            agent_talker = Talker(agent, to_agent).start()
            before = Talker(caller, to_caller).start()
            await agent.wait_for(10)
            await before.stop()
            await stored(redis_server, "stranger-takeover", _caller_latched)
            await a.kill9()
            # node-b answers on node-a's ng address once it adopted the call (_stranger_seen
            # asks there, as Kamailio would).
            problems = await _stranger_before_the_caller(
                a, "stranger-takeover", caller, agent, to_caller, _done(), STRANGERS[stranger])
        finally:
            if agent_talker is not None:
                await agent_talker.stop()
            caller.close()
            agent.close()
        for node in (a, b):
            await node.stop()
    assert "took over a dead node's calls" in b.log.read_text(errors="replace")
    assert not problems, "\n".join(problems)


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
