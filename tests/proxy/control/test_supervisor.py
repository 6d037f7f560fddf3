"""A supervisor on a call, over ng and the in-memory engine: ``subscribe request`` /
``subscribe answer`` / ``unsubscribe`` (rtpengine's model: a new party that receives a copy of
a party's media and sends nothing), and what plain offer/answer refuses.

The copy is an extra *output* of the selected party's stream: the packets its linked stream
(the agent) gets, after masking, so a supervisor hears the customer masked. Real media through
a node: tests/proxy/control/test_supervisor_media.py; with Kamailio and sipp:
tests/proxy/control/test_kamailio_directions.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.control import ng, sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import parse
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine

SUP = "sup"
AGENT = "c/~/0"  # the answerer's stream ids keep the tag they were made under (the pending one)


def _registry(**policy: Any) -> tuple[CallRegistry, MemoryMediaEngine]:
    engine = MemoryMediaEngine()
    return CallRegistry(engine, address="127.0.0.1", policy=CallPolicy(**policy)), engine


async def _call(registry: CallRegistry, **offer: Any) -> None:
    """The customer (``cust``) calls in; the agent (``agent``) answers with a final 200."""
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "cust",
                           "sdp": audio_sdp("127.0.0.1", 4000), **offer})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                           "to-tag": "agent", "sip-code": 200,
                           "sdp": audio_sdp("127.0.0.1", 4002)})


async def _subscribe(registry: CallRegistry, port: int = 4010, **request: Any) -> dict[str, Any]:
    offer = await registry.handle({"command": "subscribe request", "call-id": "c",
                                   "from-tag": "cust", "to-tag": SUP, **request})
    assert offer["result"] == "ok"
    answer = await registry.handle({"command": "subscribe answer", "call-id": "c",
                                    "to-tag": offer["to-tag"],
                                    "sdp": audio_sdp("127.0.0.1", port)})
    assert answer == {"result": "ok"}
    return offer


def _snapshot(engine: MemoryMediaEngine) -> dict[str, Any]:
    return {sid: (s.config, s.linked, list(s.outputs)) for sid, s in engine.streams.items()}


async def test_a_supervisor_gets_an_output_of_the_customers_masked_stream() -> None:
    registry, engine = _registry()
    await _call(registry, **{"from-label": "customer"})
    offer = await _subscribe(registry)
    assert offer["to-tag"] == SUP and offer["from-tags"] == ["cust"]
    section = parse(offer["sdp"]).media[0]
    assert section.has_attribute("sendonly") and not section.has_attribute("sendrecv")
    assert set(section.codecs().values()) <= {"PCMU", "PCMA", "telephone-event", "CN"}
    sup_stream = registry.calls["c"].parties[SUP].medias[0]
    assert section.port == sup_stream.local.rtp_port
    customer = engine.streams["c/cust/0"]
    # The agent keeps the customer's stream (not cut); the supervisor gets the same packets.
    assert customer.linked == AGENT and engine.streams[AGENT].linked == "c/cust/0"
    assert customer.outputs == [sup_stream.stream_id]
    assert customer.config.masking is not None and customer.config.masking.effective
    sup = engine.streams[sup_stream.stream_id].config
    assert sup.peer == ("127.0.0.1", 4010)
    assert sup.masking is None and sup.recording is None  # no second copy to the recorder
    assert engine.streams[sup_stream.stream_id].linked is None  # what it sends goes nowhere


async def test_no_output_until_the_subscription_is_answered() -> None:
    registry, engine = _registry()
    await _call(registry)
    await registry.handle({"command": "subscribe request", "call-id": "c",
                           "from-tag": "cust", "to-tag": SUP})
    assert engine.streams["c/cust/0"].outputs == []


async def test_a_subscribers_label_cannot_change_who_is_masked() -> None:
    """A subscription labelled ``customer`` (or sitting in a customer network) is not the
    customer: the decision is taken among the dialogue's parties only."""
    registry, engine = _registry()
    await _call(registry, **{"from-label": "customer"})
    await _subscribe(registry, **{"set-label": "customer"})
    await registry.handle({"command": "block DTMF", "call-id": "c", "label": "customer"})
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "cust",
                           "to-tag": "agent", "sdp": audio_sdp("127.0.0.1", 4000)})
    masking = engine.streams["c/cust/0"].config.masking
    assert masking is not None and masking.effective
    assert engine.streams[AGENT].config.masking is None


