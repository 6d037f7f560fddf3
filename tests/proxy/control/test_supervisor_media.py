"""A supervisor listening in, with real media through a node: the customer keys a test card
in-band and as RFC 4733 events; the agent, the supervisor (``subscribe request`` /
``subscribe answer`` over ng) and the recording tap each receive the customer's audio, and
spandsp and multimon-ng decode nothing from any of them. The supervisor leaving
(``unsubscribe``) does not cut the agent. The same call unmasked is the control."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from proxy.control import sdes
from proxy.control.sdp import parse
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.proxy.control import sip_peers
from tests.proxy.failclosed.rig import NgControl, until

pytestmark = pytest.mark.peer
CARD = "4111111111111111"
EVENTS = "123#"


class Floor:
    """The customer, the agent, the supervisor and the recording tap, on one call."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ng = NgControl()
        self.customer, self.agent, self.supervisor, self.tap = (
            RtpPeer(seed=n) for n in range(4))
        self.to_toneguard: tuple[str, int] = ("", 0)

    async def start(self, *, subscribe: dict[str, Any] | None = None, **offer: Any) -> Floor:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.ng, remote_addr=self.node.ng_address)
        for peer in (self.customer, self.agent, self.supervisor, self.tap):
            await peer.start()
        await self.ng.ok({"command": "offer", "call-id": "sv", "from-tag": "cust",
                          "recording-tap": f"127.0.0.1:{self.tap.port}",
                          "sdp": audio_sdp("127.0.0.1", self.customer.port), **offer})
        answer = await self.ng.ok({"command": "answer", "call-id": "sv", "from-tag": "cust",
                                   "to-tag": "agent", "sip-code": 200,
                                   "sdp": audio_sdp("127.0.0.1", self.agent.port)})
        self.to_toneguard = media_endpoint(answer["sdp"])
        sub = await self.ng.ok({"command": "subscribe request", "call-id": "sv",
                                "from-tag": "cust", "set-label": "supervisor",
                                **(subscribe or {})})
        section = parse(sub["sdp"]).media[0]
        crypto = []
        if section.proto == "RTP/SAVP":  # the supervisor's phone takes the key offered to it
            offered = sdes.offered(section.attributes("crypto"))[0]
            self.supervisor.set_srtp_recv(offered.params)
            crypto = [sdes.generate(offered.suite, offered.tag)]
        await self.ng.ok({"command": "subscribe answer", "call-id": "sv",
                          "to-tag": sub["to-tag"],
                          "sdp": audio_sdp("127.0.0.1", self.supervisor.port,
                                           proto=section.proto, crypto=crypto)})
        self.sub_tag = sub["to-tag"]
        return self

    async def key_card(self, card: str, events: str) -> int:
        """The customer keys ``card`` in-band then ``events`` as RFC 4733; audio packets sent."""
        sent = await self.customer.play(sip_peers.card_audio(card), self.to_toneguard)
        for digit in events:
            await self.customer.send_event(digit, self.to_toneguard)
            sent += await self.customer.play(np.zeros(800, np.int16), self.to_toneguard)
        return sent

    def close(self) -> None:
        if self.ng.transport is not None:
            self.ng.transport.close()
        for peer in (self.customer, self.agent, self.supervisor, self.tap):
            peer.close()


async def test_agent_supervisor_and_tap_hear_the_customer_masked(
        masking_node: Node, node_digits: list[DigitEvent]) -> None:
    node = masking_node
    floor = await Floor(node).start()
    try:
        sent = await floor.key_card(CARD, EVENTS)
        listeners = (floor.agent, floor.supervisor, floor.tap)
        await until(lambda: all(sip_peers.audio_packets(p) >= sent for p in listeners), 4.0)
        for peer in listeners:
            sip_peers.assert_heard_audio_but_no_digit(peer, sent)
        assert "".join(d.digit for d in node_digits) == CARD + EVENTS  # captured all the same

        # The supervisor leaves; the agent keeps hearing the customer, the supervisor not.
        await floor.ng.ok({"command": "unsubscribe", "call-id": "sv", "to-tag": floor.sub_tag})
        heard_by_supervisor = sip_peers.audio_packets(floor.supervisor)
        before = sip_peers.audio_packets(floor.agent)
        more = await floor.customer.play(sip_peers.card_audio("5555555555554444"),
                                         floor.to_toneguard)
        await until(lambda: sip_peers.audio_packets(floor.agent) >= before + more, 4.0)
        assert sip_peers.audio_packets(floor.agent) >= before + more * 9 // 10
        assert sip_peers.audio_packets(floor.supervisor) == heard_by_supervisor
        heard = floor.agent.received.audio()
        assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
    finally:
        floor.close()


async def test_control_unmasked_the_supervisor_decodes_the_card(masking_node: Node) -> None:
    node = masking_node
    """``caller-none``: nobody is masked, and the supervisor's decoders find the card — the
    checks above can fail, and the supervisor's copy is the agent's audio."""
    floor = await Floor(node).start(flags=["caller-none"])
    try:
        sent = await floor.key_card(CARD, "")
        await until(lambda: sip_peers.audio_packets(floor.supervisor) >= sent, 4.0)
        heard = floor.supervisor.received.audio()
        assert spandsp_detect(heard) == CARD and multimon_detect(heard) == CARD
    finally:
        floor.close()


async def test_a_capture_masks_the_supervisors_copy_on_an_unmasked_call(
        masking_node: Node) -> None:
    node = masking_node
    """``caller-none`` (nobody masked) until a payment starts capturing: from then on the
    customer is masked, and so is the supervisor's copy — over SDES-SRTP with its own key."""
    floor = await Floor(node).start(flags=["caller-none"], **{"from-label": "customer"},
                                    subscribe={"transport-protocol": "RTP/SAVP"})
    try:
        node.payments.start("sv", "alice")
        assert await until(lambda: node.registry.calls["sv"].capturing, 2.0)
        await until(lambda: node.registry.calls["sv"].parties["cust"].medias[0].config.masking
                    is not None, 2.0)
        sent = await floor.key_card(CARD, "")
        await until(lambda: sip_peers.audio_packets(floor.supervisor) >= sent, 4.0)
        assert floor.supervisor.received.errors == 0  # every packet decrypted with its key
        for peer in (floor.agent, floor.supervisor):
            sip_peers.assert_heard_audio_but_no_digit(peer, sent)
    finally:
        floor.close()
