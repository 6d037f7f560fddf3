"""What a call record carries for the restore path: every party (a subscription as one, with
its source and its output once answered), the SRTP indexes the engine reported, the last media
section without its keys; a record written before these fields existed still reads."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from proxy.control import sdes
from proxy.control.calls import CallRegistry
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.engine import LocalMediaEngine
from proxy.media.memory import MemoryMediaEngine
from proxy.media.types import SrtpIndex, SrtpIndexEvent
from proxy.securepay.manager import PaymentManager
from proxy.store.memory import MemoryStore
from proxy.store.node import NodeState
from proxy.store.records import CallRecord, decode, encode
from proxy.store.sealing import Sealer


async def _call_with_supervisor(registry: CallRegistry) -> tuple[str, bytes]:
    """An SDES call ft → tt and a supervisor's subscription to ft (answered)."""
    caller_key = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1)
    await registry.handle({"command": "offer", "call-id": "c1", "from-tag": "ft",
                           "label": "customer",
                           "sdp": audio_sdp("127.0.0.1", 40000, proto="RTP/SAVP",
                                            crypto=[caller_key])})
    await registry.handle({"command": "answer", "call-id": "c1", "from-tag": "ft",
                           "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", 40100)})
    sub = await registry.handle({"command": "subscribe request", "call-id": "c1",
                                 "from-tag": "ft", "transport-protocol": "RTP/AVP"})
    await registry.handle({"command": "subscribe answer", "call-id": "c1",
                           "to-tag": sub["to-tag"], "sdp": audio_sdp("127.0.0.1", 40200)})
    return sub["to-tag"], caller_key.params.key_salt


async def test_every_party_and_the_subscription_output_come_back() -> None:
    engine = MemoryMediaEngine(port_min=30000, port_max=30100)
    registry = CallRegistry(engine, address="127.0.0.1")
    sub_tag, caller_key = await _call_with_supervisor(registry)
    index = SrtpIndex(0xCAFE, 3, 17_000)
    engine.publish(SrtpIndexEvent("c1/ft/0", index, None))  # as the engine's scan reports
    sealer = Sealer(os.urandom(32))
    data = encode(CallRecord(registry.calls["c1"], "node-a"), sealer)
    assert caller_key not in data and base64.b64encode(caller_key) not in data
    assert b"a=crypto" not in data  # the stored section lost its key line

    back = decode(data, sealer).call
    restored = MemoryMediaEngine(port_min=30000, port_max=30100)
    other = CallRegistry(restored, address="127.0.0.1")
    await other.adopt(back)
    assert set(back.parties) == {"ft", "tt", sub_tag}
    sub = back.parties[sub_tag]
    assert sub.subscriber and not back.parties["ft"].subscriber
    assert [p.tag for p in back.dialogue] == ["ft", "tt"]
    source = back.parties["ft"].medias[0]
    assert sub.medias[0].source == source.stream_id
    assert restored.streams[source.stream_id].outputs == [sub.medias[0].stream_id]
    assert restored.streams[source.stream_id].linked == back.parties["tt"].medias[0].stream_id
    assert source.recv_index == index and source.send_index is None
    assert source.section is not None and source.section.codecs()[0] == "PCMU"
    assert not source.section.attributes("crypto")
    # A new subscription after the restart mirrors the restored section.
    again = await other.handle({"command": "subscribe request", "call-id": "c1",
                                "from-tag": "ft"})
    assert again["result"] == "ok" and "PCMU" in again["sdp"]


async def test_an_unanswered_subscription_gets_no_output() -> None:
    engine = MemoryMediaEngine(port_min=30000, port_max=30100)
    registry = CallRegistry(engine, address="127.0.0.1")
    await registry.handle({"command": "offer", "call-id": "c1", "from-tag": "ft",
                           "sdp": audio_sdp("127.0.0.1", 40000)})
    await registry.handle({"command": "answer", "call-id": "c1", "from-tag": "ft",
                           "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", 40100)})
    await registry.handle({"command": "subscribe request", "call-id": "c1", "from-tag": "ft"})
    sealer = Sealer(os.urandom(32))
    back = decode(encode(CallRecord(registry.calls["c1"], "n"), sealer), sealer).call
    restored = MemoryMediaEngine(port_min=30000, port_max=30100)
    await CallRegistry(restored, address="127.0.0.1").adopt(back)
    assert len(back.parties) == 3
    assert all(s.outputs == [] for s in restored.streams.values())


async def test_a_record_without_the_new_fields_still_reads() -> None:
    """A node upgraded across the restart reads what the old version wrote."""
    registry = CallRegistry(MemoryMediaEngine(port_min=30000, port_max=30100),
                            address="127.0.0.1")
    await _call_with_supervisor(registry)
    sealer = Sealer(os.urandom(32))
    body = json.loads(encode(CallRecord(registry.calls["c1"], "n"), sealer))
    for party in body["call"]["parties"]:
        del party["subscriber"], party["final"]
        for media in party["medias"]:
            for name in ("source", "mux_required", "remote", "section", "srtp_index"):
                del media[name]
    back = decode(json.dumps(body).encode(), sealer).call
    assert len(back.parties) == 3 and not any(p.subscriber for p in back.parties.values())
    assert all(m.recv_index is None and m.section is None
               for p in back.parties.values() for m in p.medias)


async def test_a_record_that_cannot_be_configured_does_not_keep_the_others_down(
        tmp_path: Path, media_ports: tuple[int, int]) -> None:
    """One call's record names an SRTP suite this build cannot run: that call is not restored
    (its record deleted, none of its ports left bound), the other call is."""
    key_file = tmp_path / "store.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    store = MemoryStore()
    engine = LocalMediaEngine("127.0.0.1", *media_ports)
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1")
    state = await NodeState.open(url="memory://", key_file=str(key_file), node="n",
                                 registry=registry, payments=PaymentManager(None), store=store)
    for call_id in ("good", "bad"):
        key = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1)
        await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "ft",
                               "sdp": audio_sdp("127.0.0.1", 40000, proto="RTP/SAVP",
                                                crypto=[key])})
        await registry.handle({"command": "answer", "call-id": call_id, "from-tag": "ft",
                               "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", 40100)})
    bad_ports = [m.local.rtp_port for p in registry.calls["bad"].parties.values()
                 for m in p.medias]
    assert await state.sync.flush()
    await state.stop()
    await registry.close()
    await engine.stop()
    record = json.loads(store.records["bad"])
    for party in record["call"]["parties"]:
        for media in party["medias"]:
            if media["config"]["srtp_recv"]:
                media["config"]["srtp_recv"]["suite"] = "NOT_A_SUITE"
    store.records["bad"] = json.dumps(record).encode()

    engine = LocalMediaEngine("127.0.0.1", *media_ports)
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1")
    try:
        state = await NodeState.open(url="memory://", key_file=str(key_file), node="n",
                                     registry=registry, payments=PaymentManager(None),
                                     store=store)
        assert state.restored == ["good"] and set(registry.calls) == {"good"}
        for port in bad_ports:  # released again: a new stream may take it
            await engine.allocate(f"probe-{port}", "probe", rtcp_mux=False, port=port)
        assert await state.sync.flush()
        assert "bad" not in store.records  # its record deleted (logged)
        await state.stop()
    finally:
        await registry.close()
        await engine.stop()
