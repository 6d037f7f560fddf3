"""`toneguard serve` as a subprocess with a shared store, and a caller that never stops talking.

The node is a real process so that a test can ``kill -9`` it; the gateway stub runs in the
test's event loop (mutual TLS, as in the ``stack`` fixture). :func:`call_on` sets a call up on
a node as Kamailio does, :func:`heard_masked` checks what the agent heard, :func:`hang_up`
closes what a test opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dsp import tones
from gateway.pki import PkiPaths, init_pki
from proxy.api.auth import AgentDirectory
from proxy.control.ng_client import NgClient
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import Received, RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.store.redis_store import call_key
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.gateway.stub import running_gateway
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.service.serve_process import spawn_serve, wait_ready
from tests.proxy.store.conftest import RedisServer


@dataclass
class NodeProcess:
    """One `toneguard serve` process and how to reach it."""

    workdir: Path
    name: str
    config: Path
    ng: tuple[str, int]
    api: str
    proc: asyncio.subprocess.Process | None = None
    runs: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    async def start(self) -> float:
        """Spawn it; returns the loop time of the spawn (the gap is measured from there)."""
        self.runs += 1
        spawned = asyncio.get_running_loop().time()
        self.proc = await spawn_serve(self.config, self.log)
        return spawned

    async def ready(self, timeout: float = 30.0) -> dict:
        assert self.proc is not None
        return await wait_ready(self.api, self.proc, self.log, timeout)

    async def kill9(self) -> None:
        """``kill -9``, then wait until the process is gone (its ports and sockets free)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def kill9_and_restart(self) -> float:
        """``kill -9``, start again with the same config, wait until ready; returns the loop
        time of the kill (what arrives after it came through the new process)."""
        killed = asyncio.get_running_loop().time()
        await self.kill9()
        await self.start()
        await self.ready()
        return killed

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # stop now (SIGTERM would drain live calls)
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Cluster:
    """What nodes share: the gateway, the agents file, the store key."""

    workdir: Path
    gateway_url: str
    pki: PkiPaths
    agents_file: Path
    keys: dict[str, str]
    store_key: Path
    nodes: list[NodeProcess] = field(default_factory=list)

    def node(self, name: str, *, store_url: str, media_ports: tuple[int, int],
             media_address: str = "127.0.0.1", extra: str = "") -> NodeProcess:
        ng, api = pick_udp_port(), pick_tcp_port()
        pki = self.pki
        config = self.workdir / f"{name}.toml"
        config.write_text(f"""
[ng]
listen = "127.0.0.1:{ng}"
[media]
address = "{media_address}"
port_min = {media_ports[0]}
port_max = {media_ports[1]}
[api]
listen = "127.0.0.1:{api}"
agents_file = "{self.agents_file}"
[logging]
format = "json"
[gateway]
url = "{self.gateway_url}"
ca_file = "{pki.ca_cert}"
cert_file = "{pki.client_cert}"
key_file = "{pki.client_key}"
[store]
url = "{store_url}"
key_file = "{self.store_key}"
node_id = "{name}"
{extra}
""")
        node = NodeProcess(self.workdir, name, config, ("127.0.0.1", ng),
                           f"http://127.0.0.1:{api}")
        self.nodes.append(node)
        return node


@asynccontextmanager
async def cluster(workdir: Path, store_key: Path) -> AsyncIterator[Cluster]:
    async with running_gateway(init_pki(workdir / "gateway")) as gateway:
        agents_file = workdir / "agents.json"
        agents = AgentDirectory(agents_file)
        keys = {name: agents.add(name, role) for name, role in (
            ("alice", "agent"), ("supervisor", "supervisor"))}
        agents.save(agents_file)
        c = Cluster(workdir, gateway.url, gateway.pki, agents_file, keys, store_key)
        try:
            yield c
        finally:
            for node in c.nodes:
                await node.stop()


class Talker:
    """A phone that keeps sending: queued audio when there is some, quiet noise otherwise
    (so a gap in what arrives is the relay's, not the phone's)."""

    FILLER_MS = 100

    def __init__(self, phone: RtpPeer, dest: tuple[str, int]) -> None:
        self.phone = phone
        self.dest = dest
        self.queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self.segments: list[tuple[float, int]] = []  # (loop time it started, packets sent)
        self._rng = np.random.default_rng(5)
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()

    def start(self) -> Talker:
        self._task = asyncio.create_task(self._run())
        return self

    async def say(self, audio: np.ndarray) -> None:
        """Queue ``audio`` and wait until it has all been sent."""
        self.idle.clear()
        await self.queue.put(audio)
        await self.idle.wait()

    def sent_since(self, t: float) -> int:
        return sum(n for start, n in self.segments if start >= t)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                audio = self.queue.get_nowait()
                speaking = True
            except asyncio.QueueEmpty:
                audio = tones.white_noise(self.FILLER_MS * 8, -45.0, self._rng)
                speaking = False
            start = loop.time()
            audio = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
            sent = await self.phone.play(audio, self.dest)
            self.segments.append((start, sent))
            if speaking and self.queue.empty():
                self.idle.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


async def record(redis: RedisServer, call_id: str) -> dict[str, Any] | None:
    """``call_id``'s record in Redis now (its plain JSON; keys stay sealed), if any."""
    client = redis.client()
    try:
        data = await client.get(call_key(call_id))
    finally:
        await client.aclose()
    return None if data is None else json.loads(data)


