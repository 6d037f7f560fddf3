"""A released port is handed out again while the ended call's phones still send to it.

The engine quarantines a released port (``PORT_QUARANTINE_SECONDS``): it is handed out last,
not never. On a node whose range is busy (here: two port pairs, exactly one call) the next call
gets the ports of the call that just ended, while that call's phones still send: a BYE crossing
the last packets, a phone that ignores the BYE, a carrier gateway that keeps streaming. Both old
phones live on the same host as the new call's parties (as behind one carrier SBC), so an
"any port from the SDP's IP" rule alone admits them. The old caller keys a whole card, in-band
or as RFC 4733 events; the new call's agent must get nothing of either old phone (no packet of
their SSRCs, no key decoded by spandsp or multimon-ng) while the new caller's audio does arrive,
and the new caller must hear its own agent and nothing of the old call.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import media_endpoint
from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup, NgControl, until
from tests.proxy.failclosed.wire import (
    KEYED,
    Codec,
    RtpSource,
    Send,
    by_source,
    judge,
    keyed_audio,
    noise,
    phone_sdp,
    send,
)

OLD_PHONES_SECONDS = 6.0  # the old phones send this long after their call was deleted
NEW_CALL_SECONDS = 3.0  # the new call's caller talks this long


@pytest.fixture
def media_ports(media_ports: tuple[int, int]) -> tuple[int, int]:
    """Two port pairs (one call: caller + agent): the next call must reuse the last one's."""
    return media_ports[0], media_ports[0] + 4  # pairs at +0 and +2 only


class _OldCallRig(CallRig):
    """The ended call: its phones' SSRCs differ from the next call's (CallRig seeds them the
    same in every call), so that what arrives can be told apart by SSRC."""

    def __init__(self, stack: Stack, setup: CallSetup) -> None:
        super().__init__(stack, setup)
        self.caller = RtpPeer(seed=41)
        self.caller_src = RtpSource(self.caller.ssrc, seed=44)

    async def start(self) -> _OldCallRig:
        await super().start()
        self.agent_src = RtpSource(seed=45)
        return self


def _old_caller_plan(rig: CallRig, rfc4733: bool) -> list[Send]:
    """The ended call's caller keeps talking to its old port: the whole card, keyed in-band or
    as RFC 4733 events (audio without tones beneath), repeated for OLD_PHONES_SECONDS."""
    plan: list[Send] = []
    start = 0.0
    while start < OLD_PHONES_SECONDS:
        audio, keys = keyed_audio(KEYED, inband=not rfc4733, lead_ms=100, tail_ms=100)
        segment = rig.caller_src.segment(audio, rig.to_toneguard, keys=keys,
                                         event_pt=101 if rfc4733 else None)
        plan += [(start + at, p, d) for at, p, d in segment]
        start = plan[-1][0] + 0.02
    return plan


def _old_agent_plan(rig: CallRig) -> list[Send]:
    assert rig.agent_src is not None
    return rig.agent_src.segment(noise(OLD_PHONES_SECONDS, seed=71), rig.agent_to_toneguard)


def _what_the_new_caller_heard(new: CallRig) -> list[str]:
    """Problems with what the new call's caller received: any SSRC but its agent's, any key."""
    assert new.agent is not None
    problems = []
    for ssrc, heard in by_source(new.caller.received).items():
        if ssrc != new.agent.ssrc:
            problems.append(f"the new caller received {heard.packets} packet(s) "
                            f"of SSRC {ssrc:#x}, not its agent's")
        verdict = judge(heard.audio)
        if not verdict.clean:
            problems.append(f"the new caller heard keys: {verdict}")
    return problems