async def test_all_subscribes_to_both_parties_one_media_section_each() -> None:
    registry, engine = _registry()
    await _call(registry)
    offer = await registry.handle({"command": "subscribe request", "call-id": "c",
                                   "flags": ["all"]})
    assert offer["from-tags"] == ["cust", "agent"] and offer["to-tag"].startswith("sub-")
    assert len(parse(offer["sdp"]).media) == 2
    two = audio_sdp("127.0.0.1", 4010) + audio_sdp("127.0.0.1", 4012).split("t=0 0\r\n", 1)[1]
    await registry.handle({"command": "subscribe answer", "call-id": "c",
                           "to-tag": offer["to-tag"], "sdp": two})
    tag = offer["to-tag"]
    assert engine.streams["c/cust/0"].outputs == [f"c/{tag}/0"]
    assert engine.streams[AGENT].outputs == [f"c/{tag}/1"]


async def test_an_srtp_subscription_gets_its_own_keys() -> None:
    registry, engine = _registry()
    await _call(registry)
    offer = await registry.handle({"command": "subscribe request", "call-id": "c",
                                   "from-tag": "cust", "to-tag": SUP,
                                   "transport-protocol": "RTP/SAVP"})
    section = parse(offer["sdp"]).media[0]
    assert section.proto == "RTP/SAVP"
    ours = sdes.offered(section.attributes("crypto"))
    theirs = sdes.generate(ours[0].suite, ours[0].tag)
    await registry.handle({"command": "subscribe answer", "call-id": "c", "to-tag": SUP,
                           "sdp": audio_sdp("127.0.0.1", 4010, proto="RTP/SAVP",
                                            crypto=[theirs])})
    config = engine.streams[f"c/{SUP}/0"].config
    assert config.srtp_send == ours[0].params and config.srtp_recv == theirs.params


async def test_unsubscribe_ends_the_copy_and_the_agent_keeps_the_call() -> None:
    """The supervisor leaves: its streams are released, the customer's output is gone, the
    customer and the agent are linked as before."""
    registry, engine = _registry()
    await _call(registry)
    before = _snapshot(engine)
    await _subscribe(registry)
    reply = await registry.handle({"command": "unsubscribe", "call-id": "c", "to-tag": SUP})
    assert reply == {"result": "ok"}
    assert f"c/{SUP}/0" in engine.released and SUP not in registry.calls["c"].parties
    assert _snapshot(engine) == before
    with pytest.raises(ng.NgError, match="Unknown subscription to-tag"):
        await registry.handle({"command": "unsubscribe", "call-id": "c", "to-tag": SUP})


async def test_the_agent_leaving_deletes_the_call_with_its_subscriptions() -> None:
    """The original agent hangs up: the call is deleted (Kamailio's delete), and with it the
    supervisor's streams: the supervisor cannot go on listening to the customer alone."""
    registry, engine = _registry()
    await _call(registry)
    await _subscribe(registry)
    reply = await registry.handle({"command": "delete", "call-id": "c"})
    assert SUP in reply["tags"]
    assert engine.streams == {} and registry.calls == {}
    assert f"c/{SUP}/0" in engine.released


async def test_a_repeated_to_tag_replaces_the_subscription() -> None:
    registry, engine = _registry()
    await _call(registry)
    await _subscribe(registry, port=4010)
    await _subscribe(registry, port=4020, **{"from-tag": "agent"})
    assert engine.streams["c/cust/0"].outputs == []
    assert engine.streams[AGENT].outputs == [f"c/{SUP}/0"]
    assert engine.streams[f"c/{SUP}/0"].config.peer == ("127.0.0.1", 4020)


