"""A supervisor on a call through Kamailio (the shipped kamailio.cfg) and ToneGuard: a customer
(sipp) calls the contact centre (sipp), and as soon as the call is answered a supervisor's
phone subscribes to the customer over ng (``subscribe request`` / ``subscribe answer``, as a
contact-centre platform would send them: Kamailio 5.6's rtpengine module has no subscribe
functions). The customer keys a test card in-band and as RFC 4733 events; the agent, the
supervisor and the node's recording tap each received the customer's audio, and spandsp and
multimon-ng decode nothing from any of them."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from proxy.control.calls import PENDING_TAG
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.control import sip_peers
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP
from tests.proxy.failclosed.rig import NgControl, until

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]
CARD = "4111111111111111"
EVENTS = "123#"
DIGITS: list[DigitEvent] = []


@pytest.fixture
async def tap() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer(seed=9).start()
    yield peer
    peer.close()


@pytest.fixture
async def node(media_ports: tuple[int, int], tap: RtpPeer) -> AsyncIterator[Node]:
    """The default policy, with the node's recording tap pointed at ``tap``."""
    DIGITS.clear()
    node = await sip_peers.start_node(media_ports, DIGITS,
                                      masking={"recording_tap": f"127.0.0.1:{tap.port}"})
    yield node
    await node.stop()


def _answered(node: Node) -> str | None:
    """The call id once a call is answered (its answerer has a tag), else None."""
    for call in node.registry.calls.values():
        answerer = call.party("answerer")
        if answerer is not None and answerer.tag != PENDING_TAG and answerer.medias:
            return call.call_id
    return None


def _audio_packets(peer: RtpPeer) -> int:
    return sum(1 for _, p in peer.received.packets if p.payload_type == 0)


async def test_agent_supervisor_and_tap_decode_nothing_through_kamailio(
        node: Node, tap: RtpPeer, tmp_path: Path) -> None:
    # One second of silence first: time for the supervisor to subscribe once the call is up.
    audio = np.concatenate([np.zeros(8000, np.int16), sip_peers.card_audio(CARD)])
    sip_peers.write_pcap(tmp_path / "card.pcap", sip_peers.rtp_packets(audio, EVENTS))
    sent = len(audio) // 160 + len(EVENTS) * 5  # audio packets (5 after each event)
    play_ms = len(audio) // 8 + len(EVENTS) * 220
    agent, supervisor = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    ng = NgControl()
    await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: ng, remote_addr=node.ng_address)
    sip_port, centre_port, carrier_port = (pick_udp_port() for _ in range(3))
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with sip_peers.kamailio(tmp_path, sip_port=sip_port, ng_port=node.ng_address[1],
                                      centre_port=centre_port,
                                      carrier_port=carrier_port) as kam:
            callee = sip_peers.callee_scenario(sdp_port=str(agent.port), play=None)
            caller = sip_peers.caller_scenario(sdp_port="[media_port]", play="card.pcap",
                                               hold_ms=play_ms + 1500)
            procs.append(await sip_peers.sipp(tmp_path, "callee", callee, ip=CENTRE_IP,
                                              port=centre_port,
                                              media_port=pick_udp_port(CENTRE_IP)))
            await sip_peers.wait_udp_bound(CENTRE_IP, centre_port)
            procs.append(await sip_peers.sipp(tmp_path, "caller", caller, ip=CARRIER_IP,
                                              port=carrier_port,
                                              media_port=pick_udp_port(CARRIER_IP),
                                              target=f"127.0.0.1:{sip_port}"))
            assert await until(lambda: _answered(node) is not None, 10.0), (
                kam.log.read_text()[-3000:])
            call_id = _answered(node)
            call = node.registry.calls[call_id]
            customer = call.party("offerer")
            assert customer is not None and customer.label == "customer"
            offer = await ng.ok({"command": "subscribe request", "call-id": call_id,
                                 "from-tag": customer.tag, "set-label": "supervisor"})
            await ng.ok({"command": "subscribe answer", "call-id": call_id,
                         "to-tag": offer["to-tag"],
                         "sdp": audio_sdp("127.0.0.1", supervisor.port, payload_types=(0, 101))})
            async with asyncio.timeout(60):
                for proc in procs:
                    await proc.wait()
            errors = (await procs[1].stderr.read()).decode() if procs[1].stderr else ""
            assert [p.returncode for p in procs] == [0, 0], errors or kam.log.read_text()[-3000:]
        for peer in (agent, supervisor, tap):
            assert _audio_packets(peer) >= sent * 9 // 10, (_audio_packets(peer), sent)
            assert peer.received.events() == []  # no RFC 4733 event left ToneGuard
            heard = peer.received.audio()
            assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
            assert leaked_ms(heard) == 0.0
        assert "".join(d.digit for d in DIGITS) == CARD + EVENTS  # captured all the same
        assert node.registry.calls == {}  # the BYE deleted the call and the subscription
    finally:
        for proc in procs:
            await sip_peers.stop(proc)
        if ng.transport is not None:
            ng.transport.close()
        agent.close()
        supervisor.close()
