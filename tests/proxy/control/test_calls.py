"""ng offer/answer/query/delete/block over the real in-process media engine, media on loopback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dsp import tones
from proxy.control import ng, sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import parse
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.engine import LocalMediaEngine
from proxy.media.policy import DtmfSecurityMode
from proxy.media.types import SRTP_SUITES


@pytest.fixture
def registry(engine: LocalMediaEngine) -> CallRegistry:
    return CallRegistry(engine, address="127.0.0.1",
                        policy=CallPolicy(always_on=False, caller="offerer"))


async def _setup(registry: CallRegistry, caller: RtpPeer, agent: RtpPeer, call_id: str = "c1",
                 **offer_keys: object) -> tuple[dict, dict]:
    offer = await registry.handle({"command": "offer", "call-id": call_id, "from-tag": "ft",
                                   "sdp": audio_sdp("127.0.0.1", caller.port), **offer_keys})
    answer = await registry.handle({"command": "answer", "call-id": call_id, "from-tag": "ft",
                                    "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", agent.port)})
    return offer, answer


async def test_offer_answer_rewrites_sdp_and_relays_audio_both_ways(
        registry: CallRegistry) -> None:
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    try:
        offer, answer = await _setup(registry, caller, agent)
        to_agent = media_endpoint(offer["sdp"])
        to_caller = media_endpoint(answer["sdp"])
        assert to_agent[0] == to_caller[0] == "127.0.0.1"
        assert to_agent[1] not in (caller.port, agent.port)
        offered = parse(offer["sdp"]).media[0]
        assert offered.formats == ["0", "8", "101"]  # codec order and telephone-event kept
        assert offered.rtcp_port == to_agent[1] + 1
        audio = tones.sine(1000, 400, -15.0)
        await asyncio.gather(caller.play(audio, to_caller), agent.play(audio, to_agent))
        await agent.wait_for(20)
        await caller.wait_for(20)
        query = await registry.handle({"command": "query", "call-id": "c1"})
        assert query["totals"]["RTP"]["packets"] >= 40
        assert set(query["tags"]) == {"ft", "tt"}
        assert query["tags"]["ft"]["in dialogue with"] == "tt"
    finally:
        caller.close()
        agent.close()


async def test_delete_releases_the_call_and_unknown_calls_follow_rtpengine(
        registry: CallRegistry) -> None:
    caller, agent = await RtpPeer().start(), await RtpPeer().start()
    try:
        await _setup(registry, caller, agent)
        deleted = await registry.handle({"command": "delete", "call-id": "c1"})
        assert deleted["result"] == "ok" and "totals" in deleted
        assert (await registry.handle({"command": "list"}))["calls"] == []
        gone = await registry.handle({"command": "delete", "call-id": "c1"})
        assert gone == {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
        with pytest.raises(ng.NgError, match="Call-ID not found"):
            await registry.handle({"command": "delete", "call-id": "c1", "flags": ["fatal"]})
        with pytest.raises(ng.NgError, match="Unknown call-ID"):
            await registry.handle({"command": "query", "call-id": "nope"})
    finally:
        caller.close()
        agent.close()


async def test_bad_requests_get_rtpengine_error_reasons(registry: CallRegistry) -> None:
    with pytest.raises(ng.NgError, match="Unrecognized command"):
        await registry.handle({"command": "dance"})
    with pytest.raises(ng.NgError, match='no key "command"'):
        await registry.handle({})
    with pytest.raises(ng.NgError, match="Failed to parse SDP"):
        await registry.handle({"command": "offer", "call-id": "x", "from-tag": "f",
                               "sdp": "garbage"})
    with pytest.raises(ng.NgError, match='no key "from-tag"'):
        await registry.handle({"command": "offer", "call-id": "x", "sdp": "v=0"})
    assert (await registry.handle({"command": "list"}))["calls"] == []


async def test_sdes_srtp_is_terminated_per_leg_with_each_suite(registry: CallRegistry) -> None:
    for n, suite in enumerate(("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32",
                               "AEAD_AES_128_GCM", "AEAD_AES_256_GCM")):
        caller_key = sdes.generate(suite)
        offer = await registry.handle({
            "command": "offer", "call-id": f"s{n}", "from-tag": "ft",
            "sdp": audio_sdp("127.0.0.1", 1, proto="RTP/SAVP", crypto=[caller_key])})
        offered = sdes.offered(parse(offer["sdp"]).media[0].attributes("crypto"))
        assert [c.suite for c in offered] == list(SRTP_SUITES)  # strongest first
        agent_choice = next(c for c in offered if c.suite == suite)
        agent_key = sdes.generate(suite, agent_choice.tag)
        caller = await RtpPeer(srtp_send=caller_key.params, seed=n).start()
        agent = await RtpPeer(srtp_send=agent_key.params, srtp_recv=agent_choice.params,
                              seed=n + 10).start()
        try:
            answer = await registry.handle({
                "command": "answer", "call-id": f"s{n}", "from-tag": "ft", "to-tag": "tt",
                "sdp": audio_sdp("127.0.0.1", agent.port, proto="RTP/SAVP",
                                 crypto=[agent_key])})
            ours_to_caller = sdes.offered(parse(answer["sdp"]).media[0].attributes("crypto"))
            assert [c.suite for c in ours_to_caller] == [suite]
            assert ours_to_caller[0].params.key_salt != agent_key.params.key_salt  # re-keyed
            caller.set_srtp_recv(ours_to_caller[0].params)
            # The caller learns where to send from the answer; our keys differ per leg.
            to_caller = media_endpoint(answer["sdp"])
            to_agent = media_endpoint(offer["sdp"])
            caller_audio = tones.sine(700, 300, -15.0)
            agent_audio = tones.sine(1200, 300, -15.0)
            caller_task = asyncio.create_task(caller.play(caller_audio, to_caller))
            await agent.play(agent_audio, to_agent)
            await caller_task
            await agent.wait_for(10)
            await caller.wait_for(10)
            heard = agent.received.audio().astype(float)
            assert np.sqrt(np.mean(heard**2)) > 1000  # decrypted audio, not noise or nothing
            assert agent.received.errors == 0 and caller.received.errors == 0
        finally:
            caller.close()
            agent.close()


async def test_block_and_unblock_dtmf_change_the_callers_policy_live(
        registry: CallRegistry, engine: LocalMediaEngine) -> None:
    caller, agent = await RtpPeer().start(), await RtpPeer().start()
    try:
        await _setup(registry, caller, agent, label="caller")
        call = registry.calls["c1"]
        caller_media = call.parties["ft"].medias[0]
        assert caller_media.config.masking is not None and not caller_media.config.masking.masked
        await registry.handle({"command": "block DTMF", "call-id": "c1", "label": "caller",
                               "DTMF-security": "silence"})
        policy = caller_media.config.masking
        assert policy.masked and policy.mode is DtmfSecurityMode.SILENCE
        assert call.parties["tt"].medias[0].config.masking is None  # the agent untouched
        await registry.handle({"command": "unblock DTMF", "call-id": "c1"})
        assert not caller_media.config.masking.masked
        with pytest.raises(ng.NgError, match="unknown DTMF-security mode"):
            await registry.handle({"command": "block DTMF", "call-id": "c1",
                                   "DTMF-security": "shout"})
    finally:
        caller.close()
        agent.close()


async def test_per_call_flags_choose_whose_dtmf_is_masked_and_a_recording_tap(
        registry: CallRegistry) -> None:
    await registry.handle({"command": "offer", "call-id": "pc", "from-tag": "ft",
                           "flags": ["caller-answerer"], "recording-tap": "127.0.0.1:7000",
                           "sdp": audio_sdp("127.0.0.1", 4000)})
    await registry.handle({"command": "answer", "call-id": "pc", "from-tag": "ft",
                           "to-tag": "tt", "sdp": audio_sdp("127.0.0.1", 4002)})
    call = registry.calls["pc"]
    assert call.parties["ft"].medias[0].config.masking is None
    assert call.parties["tt"].medias[0].config.masking is not None
    assert call.parties["ft"].medias[0].config.recording == ("127.0.0.1", 7000)
    with pytest.raises(ng.NgError, match="Invalid flag"):
        await registry.handle({"command": "offer", "call-id": "pc2", "from-tag": "f",
                               "flags": ["caller-agent"], "sdp": audio_sdp("127.0.0.1", 4004)})
    assert "pc2" not in registry.calls


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait(data)


async def test_rtcp_is_relayed_separately_and_demultiplexed_under_rtcp_mux(
        registry: CallRegistry) -> None:
    loop = asyncio.get_running_loop()
    sinks = [await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
             for _ in range(3)]
    caller_rtp, agent_rtp, agent_rtcp = sinks
    port = [t.get_extra_info("sockname")[1] for t, _ in sinks]
    receiver_report = bytes([0x81, 201, 0, 7]) + b"\x00" * 28  # RTCP RR, one report block
    try:
        # The caller multiplexes RTCP on its RTP port; the agent uses a separate RTCP port.
        await registry.handle({"command": "offer", "call-id": "rtcp", "from-tag": "ft",
                               "sdp": audio_sdp("127.0.0.1", port[0], rtcp_mux=True)})
        answer = await registry.handle({
            "command": "answer", "call-id": "rtcp", "from-tag": "ft", "to-tag": "tt",
            "sdp": audio_sdp("127.0.0.1", port[1], extra=(f"a=rtcp:{port[2]}",))})
        assert "a=rtcp-mux" in answer["sdp"]  # the caller's rtcp-mux is accepted
        to_toneguard = media_endpoint(answer["sdp"])
        caller_rtp[0].sendto(receiver_report, to_toneguard)  # RTCP on the RTP port
        async with asyncio.timeout(3):
            relayed = await agent_rtcp[1].got.get()
        assert relayed == receiver_report
        assert agent_rtp[1].got.empty()  # not mistaken for RTP
        stats = await registry._engine.stats("rtcp/ft/0")
        assert stats.rtcp_in == 1 and stats.packets_in == 0
    finally:
        for t, _ in sinks:
            t.close()


async def test_a_call_is_deleted_when_all_its_media_stops_not_when_one_side_is_silent(
        media_ports: tuple[int, int]) -> None:
    # The engine's clock is the test's: idleness is decided on it, not on how fast a loaded
    # machine happens to run the caller's pacing or the idle scan.
    now = [1000.0]
    engine = LocalMediaEngine("127.0.0.1", *media_ports, idle_timeout=0.3,
                              clock=lambda: now[0])
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1",
                            policy=CallPolicy(always_on=False, caller="none"))
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    try:
        _, answer = await _setup(registry, caller, agent, call_id="idle")
        to_toneguard = media_endpoint(answer["sdp"])
        # Only the caller talks (the agent on mute, sending nothing) for three timeouts.
        for sent in range(1, 11):
            caller.send_packet(caller.next_packet(bytes(160), 0), to_toneguard)
            async with asyncio.timeout(5):
                while (await engine.stats("idle/ft/0")).packets_in < sent:
                    await asyncio.sleep(0.005)
            now[0] += 0.1
            engine.run_tick()  # an idle scan at this moment
        agent_side = registry.calls["idle"].parties["tt"].medias[0].stream_id
        assert (await engine.stats(agent_side)).packets_in == 0  # the agent side: silent
        await agent.wait_for(10)  # and the caller's audio did reach it
        assert await registry.reap_idle() == []
        assert "idle" in registry.calls
        now[0] += 0.3  # then nobody sends for one timeout
        engine.run_tick()
        assert await registry.reap_idle() == ["idle"]
        assert "idle" not in registry.calls and registry.counters.idle == 1
        with pytest.raises(ng.NgError, match="Unknown call"):
            await registry.handle({"command": "query", "call-id": "idle"})
    finally:
        caller.close()
        agent.close()
        await engine.stop()
