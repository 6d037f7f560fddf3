"""Codec names are case-insensitive (RFC 4855 §3): a caller whose SDP spells PCMU or
telephone-event in another case is masked like any other; and a payload type the SDP never
declared is not relayed to the agent at all.

Default policy of ``toneguard serve``: always-on masking of the caller (the offerer); nobody
asks for it. The caller keys the test card, expiry and code, each ended with #.
"""

from __future__ import annotations

import pytest

from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup
from tests.proxy.failclosed.wire import KEYED, Codec, keyed_audio


@pytest.mark.parametrize("name", ["pcmu", "Pcmu", "PCMU"])
async def test_caller_keys_in_band_with_codec_name_in_another_case_agent_decodes_nothing(
        stack: Stack, name: str) -> None:
    setup = CallSetup(codecs=(Codec(0, name), Codec(101, "telephone-event")))
    async with CallRig(stack, setup) as rig:
        audio, _ = keyed_audio(KEYED)
        plan = rig.caller_src.segment(audio, rig.to_toneguard, pt=0)
        await rig.talk(plan)
        problems = rig.leaks(event_pts=[101]) + rig.audio_arrived(len(plan))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("second", [
    Codec(101, "TELEPHONE-EVENT"),  # events named in upper case: masked like any spelling
    # Beyond the spelling: a payload type the caller's SDP does not declare cannot be
    # inspected, so while masking applies it does not reach the agent (DESIGN "Fail closed").
    Codec(8, "PCMA"),
], ids=["named-in-upper-case", "never-declared"])
async def test_caller_keys_rfc4733_events_none_reaches_the_agent(
        stack: Stack, second: Codec) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), second))
    async with CallRig(stack, setup) as rig:
        # The keys go as events (payload type 101) only; the audio under them is the line's
        # noise (and still flows, so the agent hearing nothing cannot pass for "nothing
        # leaked").
        audio, keys = keyed_audio(KEYED, inband=False)
        plan = rig.caller_src.segment(audio, rig.to_toneguard, pt=0, keys=keys, event_pt=101)
        events_sent = sum(1 for _, p, _ in plan if p.payload_type == 101)
        await rig.talk(plan)
        problems = rig.leaks(event_pts=[101]) + rig.audio_arrived(len(plan) - events_sent)
    assert events_sent > 0
    assert not problems, "\n".join(problems)
