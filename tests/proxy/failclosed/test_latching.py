"""The first packet may come from a stranger: a source other than the one the caller's SDP
names must not take over the caller's stream — it gets none of the agent's audio, its own
audio (keyed digits in it) never reaches the agent, and the real caller is still heard
(masked). On an SRTP leg, a datagram that does not authenticate latches nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket

from proxy.demo.phone import RtpPeer
from proxy.demo.simulate import TEST_CARDS
from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup
from tests.proxy.failclosed.wire import KEYED, Codec, RtpSource, keyed_audio

STRANGER = "127.0.0.66"  # another loopback address: a different host as far as UDP can tell
STRANGER_FIRST = 0.3  # seconds the stranger sends alone before the caller's first packet


def _received_anything(peer: RtpPeer) -> int:
    r = peer.received
    return len(r.packets) + r.rtcp + r.errors


async def test_stranger_sending_first_does_not_latch_the_caller_stream(stack: Stack) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")))
    stranger = await RtpPeer(STRANGER, seed=66).start()
    try:
        async with CallRig(stack, setup) as rig:
            injected, _ = keyed_audio(TEST_CARDS["amex"][0] + "#", seed=6)
            stranger_src = RtpSource(stranger.ssrc, seed=67)
            intrusion = stranger_src.segment(injected, rig.to_toneguard, pt=0)
            audio, _ = keyed_audio(KEYED)
            caller_plan = [(at + STRANGER_FIRST, p, d)
                           for at, p, d in rig.caller_src.segment(audio, rig.to_toneguard)]
            await rig.talk(caller_plan, extra=[(stranger, intrusion)])
            problems = (rig.leaks(event_pts=[101], foreign=[stranger_src.ssrc])
                        + rig.audio_arrived(len(caller_plan)))
            stream = await rig.caller_stream()
            problems += rig.caller_heard_agent()
    finally:
        stranger.close()
    if got := _received_anything(stranger):
        problems.append(f"the stranger received {got} datagram(s) of the agent's audio")
    if stream.get("endpoint", {}).get("address") == STRANGER:
        problems.append(f"the caller's stream is latched to the stranger {stream['endpoint']}")
    assert not problems, "\n".join(problems)


async def test_unauthenticated_datagram_does_not_latch_an_srtp_caller_stream(
        stack: Stack) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")),
                      caller_suite="AES_CM_128_HMAC_SHA1_80")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind((STRANGER, 0))
        stranger.setblocking(False)
        async with CallRig(stack, setup) as rig:
            # One datagram shaped like SRTP (RTP header, payload, 10-byte tag) that no key
            # authenticates. On loopback, sendto queues it on the node's socket before the
            # caller's first packet is even built: no wait is needed for the order.
            stranger.sendto(bytes([0x80, 0x00]) + os.urandom(10 + 170), rig.to_toneguard)
            audio, _ = keyed_audio(KEYED)
            plan = rig.caller_src.segment(audio, rig.to_toneguard, pt=0)
            await rig.talk(plan)
            problems = rig.leaks(event_pts=[101]) + rig.audio_arrived(len(plan))
            stream = await rig.caller_stream()
            problems += rig.caller_heard_agent()
        got = 0
        with contextlib.suppress(BlockingIOError):
            while stranger.recv(2048):
                got += 1
    if got:
        problems.append(f"the stranger received {got} datagram(s) of the agent's audio")
    if stream.get("endpoint", {}).get("address") == STRANGER:
        problems.append(f"the caller's stream is latched to the stranger {stream['endpoint']}")
    assert not problems, "\n".join(problems)