async def stored(redis: RedisServer, call_id: str,
                 ready: Callable[[dict[str, Any]], bool] = lambda record: True,
                 timeout: float = 10.0) -> dict[str, Any]:
    """Wait (bounded) until the node's writer has put ``call_id``'s record in Redis and the
    record (its plain JSON; keys stay sealed) satisfies ``ready``: a test kills a node only
    after what it means to restore has been written, not after a guessed pause."""
    async with asyncio.timeout(timeout):
        while (found := await record(redis, call_id)) is None or not ready(found):
            await asyncio.sleep(0.05)
    return found


def tags(record: dict[str, Any]) -> set[str]:
    return {p["tag"] for p in record["call"]["parties"]}


def after(received: Received, t: float) -> Received:
    """What arrived after loop time ``t``."""
    return Received(packets=[(at, p) for at, p in received.packets if at > t])


@dataclass
class NodeCall:
    """A call set up on a node over ng, as Kamailio sets one up."""

    offer: dict[str, Any]  # the offer's reply: the node's SDP toward the agent
    answer: dict[str, Any]  # the answer's reply: the node's SDP toward the caller
    talker: Talker  # the caller toward the node (started unless asked not to)

    @property
    def caller_dest(self) -> tuple[str, int]:
        """Where the caller sends: the node's address and port in the answer's SDP."""
        return media_endpoint(self.answer["sdp"])

    @property
    def agent_dest(self) -> tuple[str, int]:
        """Where the agent sends: the node's address and port in the offer's SDP."""
        return media_endpoint(self.offer["sdp"])


async def call_on(ng: NgClient, call_id: str, caller: RtpPeer, agent: RtpPeer, *,
                  from_tag: str = "ft", to_tag: str = "tt",
                  offer: Mapping[str, Any] | None = None, answer: Mapping[str, Any] | None = None,
                  talk: bool = True) -> NodeCall:
    """Kamailio's ``offer`` (the caller's SDP, label customer) and ``answer`` (the agent's,
    label agent) for ``call_id``; ``offer``/``answer``: keys to add or replace in either. Then
    the caller talks (its :class:`Talker` started, for the test to stop) unless ``talk`` is
    False. An error reply raises (:class:`proxy.control.ng_client.NgErrorReply`)."""
    offered = await ng.request({
        "command": "offer", "call-id": call_id, "from-tag": from_tag, "label": "customer",
        "sdp": audio_sdp("127.0.0.1", caller.port), **(offer or {})})
    answered = await ng.request({
        "command": "answer", "call-id": call_id, "from-tag": from_tag, "to-tag": to_tag,
        "label": "agent", "sdp": audio_sdp("127.0.0.1", agent.port), **(answer or {})})
    call = NodeCall(offered, answered, Talker(caller, media_endpoint(answered["sdp"])))
    if talk:
        call.talker.start()
    return call


async def reoffer(ng: NgClient, call_id: str, caller: RtpPeer, *, from_tag: str = "ft"
                  ) -> tuple[str, int]:
    """A re-INVITE's offer (the caller's SDP, a new session version): where the node tells
    the agent to send now."""
    reply = await ng.request({
        "command": "offer", "call-id": call_id, "from-tag": from_tag, "label": "customer",
        "sdp": audio_sdp("127.0.0.1", caller.port, session=4243)})
    return media_endpoint(reply["sdp"])


async def heard_masked(agent: RtpPeer, sent: int, since: float, *, multimon: bool = True,
                       timeout: float = 5.0) -> np.ndarray:
    """Check what the agent heard from loop time ``since``, when the caller sent ``sent``
    packets (a card, say) from then on: at least 90 % of them (over 100), not silence, and no
    digit found by spandsp (nor by multimon-ng unless ``multimon`` is False). It first waits
    (bounded) for as many packets as were sent: the talker's filler follows the card, so that
    many arrive once the card's last packets are through the look-ahead, even with a few
    lost. Returns the audio."""
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while len(after(agent.received, since).packets) < sent:
                await asyncio.sleep(0.05)
    heard = after(agent.received, since)
    assert len(heard.packets) >= 0.9 * sent > 100, (len(heard.packets), sent)
    audio = heard.audio()
    assert float(np.sqrt(np.mean(audio.astype(float) ** 2))) > 10  # not silence
    assert spandsp_detect(audio) == ""
    if multimon:
        assert multimon_detect(audio) == ""
    return audio


async def hang_up(talkers: Iterable[Talker | None], *opened: NgClient | RtpPeer) -> None:
    """A test's ``finally``: stop the talkers, close the ng clients and phones."""
    for talker in talkers:
        if talker is not None:
            await talker.stop()
    for thing in opened:
        thing.close()


async def settled(http: httpx.AsyncClient, call_id: str, sid: str, headers: dict[str, str]
                  ) -> dict[str, Any]:
    """The payment once it stops changing for a second (or finishes)."""
    last: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while True:
            p = (await http.get(f"/v1/calls/{call_id}/payments/{sid}", headers=headers)).json()
            if p["status"] not in ("capturing", "ready", "submitting") or p == last:
                return p
            last = p
            await asyncio.sleep(1.0)


async def key_the_rest(talker: Talker, http: httpx.AsyncClient, call_id: str,
                       payment: dict[str, Any], values: dict[str, str],
                       headers: dict[str, str]) -> dict[str, Any]:
    """The caller keys ``values`` (field → digits, in the payment's order) from the field
    ``payment`` asks for now ("*" first: that field afresh), up to four times: a key lost
    under load is masked whole and not captured (fail closed), so what is missing is keyed
    again. Returns the payment once it has settled."""
    for _ in range(4):
        order = list(values)[list(values).index(payment["current_field"]):]
        await talker.say(card_audio("*" + "".join(values[f] for f in order)))
        payment = await settled(http, call_id, payment["sid"], headers)
        if payment["status"] != "capturing":
            break
    return payment
