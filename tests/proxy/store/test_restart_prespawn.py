"""A node with two media worker processes, spawned before its own imports (proxy.media.prespawn):
kill -9 mid-call and restart — the call relays again, masked, on exactly two workers (none
spawned early is left over, none of the killed node's outlives it)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.phone import RtpPeer
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import (
    Talker,
    after,
    call_on,
    cluster,
    hang_up,
    heard_masked,
    stored,
    tags,
)

pytestmark = pytest.mark.peer


def _media_workers(pid: int) -> list[int]:
    """The node's worker processes (multiprocessing's spawned children, not its tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (/proc/PID/stat field 3)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _started(pid: int) -> float:
    """When ``pid`` started, in seconds since boot (/proc/PID/stat field 22)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


async def test_kill_9_with_prespawned_workers_restores_and_leaves_two_workers(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONEGUARD_PRESPAWN", "1")  # whatever this host's cores (the node's env)
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-w2", store_url=redis_server.url, media_ports=media_ports)
        node.config.write_text(node.config.read_text().replace(
            "[media]\n", "[media]\nworkers = 2\n", 1))
        await node.start()
        await node.ready()
        caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
        ng = await NgClient.connect(node.ng)
        talker: Talker | None = None
        try:
            talker = (await call_on(ng, "w2-1", caller, agent)).talker
            await agent.wait_for(10)
            assert node.proc is not None
            old_workers = _media_workers(node.proc.pid)
            assert len(old_workers) == 2
            await stored(redis_server, "w2-1", lambda r: tags(r) == {"ft", "tt"})

            loop = asyncio.get_running_loop()
            killed = await node.kill9_and_restart()
            async with asyncio.timeout(15):
                while len(after(agent.received, killed).packets) < 25:
                    await asyncio.sleep(0.1)
            workers = _media_workers(node.proc.pid)
            assert len(workers) == 2
            # The old workers die with their node (PR_SET_PDEATHSIG), a moment after it:
            # waited for (bounded), a zombie awaiting its reaper counts as dead.
            async with asyncio.timeout(5):
                while any(_running(p) for p in old_workers):
                    await asyncio.sleep(0.05)
            # Spawned early: before the node had read its configuration.
            timings = [json.loads(line)["seconds_since_process_start"]
                       for line in node.log.read_text(errors="replace").splitlines()
                       if '"start-up timings"' in line]
            spawned_after = max(_started(w) for w in workers) - _started(node.proc.pid)
            assert spawned_after < timings[-1]["configured"], (spawned_after, timings[-1])

            keyed_from = loop.time()
            await talker.say(card_audio("4111111111111111"))
            await heard_masked(agent, talker.segments[-1][1], keyed_from, multimon=False)
        finally:
            await hang_up([talker], ng, caller, agent)
        await node.stop()
        log = node.log.read_text(errors="replace")
        assert "calls restored from the store" in log and "Traceback" not in log
