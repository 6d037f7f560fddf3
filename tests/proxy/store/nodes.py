"""`toneguard serve` as a subprocess with a shared store, and a caller that never stops talking.

The node is a real process so that a test can ``kill -9`` it; the gateway stub runs in the
test's event loop (mutual TLS, as in the ``stack`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsp import tones
from gateway.pki import PkiPaths, init_pki
from proxy.api.auth import AgentDirectory
from proxy.demo.phone import RtpPeer
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.gateway.stub import running_gateway
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


async def stored(redis: RedisServer, call_id: str,
                 ready: Callable[[dict[str, Any]], bool] = lambda record: True,
                 timeout: float = 10.0) -> dict[str, Any]:
    """Wait (bounded) until the node's writer has put ``call_id``'s record in Redis and the
    record (its plain JSON; keys stay sealed) satisfies ``ready``: a test kills a node only
    after what it means to restore has been written, not after a guessed pause."""
    client = redis.client()
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await client.get(f"toneguard:call:{call_id}")
                if data is not None and ready(record := json.loads(data)):
                    return record
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def tags(record: dict[str, Any]) -> set[str]:
    return {p["tag"] for p in record["call"]["parties"]}