async def test_a_re_invite_keeps_the_supervisor() -> None:
    """A re-INVITE (hold, resume, transfer of the agent leg) re-links the dialogue's streams;
    the customer's output to the supervisor stays."""
    registry, engine = _registry()
    await _call(registry)
    await _subscribe(registry)
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "agent",
                           "to-tag": "cust", "sdp": audio_sdp("127.0.0.1", 5002)})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "agent",
                           "to-tag": "cust", "sdp": audio_sdp("127.0.0.1", 4000)})
    assert engine.streams["c/cust/0"].outputs == [f"c/{SUP}/0"]
    assert engine.streams["c/cust/0"].linked == AGENT
    assert engine.streams[AGENT].config.peer == ("127.0.0.1", 5002)


@pytest.mark.parametrize(("body", "reason"), [
    ({"command": "subscribe request", "call-id": "c", "from-tag": "cust",
      "flags": ["bidirectional"]}, "bidirectional subscriptions are not supported"),
    ({"command": "subscribe request", "call-id": "c", "from-tag": "nobody"}, "Unknown from-tag"),
    ({"command": "subscribe request", "call-id": "c", "from-tags": ["cust", "nobody"]},
     "Unknown from-tag 'nobody'"),
    ({"command": "subscribe request", "call-id": "c"}, "No call participant selected"),
    ({"command": "subscribe request", "call-id": "c", "from-tag": "cust", "to-tag": "agent"},
     "is a party of the call, not a subscription"),
    ({"command": "subscribe request", "call-id": "gone", "from-tag": "cust"}, "Unknown call-ID"),
    ({"command": "subscribe answer", "call-id": "c", "to-tag": "agent",
      "sdp": audio_sdp("127.0.0.1", 4010)}, "Unknown subscription to-tag 'agent'"),
    ({"command": "subscribe answer", "call-id": "c", "to-tag": "nobody",
      "sdp": audio_sdp("127.0.0.1", 4010)}, "Unknown subscription to-tag"),
    ({"command": "unsubscribe", "call-id": "c", "to-tag": "cust"},
     "Unknown subscription to-tag 'cust'"),
    ({"command": "unsubscribe", "call-id": "c"}, "to-tag"),
])
async def test_bad_subscription_requests_are_refused_and_change_nothing(
        body: dict[str, Any], reason: str) -> None:
    registry, engine = _registry()
    await _call(registry)
    before = _snapshot(engine)
    with pytest.raises(ng.NgError, match=reason):
        await registry.handle(body)
    assert _snapshot(engine) == before and set(registry.calls["c"].parties) == {"cust", "agent"}


async def test_a_subscription_answer_that_accepts_no_offered_codec_is_refused() -> None:
    registry, engine = _registry()
    await _call(registry)
    await registry.handle({"command": "subscribe request", "call-id": "c",
                           "from-tag": "cust", "to-tag": SUP})
    g729 = audio_sdp("127.0.0.1", 4010).replace("m=audio 4010 RTP/AVP 0 8 101",
                                                "m=audio 4010 RTP/AVP 18")
    with pytest.raises(ng.NgError, match="none of the offered codecs"):
        await registry.handle({"command": "subscribe answer", "call-id": "c", "to-tag": SUP,
                               "sdp": g729})
    assert engine.streams["c/cust/0"].outputs == []


async def test_a_subscription_tag_cannot_offer_or_answer() -> None:
    registry, engine = _registry()
    await _call(registry)
    await _subscribe(registry)
    before = _snapshot(engine)
    with pytest.raises(ng.NgError, match="is a subscription"):
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": SUP,
                               "sdp": audio_sdp("127.0.0.1", 4010)})
    with pytest.raises(ng.NgError, match="is a subscription"):
        await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                               "to-tag": SUP, "sdp": audio_sdp("127.0.0.1", 4010)})
    assert _snapshot(engine) == before


# --- what plain offer/answer cannot model ------------------------------------------------------

async def test_a_third_from_tag_offering_is_refused_and_the_call_untouched() -> None:
    """Linking a third party by offer would take the customer's stream from the agent."""
    registry, engine = _registry()
    await _call(registry)
    before = _snapshot(engine)
    with pytest.raises(ng.NgError, match=r"a third party .* cannot join by offer"):
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": "third",
                               "sdp": audio_sdp("127.0.0.1", 4004)})
    assert _snapshot(engine) == before and set(registry.calls["c"].parties) == {"cust", "agent"}


