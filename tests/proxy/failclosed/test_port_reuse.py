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
from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup
from tests.proxy.failclosed.wire import (
    KEYED,
    LAWS,
    Codec,
    RtpSource,
    Send,
    by_source,
    judge,
    keyed_audio,
    noise,
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


def _old_rig(stack: Stack, setup: CallSetup) -> _OldCallRig:
    return _OldCallRig(stack, setup)


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


@pytest.mark.parametrize("rfc4733", [False, True], ids=["inband", "rfc4733"])
async def test_old_call_phones_reach_nothing_of_the_call_that_reuses_their_ports(
        stack: Stack, rfc4733: bool) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")))
    async with _old_rig(stack, setup) as old:
        # The old call is up and latched both ways before it ends.
        await old.talk(old.caller_src.segment(noise(0.4, seed=70), old.to_toneguard))
        assert old.audio_arrived(20) == []
        old_ports = {old.to_toneguard[1], old.agent_to_toneguard[1]}
        await old.ng.ok({"command": "delete", "call-id": old.call_id})
        assert old.agent is not None
        old_phones = asyncio.gather(send(old.caller, _old_caller_plan(old, rfc4733)),
                                    send(old.agent, _old_agent_plan(old)))
        try:
            await asyncio.sleep(0.1)  # bounded: the old phones' packets are in flight first
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
                            + new.audio_arrived(len(plan)) + new.caller_heard_agent())
                for ssrc, heard in by_source(new.caller.received).items():
                    if ssrc != new.agent.ssrc:
                        problems.append(f"the new caller received {heard.packets} packet(s) "
                                        f"of SSRC {ssrc:#x}, not its agent's")
                    verdict = judge(heard.audio)
                    if not verdict.clean:
                        problems.append(f"the new caller heard keys: {verdict}")
                stream = await new.caller_stream()
        finally:
            await old_phones
    endpoint = stream.get("endpoint", {})
    if endpoint.get("port") in (old.caller.port, old.agent.port):
        problems.append(f"the new caller's stream is latched to an old phone {endpoint}")
    assert all(p.payload_type in (*LAWS, 101) for _, p in old.caller.received.packets)
    assert not problems, "\n".join(problems)

