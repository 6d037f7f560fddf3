"""A call stored by a node with one media process comes back on a node with two: on the worker
whose shard of the port range holds its ports (not the call id's hash), relayed and masked."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from dsp import tones
from proxy.control.calls import CallRegistry
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.media.types import PortsExhaustedError
from proxy.media.workers import WorkerPoolEngine, shards
from proxy.securepay.manager import PaymentManager
from proxy.store.memory import MemoryStore
from proxy.store.node import NodeState


async def _open(store: MemoryStore, key_file: Path, registry: CallRegistry) -> NodeState:
    return await NodeState.open(url="memory://", key_file=str(key_file), node="n",
                                registry=registry, payments=PaymentManager(None), store=store)


async def test_a_call_stored_with_one_worker_is_restored_on_the_worker_owning_its_ports(
        tmp_path: Path, media_ports: tuple[int, int]) -> None:
    key_file = tmp_path / "store.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    low, high = media_ports
    upper = shards(low, high, 2)[1]  # the second worker's shard after the change
    store = MemoryStore()
    pool = WorkerPoolEngine("127.0.0.1", low, high, workers=2)
    call_id = next(c for c in (f"moved-{i}" for i in range(100)) if pool.worker_for(c) == 0)

    # Before: one media process, its ports where the second worker's shard will be.
    engine = LocalMediaEngine("127.0.0.1", upper[0], upper[1],
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=26))
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1")
    state = await _open(store, key_file, registry)
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    pool_started = False
    try:
        offer = await registry.handle({"command": "offer", "call-id": call_id,
                                       "from-tag": "c", "label": "customer",
                                       "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": call_id,
                                        "from-tag": "c", "to-tag": "a", "label": "agent",
                                        "sdp": audio_sdp("127.0.0.1", agent.port)})
        to_caller, to_agent = media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])
        assert upper[0] <= to_caller[1] <= upper[1]
        assert await state.sync.flush()
        await state.stop()
        await registry.close()
        await engine.stop()

        # After: two worker processes; the call id's hash says worker 0, its ports say 1.
        await pool.start()
        pool_started = True
        registry = CallRegistry(pool, address="127.0.0.1")
        state = await _open(store, key_file, registry)
        assert state.restored == [call_id]
        streams = [m.stream_id for p in registry.calls[call_id].parties.values()
                   for m in p.medias]
        assert {pool._owner[s].spec.index for s in streams} == {1}
        keyed = tones.dtmf_sequence("47", tone_ms=70, gap_ms=70, lead_ms=200, tail_ms=400,
                                    low_dbm0=-10.0)
        sent = await caller.play(keyed, to_caller)
        await agent.wait_for(int(sent * 0.9), timeout=10)  # relayed after the restore ...
        assert spandsp_detect(agent.received.audio()) == ""  # ... and masked
        assert media_endpoint(answer["sdp"]) == to_caller and to_agent[1] >= upper[0]

        # A stream of the same call cannot be placed on another worker's shard: refused
        # with the reason (the whole call would otherwise be split across processes).
        with pytest.raises(PortsExhaustedError, match="another worker's shard"):
            await pool.allocate("stray", call_id, rtcp_mux=False, port=low)
    finally:
        caller.close()
        agent.close()
        await state.stop()
        await registry.close()
        if pool_started:
            await pool.stop()
