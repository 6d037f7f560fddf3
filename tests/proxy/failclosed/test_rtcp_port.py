"""Ports come in pairs: RTP keyed onto the caller stream's RTCP port is not RTCP, and must not
reach the agent by that road (neither at the agent's RTP port nor at its RTCP port).

The caller speaks normally on the RTP port (that audio is masked and must arrive), and sends a
second RTP stream — another SSRC, the same keyed card, from the same socket so that it passes
any source check — to the port its answer advertises in ``a=rtcp`` (RTP port + 1 if none).
"""

from __future__ import annotations

import pytest

from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup
from tests.proxy.failclosed.wire import KEYED, Codec, RtpSource, keyed_audio, merge


@pytest.mark.parametrize("mux", [True, False], ids=["rtcp-mux", "no-mux"])
async def test_rtp_keyed_to_the_rtcp_port_reaches_neither_agent_port(
        stack: Stack, mux: bool) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")), rtcp_mux=mux,
                      advertise_rtcp=not mux)
    async with CallRig(stack, setup) as rig:
        audio, _ = keyed_audio(KEYED)
        legit = rig.caller_src.segment(audio, rig.to_toneguard, pt=0)
        smuggler = RtpSource(seed=77)
        smuggled = smuggler.segment(audio, rig.to_toneguard_rtcp, pt=0)
        await rig.talk(merge(legit, smuggled))
        problems = (rig.leaks(event_pts=[101], foreign=[smuggler.ssrc])
                    + rig.audio_arrived(len(legit)))
    assert rig.to_toneguard_rtcp[1] != rig.to_toneguard[1]
    assert not problems, "\n".join(problems)
