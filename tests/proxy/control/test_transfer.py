"""Transfers with a payment open: the agent leg changes (a re-INVITE toward another phone, another
branch answering, or a new call replacing the old one), and then the payment's status,
assignment and events say where it went — it moves with the call to the agent the signalling
names, or is cancelled cleanly; it is never left capturing for an agent nobody named. The
customer stays masked throughout.

Call control over the in-memory engine with the real payment manager (no gateway), wired as
the node wires them; real media and the recording tap: ``test_transfer_media.py``."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.control.calls import CallRegistry
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.memory import MemoryMediaEngine
from proxy.media.types import DigitEvent
from proxy.securepay.manager import PaymentManager
from proxy.securepay.states import PaymentStatus

CALL = "t"


class Desk:
    """A registry and a payment manager wired as ``proxy.service.serve.Node`` wires them."""

    def __init__(self) -> None:
        self.engine = MemoryMediaEngine()
        registry: CallRegistry | None = None

        def capture(call_id: str, on: bool) -> None:
            assert registry is not None
            registry.capture_changed(call_id, on)

        self.payments = PaymentManager(None, on_capture=capture)
        registry = CallRegistry(
            self.engine, address="127.0.0.1",
            on_call=lambda call_id, alive: (
                self.payments.call_started(call_id, self.registry.calls[call_id].metadata)
                if alive else self.payments.call_ended(call_id)),
            on_digit=self.payments.on_digit,
            on_renegotiated=self.payments.call_renegotiated)
        self.registry = registry
        self.events = self.payments.bus.history

    async def ng(self, **body: Any) -> dict[str, Any]:
        body = {k.replace("_", "-"): v for k, v in body.items()}
        reply = await self.registry.handle({"call-id": CALL, **body})
        assert reply["result"] == "ok", reply
        return reply

    async def call(self, metadata: str = "agent=alice") -> None:
        """The customer calls in (labelled), the contact centre answers from 10.0.0.1."""
        await self.ng(command="offer", from_tag="cust", from_label="customer",
                      metadata=metadata, sdp=audio_sdp("192.0.2.7", 4000))
        await self.ng(command="answer", from_tag="cust", to_tag="agent", sip_code=200,
                      sdp=audio_sdp("10.0.0.1", 5000))

    async def reinvite_agent_leg(self, address: str, port: int, **extra: Any) -> None:
        """The contact centre re-INVITEs the customer with another phone's media."""
        await self.ng(command="offer", from_tag="agent", to_tag="cust",
                      sdp=audio_sdp(address, port), **extra)
        await self.ng(command="answer", from_tag="agent", to_tag="cust",
                      sdp=audio_sdp("192.0.2.7", 4000))

    def key(self, digits: str) -> None:
        """The customer keys ``digits`` (as the media plane reports them)."""
        stream = self.registry.calls[CALL].parties["cust"].medias[0].stream_id
        for d in digits:
            self.engine.publish(DigitEvent(stream, d, "inband", 0.0, 80.0))

    def customer_masked(self) -> bool:
        call = self.registry.calls[CALL]
        masking = call.parties["cust"].medias[0].config.masking
        return masking is not None and masking.effective

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.type, e.agent_id) for e in self.events]


@pytest.fixture
async def desk() -> Desk:
    desk = Desk()
    await desk.call()
    return desk


async def test_a_transfer_naming_the_new_agent_moves_the_open_payment(desk: Desk) -> None:
    session = desk.payments.start(CALL, "alice")
    await desk.registry.set_capture(CALL, True)
    desk.key("41111111")  # half the card number to alice's call
    await desk.reinvite_agent_leg("10.0.0.2", 6000, metadata="agent=bob")
    assert session.status is PaymentStatus.CAPTURING  # not restarted: the fields stay
    assert desk.payments.owner(CALL) == "bob"
    assert desk.kinds()[-1] == ("transferred", "bob")
    assigned = desk.payments.audit.records[-1]
    assert (assigned["action"], assigned["actor"], assigned["agent_id"]) == (
        "call.assign", "ng-transfer", "bob")
    assert desk.customer_masked() and desk.registry.calls[CALL].capturing
    desk.key("11111111")  # the other half (4111111111111111), to bob's phone
    assert session.masked()["payment-card-number"].endswith("1111")
    assert session.current == "expiration-date"
    assert desk.kinds()[-1][1] == "bob"  # progress goes to bob now


async def test_a_transfer_naming_nobody_cancels_the_open_payment(desk: Desk) -> None:
    session = desk.payments.start(CALL, "alice")
    await desk.registry.set_capture(CALL, True)
    desk.key("4111")
    await desk.reinvite_agent_leg("10.0.0.2", 6000)  # no metadata in the re-INVITE
    assert session.status is PaymentStatus.CANCELLED and session.error == "agent-changed"
    assert ("ended", "alice") in desk.kinds()
    assert desk.payments.capturing(CALL) is False
    cancelled = desk.payments.audit.records[-2]
    assert (cancelled["action"], cancelled["actor"]) == ("payment.cancel", "ng-transfer")
    assert desk.customer_masked()  # always-on masking: the customer stays masked
    events = len(desk.events)
    desk.key("1111")  # keys after the cancel fill no payment
    assert len(desk.events) == events
    # A new payment can be opened on the transferred call.
    assert desk.payments.start(CALL, "alice").status is PaymentStatus.CAPTURING


