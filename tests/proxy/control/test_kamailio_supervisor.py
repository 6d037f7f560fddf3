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
from pathlib import Path

import numpy as np
import pytest

from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp
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


async def test_agent_supervisor_and_tap_decode_nothing_through_kamailio(
        tapped_node: Node, recording_tap: RtpPeer, node_digits: list[DigitEvent],
        tmp_path: Path) -> None:
    node, tap = tapped_node, recording_tap
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
            assert await until(lambda: sip_peers.answered_call(node) is not None, 10.0), (
                kam.log.read_text()[-3000:])
            call_id = sip_peers.answered_call(node)
            assert call_id is not None
            call = node.registry.calls[call_id]
            customer = call.party("offerer")
            assert customer is not None and customer.label == "customer"
            offer = await ng.ok({"command": "subscribe request", "call-id": call_id,
                                 "from-tag": customer.tag, "set-label": "supervisor"})
            await ng.ok({"command": "subscribe answer", "call-id": call_id,
                         "to-tag": offer["to-tag"],
                         "sdp": audio_sdp("127.0.0.1", supervisor.port, payload_types=(0, 101))})
            await sip_peers.all_exited_0(procs, kam)
        for peer in (agent, supervisor, tap):
            sip_peers.assert_heard_audio_but_no_digit(peer, sent)
        assert "".join(d.digit for d in node_digits) == CARD + EVENTS  # captured all the same
        assert node.registry.calls == {}  # the BYE deleted the call and the subscription
    finally:
        for proc in procs:
            await sip_peers.stop(proc)
        if ng.transport is not None:
            ng.transport.close()
        agent.close()
        supervisor.close()
