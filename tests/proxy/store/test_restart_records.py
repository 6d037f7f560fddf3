"""What a call record carries for the restore path: every party (a subscription as one, with
its source and its output once answered), the SRTP indexes the engine reported, the last media
section without its keys; a record written before these fields existed still reads."""

from __future__ import annotations

import base64
import json
import os

from proxy.control import sdes
from proxy.control.calls import CallRegistry
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine
from proxy.media.types import SrtpIndex, SrtpIndexEvent
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