async def test_the_same_agent_on_a_new_phone_keeps_the_payment(desk: Desk) -> None:
    session = desk.payments.start(CALL, "alice")
    await desk.reinvite_agent_leg("10.0.0.9", 5000, metadata="agent=alice")
    assert session.status is PaymentStatus.CAPTURING and desk.payments.owner(CALL) == "alice"
    assert desk.kinds() == [("started", "alice")]


@pytest.mark.parametrize("sdp", [
    audio_sdp("10.0.0.1", 5000, extra=("a=sendonly",)),  # hold: same address
    audio_sdp("0.0.0.0", 5000),  # an old-style hold
    audio_sdp("10.0.0.1", 5000),  # a session refresh
])
async def test_a_hold_or_refresh_is_not_a_transfer(desk: Desk, sdp: str) -> None:
    session = desk.payments.start(CALL, "alice")
    await desk.ng(command="offer", from_tag="agent", to_tag="cust", sdp=sdp)
    await desk.ng(command="answer", from_tag="agent", to_tag="cust",
                  sdp=audio_sdp("192.0.2.7", 4000))
    assert session.status is PaymentStatus.CAPTURING and desk.kinds() == [("started", "alice")]


async def test_the_customer_re_inviting_to_a_new_agent_phone_is_a_transfer_too(
        desk: Desk) -> None:
    """The customer's side re-offers; the contact centre answers from another phone (a PBX
    that transferred the call internally answers the refresh with the new agent's media)."""
    session = desk.payments.start(CALL, "alice")
    await desk.ng(command="offer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("192.0.2.7", 4000))
    await desk.ng(command="answer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("10.0.0.3", 7000))
    assert session.status is PaymentStatus.CANCELLED and session.error == "agent-changed"


async def test_metadata_alone_reassigns_when_the_pbx_keeps_the_media(desk: Desk) -> None:
    """A PBX that anchors media transfers inside itself: the SDP toward ToneGuard does not
    change, only the agent named in the re-INVITE's metadata."""
    session = desk.payments.start(CALL, "alice")
    await desk.reinvite_agent_leg("10.0.0.1", 5000, metadata="agent=bob")
    assert session.status is PaymentStatus.CAPTURING and desk.payments.owner(CALL) == "bob"


async def test_a_new_call_replacing_the_old_one_cancels_the_payment_of_the_old() -> None:
    """An attended transfer by REFER/Replaces between the phones: the customer's phone calls
    the second agent (a new Call-ID) and hangs up the first call (Kamailio's delete)."""
    desk = Desk()
    await desk.call()
    session = desk.payments.start(CALL, "alice")
    await desk.registry.handle({"command": "offer", "call-id": "t2", "from-tag": "cust2",
                                "metadata": "agent=bob", "sdp": audio_sdp("192.0.2.7", 4100)})
    await desk.registry.handle({"command": "answer", "call-id": "t2", "from-tag": "cust2",
                                "to-tag": "agent2", "sdp": audio_sdp("10.0.0.2", 6000)})
    await desk.registry.handle({"command": "delete", "call-id": CALL})
    assert session.status is PaymentStatus.CANCELLED and session.error == "call-ended"
    assert ("ended", "alice") in desk.kinds()
    assert desk.payments.owner("t2") == "bob" and CALL not in desk.payments.calls
    new = desk.registry.calls["t2"].parties["cust2"].medias[0].config.masking
    assert new is not None and new.effective  # the new call: the customer masked (no hint)


async def test_another_branch_answering_cancels_a_payment_opened_on_early_media() -> None:
    desk = Desk()
    await desk.ng(command="offer", from_tag="cust", metadata="agent=alice",
                  sdp=audio_sdp("192.0.2.7", 4000))
    await desk.ng(command="answer", from_tag="cust", to_tag="ivr", sip_code=183,
                  sdp=audio_sdp("10.0.0.5", 5000))
    session = desk.payments.start(CALL, "alice")
    await desk.ng(command="answer", from_tag="cust", to_tag="agent", sip_code=200,
                  sdp=audio_sdp("10.0.0.1", 5000))
    assert session.status is PaymentStatus.CANCELLED and session.error == "agent-changed"


async def test_the_customers_phone_moving_is_not_a_transfer(desk: Desk) -> None:
    """The customer (labelled) re-INVITEs from a new address (a mobile handover): the agent
    did not change, the payment goes on."""
    session = desk.payments.start(CALL, "alice")
    await desk.ng(command="offer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("192.0.2.99", 4400))
    await desk.ng(command="answer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("10.0.0.1", 5000))
    assert session.status is PaymentStatus.CAPTURING and desk.kinds() == [("started", "alice")]


async def test_without_a_hint_any_party_moving_cancels_fail_safe() -> None:
    """No label, no flag: ToneGuard cannot tell the agent from the customer, so any party's
    media moving cancels an open payment (none is left with a party nobody named)."""
    desk = Desk()
    await desk.ng(command="offer", from_tag="cust", metadata="agent=alice",
                  sdp=audio_sdp("192.0.2.7", 4000))
    await desk.ng(command="answer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("10.0.0.1", 5000))
    session = desk.payments.start(CALL, "alice")
    await desk.ng(command="offer", from_tag="cust", to_tag="agent",
                  sdp=audio_sdp("192.0.2.99", 4400))
    assert session.status is PaymentStatus.CANCELLED and session.error == "agent-changed"