async def _play(peer: RtpPeer, plan: list[Send], progress: list[int], index: int) -> None:
    """Send a plan paced as ``wire.send`` does, counting the packets sent in
    ``progress[index]``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, packet, dest in plan:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        peer.send_packet(packet, dest)
        progress[index] += 1


@pytest.mark.parametrize("rfc4733", [False, True], ids=["inband", "rfc4733"])
async def test_old_call_phones_reach_nothing_of_the_call_that_reuses_their_ports(
        stack: Stack, rfc4733: bool) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")))
    async with _OldCallRig(stack, setup) as old:
        # The old call is up and latched both ways before it ends.
        await old.talk(old.caller_src.segment(noise(0.4, seed=70), old.to_toneguard))
        assert old.audio_arrived(20) == []
        old_ports = {old.to_toneguard[1], old.agent_to_toneguard[1]}
        await old.ng.ok({"command": "delete", "call-id": old.call_id})
        assert old.agent is not None
        progress = [0, 0]
        old_phones = asyncio.gather(
            _play(old.caller, _old_caller_plan(old, rfc4733), progress, 0),
            _play(old.agent, _old_agent_plan(old), progress, 1))
        try:
            # The old phones are sending before the next call's offer (bounded wait).
            assert await until(lambda: min(progress) >= 3, 2.0), "the old phones did not send"
            async with CallRig(stack, setup) as new:
                new_ports = {new.to_toneguard[1], new.agent_to_toneguard[1]}
                assert new_ports == old_ports, "the new call did not get the old call's ports"
                plan = new.caller_src.segment(noise(NEW_CALL_SECONDS, dbm0=-50, seed=72),
                                              new.to_toneguard)
                await new.talk(plan)
                assert new.agent is not None
                assert old.agent_src is not None
                foreign = [old.caller.ssrc, old.agent_src.ssrc]
                problems = (new.leaks(event_pts=[101], foreign=foreign)
                            + new.audio_arrived(len(plan)) + new.caller_heard_agent()
                            + _what_the_new_caller_heard(new))
                stream = await new.caller_stream()
        finally:
            await old_phones
    endpoint = stream.get("endpoint", {})
    if endpoint.get("port") in (old.caller.port, old.agent.port):
        problems.append(f"the new caller's stream is latched to an old phone {endpoint}")
    assert not problems, "\n".join(problems)


async def test_an_old_callers_keys_at_its_port_reused_for_the_next_agent_stream_reach_no_one(
        stack: Stack) -> None:
    """The crossed case: the ended call was the agent's (an outbound call: the agent's side
    offered), so its customer's port is released last and becomes the next call's AGENT
    stream, whose media is relayed toward the next call's caller unmasked (agent audio is not
    inspected). The old customer keys a card at it: had it latched there, the next caller
    would hear the card and the next agent nothing."""
    codecs = (Codec(0, "PCMU"), Codec(101, "telephone-event"))
    ng = NgControl()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: ng, remote_addr=stack.ng)
    old_agent, old_customer = await RtpPeer(seed=41).start(), await RtpPeer(seed=42).start()
    agent_src, customer_src = RtpSource(seed=43), RtpSource(seed=44)
    try:
        offer = await ng.ok({"command": "offer", "call-id": "outbound-old", "from-tag": "ag",
                             "label": "agent",
                             "sdp": phone_sdp("127.0.0.1", old_agent.port, codecs)})
        answer = await ng.ok({"command": "answer", "call-id": "outbound-old", "from-tag": "ag",
                              "to-tag": "cu", "label": "customer",
                              "sdp": phone_sdp("127.0.0.1", old_customer.port, codecs)})
        customer_port = media_endpoint(offer["sdp"])  # where the customer sends
        agent_port = media_endpoint(answer["sdp"])  # where the agent sends
        await asyncio.gather(
            send(old_customer, customer_src.segment(noise(0.4, seed=74), customer_port)),
            send(old_agent, agent_src.segment(noise(0.4, seed=75), agent_port)))
        assert await until(lambda: len(old_agent.received.packets) >= 15, 4.0), \
            "the old call did not relay before it ended"
        await ng.ok({"command": "delete", "call-id": "outbound-old"})
        audio, keys = keyed_audio(KEYED, lead_ms=100, tail_ms=100)
        keyed = customer_src.segment(audio, customer_port, keys=keys, event_pt=101)
        progress = [0, 0]
        old_phones = asyncio.gather(
            _play(old_customer, keyed, progress, 0),
            _play(old_agent, agent_src.segment(noise(keyed[-1][0], seed=76), agent_port),
                  progress, 1))
        try:
            # The old phones are sending before the next call's offer (bounded wait).
            assert await until(lambda: min(progress) >= 3, 2.0), "the old phones did not send"
            setup = CallSetup(codecs=codecs)
            async with CallRig(stack, setup) as new:
                assert new.agent_to_toneguard[1] == customer_port[1], (
                    "the next call's agent stream did not get the old customer's port")
                plan = new.caller_src.segment(noise(NEW_CALL_SECONDS, dbm0=-50, seed=77),
                                              new.to_toneguard)
                await new.talk(plan)
                assert new.agent is not None
                problems = (new.leaks(event_pts=[101],
                                      foreign=[customer_src.ssrc, agent_src.ssrc])
                            + new.audio_arrived(len(plan)) + new.caller_heard_agent()
                            + _what_the_new_caller_heard(new))
        finally:
            await old_phones
    finally:
        old_agent.close()
        old_customer.close()
        if ng.transport is not None:
            ng.transport.close()
    assert not problems, "\n".join(problems)
