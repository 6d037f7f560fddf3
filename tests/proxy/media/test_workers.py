"""Media in worker processes: calls spread over workers, relayed and masked there, digits and
counters coming back to the control plane; workers stopped with the engine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import numpy as np
import pytest

from dsp import tones
from proxy.control.calls import CallRegistry
from proxy.control.ng_client import NgClient, NgErrorReply
from proxy.control.ng_server import NgServer
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent, PortsExhaustedError, UnknownStreamError
from proxy.media.workers import RemoteTraceback, WorkerError, WorkerPoolEngine, portable, shards


def test_port_range_is_split_into_even_shards() -> None:
    assert shards(30000, 30099, 2) == [(30000, 30047), (30048, 30095)]
    with pytest.raises(ValueError, match="too small"):
        shards(30000, 30006, 4)


@pytest.fixture
async def pool(media_ports: tuple[int, int]) -> AsyncIterator[WorkerPoolEngine]:
    engine = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2)
    await engine.start()
    yield engine
    await engine.stop()


async def test_calls_on_two_workers_are_relayed_masked_and_counted(
        pool: WorkerPoolEngine) -> None:
    digits: list[tuple[str, DigitEvent]] = []
    registry = CallRegistry(pool, address="127.0.0.1",
                            on_digit=lambda call, tag, event: digits.append((call, event)))
    ids = [f"w{i}" for i in range(20)]
    chosen = {pool.worker_for(c) for c in ids}
    assert chosen == {0, 1}
    call_ids = [next(c for c in ids if pool.worker_for(c) == w) for w in (0, 1)]
    peers = []
    try:
        plays = []
        for n, call_id in enumerate(call_ids):
            caller, agent = await RtpPeer(seed=n).start(), await RtpPeer(seed=n + 5).start()
            peers += [caller, agent]
            await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "c",
                                   "sdp": audio_sdp("127.0.0.1", caller.port)})
            answer = await registry.handle({"command": "answer", "call-id": call_id,
                                            "from-tag": "c", "to-tag": "a",
                                            "sdp": audio_sdp("127.0.0.1", agent.port)})
            keyed = tones.dtmf_sequence("12", tone_ms=70, gap_ms=70, lead_ms=200,
                                        tail_ms=400, low_dbm0=-10.0)
            plays.append(caller.play(keyed, media_endpoint(answer["sdp"])))
        sent = await asyncio.gather(*plays)
        for agent, count in zip(peers[1::2], sent, strict=True):
            await agent.wait_for(count, timeout=5)
            assert spandsp_detect(agent.received.audio()) == ""  # masked in the worker
        async with asyncio.timeout(5):
            while len(digits) < 4:
                await asyncio.sleep(0.05)
        assert sorted((c, e.digit) for c, e in digits) == sorted(
            (c, d) for c in call_ids for d in "12")
        totals = await pool.totals()
        assert totals.workers == 2 and totals.packets_in >= sum(sent)
        assert totals.dtmf_masked == 4
        # Each worker's masking pipeline counted its call's masked audio; the sums came back.
        assert totals.masking.masked_packets > 0
        reply = await registry.handle({"command": "statistics"})
        ng_totals = reply["statistics"]["totalstatistics"]
        assert ng_totals["packets"] >= sum(sent) and ng_totals["dtmfmasked"] == 4
        pids = pool.pids
        assert len(set(pids)) == 2 and os.getpid() not in pids
    finally:
        for peer in peers:
            peer.close()
        await registry.close()
    await pool.stop()
    assert not any(w.process.is_alive() for w in pool._workers)
    assert np.all([p > 0 for p in pids])


class _NeedsTwoArguments(Exception):
    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")  # unpickling would call it with one argument


def test_an_exception_crosses_the_pipe_as_itself_or_as_a_worker_error_naming_it() -> None:
    exhausted = PortsExhaustedError("no free port pair in 30000-30003")
    assert portable(exhausted) is exhausted
    unknown = UnknownStreamError("s1")
    assert portable(unknown) is unknown
    odd = portable(_NeedsTwoArguments("x", "y"))
    assert isinstance(odd, WorkerError) and str(odd) == "_NeedsTwoArguments: x: y"


async def test_running_out_of_ports_in_a_worker_reaches_the_control_plane_as_such(
        media_ports: tuple[int, int]) -> None:
    """With workers the engine's errors keep their type: an offer that finds no port gets
    rtpengine's "Ran out of ports" on the ng socket, not "Internal error"."""
    low = media_ports[0]
    pool = WorkerPoolEngine("127.0.0.1", low, low + 9, workers=2)  # 4 ports = 2 streams each
    await pool.start()
    registry = CallRegistry(pool, address="127.0.0.1")
    server = NgServer(registry.handle)
    client = await NgClient.connect(await server.start("127.0.0.1", 0))
    try:
        on_worker_0 = (c for c in (f"x{i}" for i in range(1000)) if pool.worker_for(c) == 0)
        with pytest.raises(NgErrorReply, match=r"^ng offer: Ran out of ports$"):
            for _ in range(3):  # each call takes two streams: the second cannot be placed
                await client.request({
                    "command": "offer", "call-id": next(on_worker_0), "from-tag": "c",
                    "sdp": audio_sdp("127.0.0.1", 4000)})
        # Straight from the engine: the worker's own exception type, its traceback as cause.
        with pytest.raises(PortsExhaustedError, match="no free port pair") as raised:
            await pool.allocate("extra", next(on_worker_0), rtcp_mux=False)
        cause = raised.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "_bind_pair" in cause.text
    finally:
        client.close()
        await server.stop()
        await registry.close()
        await pool.stop()


_POOL_OWNER = """
import asyncio, sys, time
from proxy.media.workers import WorkerPoolEngine

async def main():
    engine = WorkerPoolEngine("127.0.0.1", int(sys.argv[1]), int(sys.argv[2]), workers=2)
    await engine.start()
    print("PIDS", *engine.pids, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


async def test_workers_end_with_a_node_killed_with_sigkill(media_ports: tuple[int, int]) -> None:
    """kill -9 of the node must not leave its workers relaying on the call's ports (a restarted
    node binds them again). The kernel kills each worker with its parent (PR_SET_PDEATHSIG);
    a worker also ends on its own when it sees the closed pipe, a little later, so this test
    guards the outcome, not how soon (no timing assertions)."""
    import signal
    import sys
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _POOL_OWNER, *map(str, media_ports),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert owner.stdout is not None
        async with asyncio.timeout(60):
            while not (line := await owner.stdout.readline()).startswith(b"PIDS"):
                assert line, "the pool owner ended without starting its workers"
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
        async with asyncio.timeout(20):  # bounded; the kernel signals them at once
            while any(_alive(pid) for pid in pids):
                await asyncio.sleep(0.05)
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()
