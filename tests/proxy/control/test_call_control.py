"""Call control over the in-memory media engine: masking decisions, codecs, keys, capture."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from proxy.control import ng, sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import parse
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine
from proxy.media.policy import DtmfSecurityMode
from proxy.media.types import DigitEvent

CUSTOMER_NET = "198.51.100.0/24"


def _registry(**policy: Any) -> tuple[CallRegistry, MemoryMediaEngine]:
    engine = MemoryMediaEngine()
    return CallRegistry(engine, address="127.0.0.1", policy=CallPolicy(**policy)), engine


async def _call(registry: CallRegistry, *, offer: dict[str, Any] | None = None,
                answer: dict[str, Any] | None = None, offer_sdp: str | None = None,
                answer_sdp: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    o = await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                               "sdp": offer_sdp or audio_sdp("127.0.0.1", 4000),
                               **(offer or {})})
    a = await registry.handle({"command": "answer", "call-id": "c", "from-tag": "ft",
                               "to-tag": "tt", "sdp": answer_sdp or audio_sdp("127.0.0.1", 4002),
                               **(answer or {})})
    return o, a


def _masked(registry: CallRegistry, tag: str) -> bool | None:
    """True: masked; False: inspected, not masked; None: plain relay."""
    policy = registry.calls["c"].parties[tag].medias[0].config.masking
    return None if policy is None else policy.effective


async def test_with_no_hint_every_party_is_masked_and_the_rule_is_logged() -> None:
    registry, _ = _registry()
    from structlog.testing import capture_logs
    with capture_logs() as logs:
        await _call(registry)
    assert _masked(registry, "ft") is True and _masked(registry, "tt") is True
    decided = [e for e in logs if e["event"] == "dtmf masking decided"]
    assert len(decided) == 1 and decided[0]["rule"] == "no hint: every party masked"


@pytest.mark.parametrize(("hint", "masked_ft", "masked_tt"), [
    ({"offer": {"flags": ["caller-offerer"]}}, True, None),
    ({"offer": {"flags": ["caller-answerer"]}}, None, True),
    ({"offer": {"flags": ["caller-none"]}}, None, None),
    ({"offer": {"from-label": "customer"}}, True, None),
    ({"offer": {"label": "agent"}}, None, True),  # outbound: the agent side offers
    ({"answer": {"to-label": "customer"}}, None, True),  # outbound: the customer answers
    ({"offer": {"to-label": "CUSTOMER"}}, None, True),
])
async def test_hints_narrow_who_is_masked(hint: dict[str, dict[str, Any]],
                                          masked_ft: bool | None,
                                          masked_tt: bool | None) -> None:
    registry, _ = _registry()
    await _call(registry, **hint)
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (masked_ft, masked_tt)


async def test_a_party_in_a_customer_network_is_the_customer_whichever_side_offers() -> None:
    registry, _ = _registry(customer_networks=(ipaddress.ip_network(CUSTOMER_NET),))
    # Outbound: the contact centre (10.x) offers, the customer (198.51.100.7) answers.
    await _call(registry, offer_sdp=audio_sdp("10.1.1.1", 4000),
                answer_sdp=audio_sdp("198.51.100.7", 4002))
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (None, True)


async def test_the_call_flag_wins_over_labels_and_labels_over_the_node_setting() -> None:
    registry, _ = _registry(caller="answerer")
    await _call(registry, offer={"flags": ["caller-offerer"], "to-label": "customer"})
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (True, None)
    registry, _ = _registry(caller="answerer")
    await _call(registry, offer={"from-label": "customer"})
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (True, None)
    registry, _ = _registry(caller="answerer")
    await _call(registry)
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (None, True)


@pytest.mark.parametrize("spelling", ["pcmu", "Pcmu", "PCMU"])
async def test_offers_keep_only_codecs_masking_can_inspect_in_any_spelling(spelling: str) -> None:
    registry, engine = _registry()
    sdp = audio_sdp("127.0.0.1", 4000, payload_types=(9, 0, 96, 101)).replace(
        "a=rtpmap:0 PCMU/8000", f"a=rtpmap:0 {spelling}/8000").replace(
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:96 opus/48000/2\r\na=rtpmap:101 TELEPHONE-EVENT/8000")
    offer, _ = await _call(registry, offer_sdp=sdp)
    section = parse(offer["sdp"]).media[0]
    assert section.formats == ["0", "101"]  # G722 and opus are gone, order kept
    assert not [v for v in section.attributes("rtpmap") if v.startswith(("9 ", "96 "))]
    assert engine.streams["c/ft/0"].config.codecs == {0: "PCMU", 9: "G722", 96: "opus",
                                                      101: "telephone-event"}


async def test_an_offer_with_no_inspectable_codec_is_refused_while_masking_applies() -> None:
    registry, engine = _registry()
    with pytest.raises(ng.NgError, match="no codec ToneGuard can inspect"):
        await _call(registry, offer_sdp=audio_sdp("127.0.0.1", 4000, payload_types=(9, 18)))
    assert registry.calls == {} and engine.streams == {}
    registry, _ = _registry()
    offer, _ = await _call(registry, offer={"flags": ["caller-none"]},
                           offer_sdp=audio_sdp("127.0.0.1", 4000, payload_types=(9, 18)))
    assert parse(offer["sdp"]).media[0].formats == ["9", "18"]  # nobody masked: untouched


async def test_sdes_keys_stay_the_same_across_re_offers_and_re_answers() -> None:
    registry, _ = _registry()
    caller_key = sdes.generate("AES_CM_128_HMAC_SHA1_80")
    offer_sdp = audio_sdp("127.0.0.1", 4000, proto="RTP/SAVP", crypto=[caller_key])

    async def exchange() -> tuple[list[sdes.CryptoAttribute], list[sdes.CryptoAttribute]]:
        offer = await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                                       "sdp": offer_sdp})
        offered = sdes.offered(parse(offer["sdp"]).media[0].attributes("crypto"))
        pick = next(c for c in offered if c.suite == "AES_CM_128_HMAC_SHA1_80")
        agent_key = sdes.generate(pick.suite, pick.tag)
        answer = await registry.handle({
            "command": "answer", "call-id": "c", "from-tag": "ft", "to-tag": "tt",
            "sdp": audio_sdp("127.0.0.1", 4002, proto="RTP/SAVP", crypto=[agent_key])})
        return offered, sdes.offered(parse(answer["sdp"]).media[0].attributes("crypto"))

    first_offer, first_answer = await exchange()
    chosen = next(c for c in first_offer if c.suite == "AES_CM_128_HMAC_SHA1_80")
    for _ in range(3):  # hold, resume, hold again
        offer, answer = await exchange()
        assert answer == first_answer  # the caller's key, suite and tag: unchanged
        assert set(offer) == set(first_offer)  # every suite keeps its key and tag ...
        assert offer[0] == chosen  # ... and the one in use is offered first


async def test_capture_forces_masking_and_unblock_is_refused_until_it_ends() -> None:
    registry, _ = _registry()
    await _call(registry, offer={"from-label": "customer"})
    await registry.handle({"command": "unblock DTMF", "call-id": "c", "label": "customer"})
    assert _masked(registry, "ft") is False
    await registry.set_capture("c", True)
    assert _masked(registry, "ft") is True  # whatever unblock said
    with pytest.raises(ng.NgError, match="capturing card data"):
        await registry.handle({"command": "unblock DTMF", "call-id": "c"})
    assert _masked(registry, "ft") is True
    # The agent's own DTMF may still be unblocked during the capture.
    await registry.handle({"command": "unblock DTMF", "call-id": "c", "to-tag": "tt"})
    # A re-INVITE during capture does not undo it.
    await _call(registry, offer={"from-label": "customer"})
    assert _masked(registry, "ft") is True
    await registry.set_capture("c", False)
    assert _masked(registry, "ft") is False  # back to what unblock said
    with pytest.raises(LookupError):
        await registry.set_capture("nope", True)


async def test_block_dtmf_modes_survive_re_invites() -> None:
    registry, _ = _registry()
    await _call(registry, offer={"from-label": "customer"})
    await registry.handle({"command": "block DTMF", "call-id": "c", "from-tag": "ft",
                           "DTMF-security": "silence"})
    await _call(registry, offer={"from-label": "customer"})
    policy = registry.calls["c"].parties["ft"].medias[0].config.masking
    assert policy is not None and policy.mode is DtmfSecurityMode.SILENCE and policy.effective


async def test_port_exhaustion_is_answered_and_leaves_nothing_behind() -> None:
    engine = MemoryMediaEngine(port_min=30000, port_max=30004)  # two pairs: one call
    registry = CallRegistry(engine, address="127.0.0.1")
    await _call(registry)
    with pytest.raises(ng.NgError, match="Ran out of ports"):
        await registry.handle({"command": "offer", "call-id": "d", "from-tag": "ft",
                               "sdp": audio_sdp("127.0.0.1", 4004)})
    assert list(registry.calls) == ["c"]
    await registry.handle({"command": "delete", "call-id": "c"})
    assert engine.streams == {} and registry.counters.deleted == 1


async def test_digits_reach_the_sink_with_call_and_tag_and_are_counted_only() -> None:
    got: list[tuple[str, str, DigitEvent]] = []
    engine = MemoryMediaEngine()
    registry = CallRegistry(engine, address="127.0.0.1",
                            on_digit=lambda c, t, e: got.append((c, t, e)))
    await _call(registry)
    engine.publish(DigitEvent("c/ft/0", "4", "inband", 0.0, 80.0))
    engine.publish(DigitEvent("unknown/x/0", "1", "inband", 0.0, 80.0))
    assert [(c, t, e.digit) for c, t, e in got] == [("c", "ft", "4")]
    query = await registry.handle({"command": "query", "call-id": "c"})
    assert query["dtmf"] == {"digits": 1}


@pytest.mark.parametrize(("sdp", "reason"), [
    (audio_sdp("127.0.0.1", 65535), "leaves no port for RTCP"),
    (audio_sdp("127.0.0.1", 4000).replace("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.\x000.1"),
     "not an IP address"),
    (audio_sdp("127.0.0.1", 4000).replace("c=IN IP4 127.0.0.1", "c=IN IP4 media.example"),
     "not an IP address"),
    (audio_sdp("127.0.0.1", 4000) + "m=audio 4002 RTP/AVP 0\r\n" * 8, "Too many media"),
])
async def test_unusable_sdp_is_refused_and_leaves_nothing_behind(sdp: str, reason: str) -> None:
    registry, engine = _registry()
    with pytest.raises(ng.NgError, match=reason):
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft", "sdp": sdp})
    assert registry.calls == {} and engine.streams == {}


async def test_a_refused_re_offer_leaves_the_call_as_it_was() -> None:
    registry, engine = _registry()
    await _call(registry)
    before = {sid: s.config for sid, s in engine.streams.items()}
    with pytest.raises(ng.NgError, match="no codec ToneGuard can inspect"):
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                               "sdp": audio_sdp("127.0.0.2", 5000, payload_types=(9,))})
    assert {sid: s.config for sid, s in engine.streams.items()} == before


async def test_a_session_level_connection_line_is_enough() -> None:
    registry, engine = _registry()
    sdp = audio_sdp("127.0.0.1", 4000).replace("m=audio", "b=AS:64\r\nm=audio")
    await _call(registry, offer_sdp=sdp)
    assert engine.streams["c/ft/0"].config.peer == ("127.0.0.1", 4000)


async def test_parties_per_call_are_limited() -> None:
    """A third party joins by ``subscribe request`` (a plain offer from a third tag is refused:
    tests/proxy/control/test_supervisor.py); subscriptions count against the limit."""
    from proxy.control.calls import CallLimits
    engine = MemoryMediaEngine(port_max=31000)
    registry = CallRegistry(engine, address="127.0.0.1", limits=CallLimits(max_parties=3))
    await _call(registry)
    await registry.handle({"command": "subscribe request", "call-id": "c", "from-tag": "ft",
                           "to-tag": "third"})
    with pytest.raises(ng.NgError, match="Too many parties"):
        await registry.handle({"command": "subscribe request", "call-id": "c",
                               "from-tag": "ft", "to-tag": "fourth"})
    assert len(registry.calls["c"].parties) == 3


async def test_latching_options_reach_the_streams_from_flags_and_node_defaults() -> None:
    from proxy.control.calls import LatchingDefaults
    registry, engine = _registry()
    await _call(registry, offer={"flags": ["media-handover", "learn-any-source"]})
    caller = engine.streams["c/ft/0"].config
    assert caller.media_handover and caller.learn_any_source and caller.learning_window == 5.0
    agent_stream = registry.calls["c"].parties["tt"].medias[0].stream_id
    assert not engine.streams[agent_stream].config.media_handover  # the answer had no flags
    engine = MemoryMediaEngine()
    registry = CallRegistry(engine, address="127.0.0.1",
                            latching=LatchingDefaults(learn_any_source=True, learning_window=2))
    await _call(registry)
    config = engine.streams[registry.calls["c"].parties["tt"].medias[0].stream_id].config
    assert config.learn_any_source and config.learning_window == 2 and not config.media_handover


async def test_a_forked_call_follows_the_branch_that_answered_last() -> None:
    """183 with SDP from one branch, then the 200 from another: the winner's address is where
    media goes, the streams (ports offered to every branch) stay, the loser leaves no tag."""
    registry, engine = _registry()
    offer = await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                                   "to-label": "customer",
                                   "sdp": audio_sdp("127.0.0.1", 4000)})
    for to_tag, port in (("early", 5000), ("winner", 6000)):
        await registry.handle({"command": "answer", "call-id": "c", "from-tag": "ft",
                               "to-tag": to_tag, "sdp": audio_sdp("127.0.0.2", port)})
    call = registry.calls["c"]
    assert set(call.parties) == {"ft", "winner"}
    winner = call.parties["winner"]
    assert winner.medias[0].config.peer == ("127.0.0.2", 6000)
    assert winner.medias[0].local.rtp_port == parse(offer["sdp"]).media[0].port
    assert _masked(registry, "winner") is True and _masked(registry, "ft") is None
    assert len(engine.streams) == 2


async def test_each_call_event_is_one_log_line_with_call_id_and_tags_and_no_sdp() -> None:
    from structlog.testing import capture_logs
    registry, _ = _registry()
    key = sdes.generate("AES_CM_128_HMAC_SHA1_80")
    with capture_logs() as logs:
        await _call(registry, offer_sdp=audio_sdp("127.0.0.1", 4000, proto="RTP/SAVP",
                                                  crypto=[key]),
                    answer_sdp=audio_sdp("127.0.0.1", 4002, proto="RTP/SAVP",
                                         crypto=[sdes.generate("AEAD_AES_256_GCM", 1)]))
        await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                               "sdp": audio_sdp("127.0.0.1", 4000, proto="RTP/SAVP",
                                                crypto=[key])})
        await registry.handle({"command": "delete", "call-id": "c"})
    events = [(e["event"], e.get("call_id")) for e in logs]
    assert events == [("call created", "c"), ("dtmf masking decided", "c"),
                      ("call answered", "c"), ("call re-offered", "c"), ("call deleted", "c")]
    answered = logs[2]
    assert (answered["from_tag"], answered["to_tag"]) == ("ft", "tt")
    text = repr(logs)
    assert "inline:" not in text and "v=0" not in text  # no SDP, no key material


@pytest.mark.parametrize("hint", [{"offer": {"flags": ["caller-none"]}}, {}])
async def test_a_capture_on_a_call_with_no_customer_masks_every_party(
        hint: dict[str, dict[str, Any]]) -> None:
    """``caller-none`` (or node ``caller = "none"``) names no customer; a payment capturing
    there must still mask whoever keys — it once relayed the card in clear while capturing."""
    registry, _ = _registry(caller="none")
    await _call(registry, **hint)
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (None, None)
    await registry.set_capture("c", True)
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (True, True)
    with pytest.raises(ng.NgError, match="Cannot unblock DTMF"):
        await registry.handle({"command": "unblock DTMF", "call-id": "c", "from-tag": "ft"})
    await registry.set_capture("c", False)
    assert (_masked(registry, "ft"), _masked(registry, "tt")) == (None, None)


def _srtp_sdp(port: int, *crypto: sdes.CryptoAttribute) -> str:
    return audio_sdp("127.0.0.1", port, proto="RTP/SAVP", crypto=list(crypto))


_CALLER_KEY = sdes.generate("AES_CM_128_HMAC_SHA1_80")


@pytest.mark.parametrize(("request_", "reason"), [
    pytest.param({"command": "answer", "call-id": "other", "from-tag": "ft", "to-tag": "tt",
                  "sdp": _srtp_sdp(4002)}, "Unknown call-ID", id="answer-unknown-call"),
    pytest.param({"command": "answer", "call-id": "c", "from-tag": "nobody", "to-tag": "tt",
                  "sdp": _srtp_sdp(4002)}, "Unknown call-ID or from-tag",
                 id="answer-unknown-from-tag"),
    pytest.param({"command": "offer", "call-id": "c", "from-tag": "ft",
                  "sdp": _srtp_sdp(4000)}, "without a supported a=crypto",
                 id="re-offer-drops-crypto"),
    pytest.param({"command": "offer", "call-id": "c", "from-tag": "ft",
                  "sdp": _srtp_sdp(4000).replace("RTP/SAVP", "RTP/SAVPF")},
                 "without a supported a=crypto", id="re-offer-savpf-without-crypto"),
    pytest.param({"command": "offer", "call-id": "c", "from-tag": "ft",
                  "sdp": _srtp_sdp(4000).replace("a=sendrecv", "a=crypto:1 F8_128_HMAC_SHA1_80 "
                                                  "inline:" + "A" * 40 + "\r\na=sendrecv")},
                 "without a supported a=crypto", id="re-offer-unsupported-suite-only"),
    pytest.param({"command": "offer", "call-id": "c", "from-tag": "tt",
                  "sdp": _srtp_sdp(4002)}, "without a supported a=crypto",
                 id="re-offer-from-the-agent-drops-crypto"),
    pytest.param({"command": "answer", "call-id": "c", "from-tag": "ft", "to-tag": "tt",
                  "sdp": _srtp_sdp(4002)}, "without a supported a=crypto",
                 id="re-answer-drops-crypto"),
    pytest.param({"command": "answer", "call-id": "c", "from-tag": "ft", "to-tag": "fork",
                  "sdp": _srtp_sdp(4002)}, "without a supported a=crypto",
                 id="answer-from-another-fork-drops-crypto"),
    pytest.param({"command": "offer", "call-id": "c", "from-tag": "ft",
                  "sdp": _srtp_sdp(4000, _CALLER_KEY).replace("RTP/SAVP 0 8 101",
                                                              "RTP/SAVP 18")},
                 "no codec ToneGuard can inspect", id="re-offer-no-common-codec"),
])
@pytest.mark.parametrize("plain", [False, True], ids=["srtp-call", "plain-call"])
async def test_bad_input_mid_call_is_refused_and_leaves_the_call_as_it_was(
        request_: dict[str, Any], reason: str, plain: bool) -> None:
    """An SRTP call (or a plain one), then one bad message: an ng error naming the problem,
    and nothing of the call changed (parties, tags, protocols, keys, stream configurations)."""
    import copy
    registry, engine = _registry()
    if plain:
        await _call(registry)
    else:
        offer, _ = await _call(registry, offer_sdp=_srtp_sdp(4000, _CALLER_KEY), answer_sdp=(
            _srtp_sdp(4002, sdes.generate("AES_CM_128_HMAC_SHA1_80"))))
        assert "a=crypto" in offer["sdp"]
    parties = copy.deepcopy(registry.calls["c"].parties)
    configs = {sid: s.config for sid, s in engine.streams.items()}
    with pytest.raises(ng.NgError, match=reason):
        await registry.handle(request_)
    assert registry.calls["c"].parties == parties
    assert {sid: s.config for sid, s in engine.streams.items()} == configs


async def test_crossing_re_offers_of_a_glare_leave_ports_keys_and_masking_as_they_were() -> None:
    """Both sides re-INVITE at once (glare): two offers, one from each tag, neither answered
    (both get 491); then one side retries and is answered. Ports, SDES keys and masking are
    what they were before the glare."""
    registry, engine = _registry()
    agent_key = sdes.generate("AES_CM_128_HMAC_SHA1_80")
    await _call(registry, offer={"from-label": "customer"},
                offer_sdp=_srtp_sdp(4000, _CALLER_KEY), answer_sdp=_srtp_sdp(4002, agent_key))

    def state() -> list[tuple[str, int, object, object, bool | None]]:
        call = registry.calls["c"]
        return [(p.tag, m.local.rtp_port, m.keys.send, m.config.srtp_recv, _masked(registry, p.tag))
                for p in call.parties.values() for m in p.medias]

    before = state()
    assert [masked for *_, masked in before] == [True, None]  # the customer's DTMF is masked
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "ft",
                           "sdp": _srtp_sdp(4000, _CALLER_KEY)})
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "tt",
                           "sdp": _srtp_sdp(4002, agent_key)})
    await _call(registry, offer_sdp=_srtp_sdp(4000, _CALLER_KEY),
                answer_sdp=_srtp_sdp(4002, agent_key))
    assert state() == before
    assert len(engine.streams) == 2


async def test_deleting_a_call_while_capture_masking_is_reconfiguring_logs_no_error() -> None:
    """The capture hook's reconfiguration runs as a task; the call may be deleted before it
    runs (a payment ended by the hangup): it has nothing left to configure, which is no
    failure. (Before: ``reconfiguring masking failed`` on the released streams.)"""
    from structlog.testing import capture_logs
    registry, engine = _registry()
    await _call(registry)
    await registry.set_capture("c", True)
    streams = [m.stream_id for p in registry.calls["c"].parties.values() for m in p.medias]
    with capture_logs() as logs:
        task = registry.capture_changed("c", False)  # payment ended: unmask, as a task
        assert task is not None and not task.done()
        reply = await registry.handle({"command": "delete", "call-id": "c", "from-tag": "ft"})
        assert reply["result"] == "ok"
        await task
    assert "c" not in registry.calls
    assert all(s not in engine.streams for s in streams)  # released, not configured again
    assert not [e for e in logs if e["log_level"] == "error"], logs
    assert [e for e in logs if e["event"] == "call deleted"]  # the delete did happen
