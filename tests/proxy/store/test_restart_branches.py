"""Forked branches survive a restart mid-ring: the to-tags of branches a later branch's answer
replaced (``Call.branches``) are in the call's record, so the restored call still tells the
dropped branch's dialog from the followed one — the dropped branch's CANCEL/BYE (a delete
naming it, from either side) leaves the call's media alone instead of ending the call."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from proxy.control.calls import CallRegistry
from proxy.control.ng_client import NgClient
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.memory import MemoryMediaEngine
from proxy.store.records import CallRecord, decode, encode
from proxy.store.sealing import Sealer
from tests.proxy.control.sip_peers import card_audio
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import cluster, stored

CARD = "4111111111111111"


async def _forked(registry: CallRegistry) -> None:
    """Offer, an early answer from branch B1, then B2's: the call follows B2, B1 is a branch."""
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "A",
                           "sdp": audio_sdp("127.0.0.1", 4000)})
    for tag, port in (("B1", 5000), ("B2", 6000)):
        await registry.handle({"command": "answer", "call-id": "c", "from-tag": "A",
                               "to-tag": tag, "sdp": audio_sdp("127.0.0.2", port)})


async def test_a_records_branches_come_back_and_an_older_record_reads_as_none() -> None:
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    await _forked(registry)
    assert registry.calls["c"].branches == {"B1"}
    sealer = Sealer(os.urandom(32))
    data = encode(CallRecord(registry.calls["c"], "n"), sealer)
    assert json.loads(data)["call"]["branches"] == ["B1"]
    back = decode(data, sealer).call
    assert back.branches == {"B1"} and set(back.parties) == {"A", "B2"}
    # Written by the version before the field: reads as a call without dropped branches.
    body = json.loads(data)
    del body["call"]["branches"]
    assert decode(json.dumps(body).encode(), sealer).call.branches == set()


# --- a real node, killed mid-ring ----------------------------------------------------------


@pytest.mark.peer
@pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")
async def test_kill_9_mid_ring_with_two_branches_the_dropped_branchs_delete_keeps_the_call(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    async with cluster(tmp_path, store_key) as c:
        node = c.node("node-a", store_url=redis_server.url, media_ports=media_ports)
        await node.start()
        await node.ready()
        caller = await RtpPeer(seed=61).start()
        dropped, kept = await RtpPeer(seed=62).start(), await RtpPeer(seed=63).start()
        ng = await NgClient.connect(node.ng)

        async def request(body: dict) -> dict:
            return await ng.request({"call-id": "fork-1", **body})

        try:
            offer = await request({"command": "offer", "from-tag": "caller",
                                   "label": "customer",
                                   "sdp": audio_sdp("127.0.0.1", caller.port)})
            # Two 183s with SDP (early media) from two forked phones; no final answer yet.
            answers = [await request({"command": "answer", "from-tag": "caller",
                                      "to-tag": tag, "label": "agent",
                                      "sdp": audio_sdp("127.0.0.1", phone.port)})
                       for tag, phone in (("dropped", dropped), ("kept", kept))]
            to_toneguard = media_endpoint(answers[1]["sdp"])
            record = await stored(redis_server, "fork-1", lambda r: "kept" in {
                p["tag"] for p in r["call"]["parties"]})
            assert record["call"].get("branches") == ["dropped"]

            await node.kill9()
            await node.start()
            await node.ready()
            assert (await request({"command": "list"}))["calls"] == ["fork-1"]

            # The dropped fork's dialog ends (its BYE/CANCEL, named from either side): the
            # call stays — without the branch in the record the second delete's to-tag
            # ("caller") names a party and would end the whole call.
            for tags in ({"from-tag": "caller", "to-tag": "dropped"},
                         {"from-tag": "dropped", "to-tag": "caller"}):
                reply = await request({"command": "delete", **tags})
                assert reply["result"] == "ok" and "warning" not in reply, reply
                assert "totals" in reply
            assert (await request({"command": "list"}))["calls"] == ["fork-1"]

            # The kept branch's media goes on, the caller's card masked; the dropped phone
            # hears nothing.
            audio = card_audio(CARD)
            sent = await caller.play(audio, to_toneguard)
            await kept.wait_for(int(0.9 * sent), timeout=10)
            heard = kept.received.audio()
            assert heard.size > 0.9 * audio.size
            assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
            assert leaked_ms(heard) == 0.0
            assert dropped.received.packets == []
            assert media_endpoint(offer["sdp"])[0] == "127.0.0.1"

            # The kept dialog's BYE ends the call; its record goes.
            reply = await request({"command": "delete", "from-tag": "caller",
                                   "to-tag": "kept"})
            assert "warning" not in reply and "totals" in reply
            assert (await request({"command": "list"}))["calls"] == []
        finally:
            ng.close()
            for phone in (caller, dropped, kept):
                phone.close()
