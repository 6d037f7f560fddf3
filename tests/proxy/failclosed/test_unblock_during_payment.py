"""Masking turns on for a capture whatever else the control plane says: an ``unblock DTMF`` on
the caller, sent before the agent starts a payment or while it captures, may be refused or
overridden — but the card the caller then keys must not reach the agent, and the payment must
still capture it (and complete, with a token for the card ending 1111).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.proxy.conftest import Stack
from tests.proxy.failclosed.rig import CallRig, CallSetup
from tests.proxy.failclosed.wire import CARD, KEYED, Codec, keyed_audio


@pytest.mark.parametrize("order", ["unblock-then-pay", "pay-then-unblock"])
async def test_unblock_dtmf_does_not_unmask_a_card_being_captured(
        stack: Stack, order: str) -> None:
    setup = CallSetup(codecs=(Codec(0, "PCMU"), Codec(101, "telephone-event")))
    async with CallRig(stack, setup) as rig:
        unblock: dict[str, Any]
        if order == "unblock-then-pay":
            unblock = await rig.dtmf(False, **{"from-tag": "caller"})
            assert unblock.get("result") == "ok", unblock  # nothing is being captured yet
            sid = await rig.start_payment()
        else:
            sid = await rig.start_payment()
            unblock = await rig.dtmf(False, **{"from-tag": "caller"})  # refusing is fine too
        audio, _ = keyed_audio(KEYED)
        plan = rig.caller_src.segment(audio, rig.to_toneguard, pt=0)
        await rig.talk(plan)
        payment = await rig.payment_settled(sid)
        problems = rig.leaks(event_pts=[101]) + rig.audio_arrived(len(plan))
    assert unblock.get("result") in ("ok", "error")
    if payment["status"] != "complete" or not payment["token"] or (
            payment["last4"] != CARD[-4:]):
        problems.append(f"the payment did not capture the card: status {payment['status']}, "
                        f"error {payment['error']!r}, fields {payment['fields']}")
    assert not problems, "\n".join(problems)