async def test_a_third_from_tag_is_refused_before_the_answer_too() -> None:
    registry, engine = _registry()
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "cust",
                           "sdp": audio_sdp("127.0.0.1", 4000)})
    with pytest.raises(ng.NgError, match="third party"):
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": "third",
                               "sdp": audio_sdp("127.0.0.1", 4004)})
    assert len(engine.streams) == 2


async def test_a_second_final_answer_from_another_to_tag_is_refused() -> None:
    """After a 200 (``SIP code``), another to-tag is a second party on the ports offered to
    the first: refused, and the agent who answered keeps the customer."""
    registry, engine = _registry()
    await _call(registry)
    before = _snapshot(engine)
    with pytest.raises(ng.NgError, match="Call already answered by to-tag 'agent'"):
        await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                               "to-tag": "second", "sip-code": 200,
                               "sdp": audio_sdp("127.0.0.1", 4006)})
    assert _snapshot(engine) == before and set(registry.calls["c"].parties) == {"cust", "agent"}


@pytest.mark.parametrize("first", [
    {"sip-code": 183},
    {"sip-code": 200, "flags": ["provisional"]},
    {},  # no SIP code (Kamailio 5.6 sends none): rtpengine treats the new to-tag as a branch
])
async def test_another_branch_may_answer_after_an_early_answer(first: dict[str, Any]) -> None:
    registry, engine = _registry()
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "cust",
                           "sdp": audio_sdp("127.0.0.1", 4000)})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                           "to-tag": "early", "sdp": audio_sdp("127.0.0.1", 4002), **first})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                           "to-tag": "winner", "sip-code": 200,
                           "sdp": audio_sdp("127.0.0.1", 4006)})
    assert set(registry.calls["c"].parties) == {"cust", "winner"}
    assert engine.streams["c/~/0"].config.peer == ("127.0.0.1", 4006)


async def test_a_subscription_under_a_retagged_partys_old_tag_gets_streams_of_its_own() -> None:
    """A retagged party keeps the stream ids made under its old tag (here the customer, when
    an answer names another tag for it); a subscription that takes the old tag must not share
    (and on ``unsubscribe`` release) them."""
    registry, engine = _registry()
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "cust",
                           "sdp": audio_sdp("127.0.0.1", 4000)})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "cust",
                           "to-tag": "agent", "sdp": audio_sdp("127.0.0.1", 4002)})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "agent",
                           "to-tag": "cust2", "sdp": audio_sdp("127.0.0.1", 4000)})
    assert registry.calls["c"].parties["cust2"].medias[0].stream_id == "c/cust/0"
    await _subscribe(registry, **{"from-tag": "cust2", "to-tag": "cust"})
    sub_stream = registry.calls["c"].parties["cust"].medias[0].stream_id
    assert sub_stream != "c/cust/0" and engine.streams["c/cust/0"].outputs == [sub_stream]
    await registry.handle({"command": "unsubscribe", "call-id": "c", "to-tag": "cust"})
    assert "c/cust/0" in engine.streams and sub_stream not in engine.streams
    assert engine.streams["c/cust/0"].linked == AGENT


async def test_the_pending_tag_cannot_name_a_subscription() -> None:
    registry, _ = _registry()
    await _call(registry)
    with pytest.raises(ng.NgError, match="Invalid to-tag"):
        await registry.handle({"command": "subscribe request", "call-id": "c",
                               "from-tag": "cust", "to-tag": "~"})


async def test_every_subscription_command_marks_the_call_for_the_shared_store() -> None:
    """A subscription is call state: a restart restores it only if the store writer was told.
    (It once was not: a subscription made later than the answer's write batch was lost.)"""
    registry, _ = _registry()
    await _call(registry)
    marked: list[str] = []
    registry.on_state = marked.append
    await _subscribe(registry)
    assert marked == ["c", "c"]  # subscribe request, subscribe answer
    await registry.handle({"command": "query", "call-id": "c"})
    await registry.handle({"command": "list"})
    assert marked == ["c", "c"]  # reading a call changes nothing
    await registry.handle({"command": "unsubscribe", "call-id": "c", "to-tag": SUP})
    assert marked == ["c", "c", "c"]
