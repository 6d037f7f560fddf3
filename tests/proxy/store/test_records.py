"""Call records: a call survives encode → decode → adopt with its ports, keys and masking; key
material is never in a record in clear; a record sealed under another key does not open."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping

import pytest

from proxy.control import sdes
from proxy.control.calls import CallRegistry
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine
from proxy.securepay.manager import PaymentManager
from proxy.store import sync
from proxy.store.base import StoreError
from proxy.store.memory import MemoryStore
from proxy.store.node import NodeState
from proxy.store.records import CallRecord, decode, encode
from proxy.store.sealing import Sealer, SealError

PAN = "4111111111111111"


async def _sdes_call(registry: CallRegistry, call_id: str = "c1") -> None:
    caller_key = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1)
    await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "ft",
                           "label": "customer", "metadata": "agent=alice",
                           "sdp": audio_sdp("127.0.0.1", 40000, proto="RTP/SAVP",
                                            crypto=[caller_key])})
    await registry.handle({"command": "answer", "call-id": call_id, "from-tag": "ft",
                           "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", 40100)})
    await registry.handle({"command": "block DTMF", "call-id": call_id, "from-tag": "ft",
                           "DTMF-security": "silence"})


def _keys(registry: CallRegistry, call_id: str) -> list[bytes]:
    call = registry.calls[call_id]
    found = []
    for party in call.parties.values():
        for m in party.medias:
            for p in (m.config.srtp_recv, m.config.srtp_send):
                if p is not None:
                    found.append(p.key_salt)
            found += [a.params.key_salt for a in m.keys.ours.values()]
    return found


async def test_a_call_round_trips_with_ports_keys_and_masking() -> None:
    registry = CallRegistry(MemoryMediaEngine(port_min=30000, port_max=30100),
                            address="127.0.0.1")
    await _sdes_call(registry)
    sealer = Sealer(os.urandom(32))
    data = encode(CallRecord(registry.calls["c1"], "node-a", "alice"), sealer)
    keys = _keys(registry, "c1")
    assert len(keys) >= 3  # the caller's key, ours toward it, and what we send it
    for key in keys:  # no key material in clear, raw or base64
        assert key not in data and base64.b64encode(key) not in data

    restored = decode(data, sealer)
    engine = MemoryMediaEngine(port_min=30000, port_max=30100)
    other = CallRegistry(engine, address="127.0.0.1")
    await other.adopt(restored.call)
    original, back = registry.calls["c1"], other.calls["c1"]
    for tag in ("ft", "tt"):
        for m, n in zip(original.parties[tag].medias, back.parties[tag].medias, strict=True):
            assert n.local == m.local
            assert n.config == m.config  # peer, codecs, SRTP keys, masking (silence)
            assert n.keys.ours.keys() == m.keys.ours.keys() and n.keys.suite == m.keys.suite
            stream = engine.streams[n.stream_id]
            assert stream.local.rtp_port == m.local.rtp_port  # the same port bound again
            assert stream.config.masking == m.config.masking  # configured before linking
    assert back.parties["ft"].dtmf is not None and back.parties["ft"].dtmf.mode.value == "silence"
    assert engine.streams["c1/ft/0"].linked == back.parties["tt"].medias[0].stream_id
    assert restored.agent_id == "alice"


async def test_a_record_sealed_under_another_key_does_not_open() -> None:
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    await _sdes_call(registry)
    data = encode(CallRecord(registry.calls["c1"], "node-a"), Sealer(os.urandom(32)))
    with pytest.raises(SealError, match="does not open"):
        decode(data, Sealer(os.urandom(32)))


async def test_adopt_fails_whole_when_a_port_is_taken() -> None:
    registry = CallRegistry(MemoryMediaEngine(port_min=30000, port_max=30100),
                            address="127.0.0.1")
    await _sdes_call(registry)
    sealer = Sealer(os.urandom(32))
    record = decode(encode(CallRecord(registry.calls["c1"], "n"), sealer), sealer)
    engine = MemoryMediaEngine(port_min=30000, port_max=30100)
    taken = record.call.parties["tt"].medias[0].local.rtp_port
    await engine.allocate("squatter", "other", rtcp_mux=False, port=taken)
    other = CallRegistry(engine, address="127.0.0.1")
    with pytest.raises(Exception, match="taken"):
        await other.adopt(record.call)
    assert "c1" not in other.calls and set(engine.streams) == {"squatter"}


async def test_restart_restores_calls_assignment_and_resumes_the_payment() -> None:
    """A node with a MemoryStore writes; a new registry and manager on the same store get the
    call back, assigned, with the open payment capturing again from the card number and
    none of the digits keyed before (the store never saw them)."""
    key_file_text = base64.b64encode(os.urandom(32)).decode()
    store = MemoryStore()
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    payments = PaymentManager(None)
    registry._on_call = lambda c, alive: (payments.call_started(c, registry.calls[c].metadata)
                                          if alive else payments.call_ended(c))
    state = await _open(store, key_file_text, registry, payments)
    await _sdes_call(registry)
    session = payments.start("c1", "alice")
    from proxy.media.types import DigitEvent
    for digit in PAN[:8]:
        payments.on_digit("c1", "ft", DigitEvent("c1/ft/0", digit, "inband", 0, 80))
    assert session.masked()["payment-card-number"] == "•" * 8
    assert await state.sync.flush()
    assert PAN[:6].encode() not in store.records["c1"]
    assert "•".encode() * 8 in store.records["c1"]  # the progress the agent saw
    await state.stop()

    registry2 = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    payments2 = PaymentManager(None)
    registry2._on_call = lambda c, alive: (payments2.call_started(c, registry2.calls[c].metadata)
                                           if alive else payments2.call_ended(c))
    state2 = await _open(store, key_file_text, registry2, payments2)
    try:
        assert state2.restored == ["c1"]
        assert payments2.owner("c1") == "alice"
        resumed = payments2.sessions[session.sid]
        assert resumed.status.value == "capturing"
        assert resumed.current == "payment-card-number"
        assert resumed.masked()["payment-card-number"] == ""  # nothing keyed before kept
        assert payments2.capturing("c1")
    finally:
        await state2.stop()


async def _open(store: MemoryStore, key: str, registry: CallRegistry,
                payments: PaymentManager) -> NodeState:
    import tempfile
    from pathlib import Path
    path = Path(tempfile.mkdtemp()) / "store.key"
    path.write_text(key)
    return await NodeState.open(url="memory://", key_file=str(path), node="node-a",
                                registry=registry, payments=payments, store=store)


class FlakyStore(MemoryStore):
    """A MemoryStore that can be 'down' (every call raises StoreError)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError("down")

    async def write(self, node: str, batch: Mapping[str, bytes | None]) -> None:
        self._check()
        await super().write(node, batch)

    async def load(self, node: str) -> dict[str, bytes]:
        self._check()
        return await super().load(node)

    async def ping(self) -> None:
        self._check()


async def test_a_node_started_while_the_store_is_down_restores_when_it_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not restored at start (degraded), restored once the store answers, and the re-sync
    that follows keeps the record instead of deleting a call the node did not have yet."""
    monkeypatch.setattr(sync, "RETRY_FIRST_PAUSE", 0.01)
    monkeypatch.setattr(sync, "RECHECK_SECONDS", 0.05)
    key = base64.b64encode(os.urandom(32)).decode()
    store = FlakyStore()
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    first = await _open(store, key, registry, PaymentManager(None))
    await _sdes_call(registry)
    assert await first.sync.flush()
    await first.stop()

    store.down = True
    registry2 = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    second = await _open(store, key, registry2, PaymentManager(None))
    try:
        assert second.restored == [] and second.problems()
        store.down = False
        async with asyncio.timeout(5):
            while second.sync.degraded:
                await asyncio.sleep(0.02)
        assert second.restored == ["c1"] and "c1" in registry2.calls
        assert "c1" in store.records and store.owner["c1"] == "node-a"
    finally:
        await second.stop()
