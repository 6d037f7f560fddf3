"""Which dialog a ``delete`` ends: its from-tag / to-tag matched as rtpengine 10.5 matches them
(``call_delete_branch``), and a forked branch the call no longer follows ends alone.

Two branches of a parallel fork both answer 200 (Kamailio 5.6 sends no ``SIP code``, so the
second answer is a branch, and media follows it); the caller ACKs both and BYEs the one it does
not keep (RFC 3261 §13.2.2.4). rtpengine 10.5, measured with the same ng sequence: the delete
for the dropped branch (from-tag caller, to-tag branch) is answered ``ok`` with the call's
statistics and the call stays; a tag it does not know is answered ``ok`` + ``warning: Call-ID
not found or tags didn't match`` (an error with ``fatal``) and nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dsp import tones
from proxy.control import ng
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.ng_client import NgClient
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.memory import MemoryMediaEngine
from proxy.service.config import load_config
from proxy.service.serve import Node
from tests.proxy.control import sip_peers

NOT_MATCHED = {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
CARD = "4111111111111111"


def _answer(to_tag: str, port: int) -> dict[str, Any]:
    return {"command": "answer", "call-id": "c", "from-tag": "A", "to-tag": to_tag,
            "sdp": audio_sdp("127.0.0.2", port)}


OFFER = {"command": "offer", "call-id": "c", "from-tag": "A",
         "sdp": audio_sdp("127.0.0.1", 4000)}
ANSWERED = [_answer("B", 5000)]
FORKED = [_answer("B1", 5000), _answer("B2", 6000)]  # both 200: media follows B2
FORKED_BACK = [*FORKED, _answer("B1", 5000)]  # B1's 200 again: followed again


@pytest.mark.parametrize(("answers", "tags", "ends_call"), [
    # rtpengine's rules
    (ANSWERED, {}, True),  # no from-tag: the whole call
    (ANSWERED, {"from-tag": "A"}, True),
    (ANSWERED, {"from-tag": "A", "to-tag": "B"}, True),  # the caller's BYE
    (ANSWERED, {"from-tag": "B", "to-tag": "A"}, True),  # the agent's BYE
    (ANSWERED, {"from-tag": "X", "to-tag": "A"}, True),  # the to-tag decides
    (ANSWERED, {"from-tag": "A", "to-tag": "X"}, False),  # a to-tag it does not know
    (ANSWERED, {"from-tag": "X"}, False),
    ([], {"from-tag": "A", "to-tag": "X"}, True),  # unanswered: a rejecting branch's reply
    # forked: the branch the call does not follow ends alone, named from either side
    (FORKED, {"from-tag": "A", "to-tag": "B1"}, False),
    (FORKED, {"from-tag": "B1", "to-tag": "A"}, False),
    (FORKED, {"from-tag": "A", "to-tag": "B2"}, True),
    (FORKED, {"from-tag": "B2", "to-tag": "A"}, True),
    (FORKED_BACK, {"from-tag": "A", "to-tag": "B2"}, False),
    (FORKED_BACK, {"from-tag": "A", "to-tag": "B1"}, True),
], ids=["no-tags", "from-only", "caller-bye", "agent-bye", "unknown-from", "unknown-to",
        "unknown-from-only", "unanswered", "fork-dropped", "fork-dropped-its-bye",
        "fork-followed", "fork-followed-its-bye", "fork-back-dropped", "fork-back-followed"])
async def test_a_delete_ends_the_call_only_when_its_tags_name_the_followed_dialog(
        answers: list[dict[str, Any]], tags: dict[str, str], ends_call: bool) -> None:
    engine = MemoryMediaEngine()
    registry = CallRegistry(engine, address="127.0.0.1", policy=CallPolicy())
    await registry.handle(OFFER)
    for answer in answers:
        await registry.handle(answer)
    parties = set(registry.calls["c"].parties)
    streams = set(engine.streams)
    reply = await registry.handle({"command": "delete", "call-id": "c", **tags})
    assert reply["result"] == "ok"
    if ends_call:
        assert "warning" not in reply and "totals" in reply
        assert registry.calls == {} and engine.streams == {}
        return
    assert set(registry.calls["c"].parties) == parties and set(engine.streams) == streams
    unknown = "X" in tags.values()
    if unknown:  # rtpengine's answer for tags it does not know; an error with ``fatal``
        assert reply == NOT_MATCHED
        with pytest.raises(ng.NgError, match="Call-ID not found or tags didn't match"):
            await registry.handle({"command": "delete", "call-id": "c", "flags": ["fatal"],
                                   **tags})
    else:  # a branch rtpengine knows too: the call's statistics, the call stays
        assert "warning" not in reply and "totals" in reply and "tags" in reply
    assert set(registry.calls["c"].parties) == parties and set(engine.streams) == streams


# --- over ng, with media -----------------------------------------------------------------------


@pytest.fixture
async def node(free_udp_port: int, media_ports: tuple[int, int]) -> AsyncIterator[Node]:
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{free_udp_port}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1], "workers": 1},
        "masking": {"caller": "offerer"},
    })
    node = await Node.start(config, api=False)
    yield node
    await node.stop()


async def test_deleting_the_dropped_forks_dialog_over_ng_keeps_the_kept_dialogs_media_masked(
        node: Node) -> None:
    client = await NgClient.connect(node.ng_address)
    caller = await RtpPeer(seed=51).start()
    dropped, kept = await RtpPeer(seed=52).start(), await RtpPeer(seed=53).start()

    async def request(body: dict[str, Any]) -> dict[str, Any]:
        return await client.request({"call-id": "fork", **body})

    try:
        offer = await request({"command": "offer", "from-tag": "caller",
                               "sdp": audio_sdp("127.0.0.1", caller.port)})
        answers = [await request({"command": "answer", "from-tag": "caller", "to-tag": tag,
                                  "sdp": audio_sdp("127.0.0.1", phone.port)})
                   for tag, phone in (("dropped", dropped), ("kept", kept))]
        to_toneguard = media_endpoint(answers[1]["sdp"])
        assert media_endpoint(answers[0]["sdp"]) == to_toneguard  # one port for every branch
        # The caller BYEs the dialog it does not keep; that side may send its own BYE too.
        for tags in ({"from-tag": "caller", "to-tag": "dropped"},
                     {"from-tag": "dropped", "to-tag": "caller"}):
            reply = await request({"command": "delete", **tags})
            assert "warning" not in reply and "totals" in reply
        assert (await request({"command": "list"}))["calls"] == ["fork"]
        # The kept dialog's media goes on both ways, the caller's card masked.
        audio = sip_peers.card_audio(CARD)
        sent, answered = await asyncio.gather(
            caller.play(audio, to_toneguard),
            kept.play(tones.sine(440, 1000, -20.0), media_endpoint(offer["sdp"])))
        await kept.wait_for(sent, timeout=5)
        await caller.wait_for(answered, timeout=5)
        heard = kept.received.audio()
        assert heard.size > 0.9 * audio.size
        assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
        assert leaked_ms(heard) == 0.0
        assert dropped.received.packets == []
        # The kept dialog's BYE ends the call.
        reply = await request({"command": "delete", "from-tag": "caller", "to-tag": "kept"})
        assert "warning" not in reply and "totals" in reply
        assert (await request({"command": "list"}))["calls"] == []
    finally:
        client.close()
        for phone in (caller, dropped, kept):
            phone.close()
