"""A transfer with a payment open, with real media through a node: the customer keys half a
test card to the first agent's phone, the contact centre re-INVITEs toward a second agent's
phone naming that agent, the customer keys the rest. The payment moved with the call (still
capturing, the card complete, the call now the second agent's); each agent's phone and the
recording tap received the customer's audio and spandsp and multimon-ng decode nothing from
any of them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.types import DigitEvent
from proxy.securepay.states import PaymentStatus
from proxy.service.serve import Node
from tests.proxy.control import sip_peers
from tests.proxy.failclosed.rig import NgControl, until

pytestmark = pytest.mark.peer


async def test_a_payment_moves_with_the_call_and_no_leg_or_tap_hears_the_card(
        masking_node: Node, node_digits: list[DigitEvent]) -> None:
    node = masking_node
    ng = NgControl()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: ng, remote_addr=node.ng_address)
    customer, alice, bob, tap = [await RtpPeer(seed=n).start() for n in range(4)]
    try:
        await ng.ok({"command": "offer", "call-id": "x", "from-tag": "cust",
                     "metadata": "agent=alice", "recording-tap": f"127.0.0.1:{tap.port}",
                     "sdp": audio_sdp("127.0.0.1", customer.port)})
        answer = await ng.ok({"command": "answer", "call-id": "x", "from-tag": "cust",
                              "to-tag": "agent", "sip-code": 200,
                              "sdp": audio_sdp("127.0.0.1", alice.port)})
        to_toneguard = media_endpoint(answer["sdp"])
        session = node.payments.start("x", "alice")
        assert await until(lambda: node.registry.calls["x"].capturing, 2.0)

        # The customer keys the card in one stretch of audio (as a phone sends: no pause in
        # the RTP stream); half way, in the silence between the halves, the contact centre
        # moves the call to bob's phone (a re-INVITE naming bob).
        halves = [sip_peers.card_audio(half) for half in ("41111111", "11111111")]
        first, second = (len(h) // 160 for h in halves)
        playing = asyncio.create_task(customer.play(np.concatenate(halves), to_toneguard))
        assert await until(lambda: sip_peers.audio_packets(alice) >= first - 5, 10.0)
        await ng.ok({"command": "offer", "call-id": "x", "from-tag": "agent",
                     "to-tag": "cust", "metadata": "agent=bob",
                     "sdp": audio_sdp("127.0.0.1", bob.port)})
        await ng.ok({"command": "answer", "call-id": "x", "from-tag": "agent",
                     "to-tag": "cust", "sdp": audio_sdp("127.0.0.1", customer.port)})
        assert node.payments.owner("x") == "bob"
        sent = await playing
        await until(lambda: sip_peers.audio_packets(alice) + sip_peers.audio_packets(bob) >= sent
                    and sip_peers.audio_packets(tap) >= sent and len(node_digits) >= 16, 4.0)

        assert session.status is PaymentStatus.CAPTURING
        assert session.last4 == "1111" and session.current == "expiration-date"
        kinds = [(e.type, e.agent_id) for e in node.payments.bus.history]
        assert ("transferred", "bob") in kinds and kinds[-1][1] == "bob"
        for peer, share in ((alice, first), (bob, second), (tap, sent)):
            sip_peers.assert_heard_audio_but_no_digit(peer, share, percent=80)
        assert sip_peers.audio_packets(alice) <= first + 10  # after the transfer alice got no more
    finally:
        if ng.transport is not None:
            ng.transport.close()
        for peer in (customer, alice, bob, tap):
            peer.close()
