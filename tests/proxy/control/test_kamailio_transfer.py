"""An attended transfer through Kamailio (the shipped kamailio.cfg) and ToneGuard, as ToneGuard
sees it when the phones handle the REFER: the customer (sipp) is on a call with the first agent
(sipp) and keys half a test card into an open payment; the customer's phone then places the
replacing call to the second agent (a new Call-ID: the INVITE with Replaces that a REFER asks
for) and hangs up the first call; the customer keys the rest.

(The REFER, its NOTIFYs and the Replaces header pass between the phones through Kamailio and
never reach ToneGuard's ng, so they are left out: what ToneGuard sees is the new call and the
first call's delete.)

Then: the payment of the first call was cancelled cleanly (``call-ended``: nobody is left with
a payment capturing), the second call's customer is masked by the config's labels, each agent's
phone and the recording tap received the customer's audio, and spandsp and multimon-ng decode
nothing from any of them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from proxy.demo.phone import RtpPeer
from proxy.media.types import DigitEvent
from proxy.securepay.states import PaymentStatus
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.control import sip_peers
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP
from tests.proxy.failclosed.rig import until

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]
HALVES = ("41111111", "11111111")


def _agents_scenario() -> str:
    """One UAS for both agents' phones (the cfg routes every carrier call to one centre
    address): each call answers with the media port of its line in the injection file."""
    return sip_peers.callee_scenario(sdp_port="[field0]", play=None)


async def test_an_attended_transfer_cancels_the_old_payment_and_nobody_hears_the_card(
        tapped_node: Node, recording_tap: RtpPeer, node_digits: list[DigitEvent],
        tmp_path: Path) -> None:
    node, tap = tapped_node, recording_tap
    sent, play_ms = [], []
    for n, half in enumerate(HALVES):
        audio = sip_peers.card_audio(half)
        sip_peers.write_pcap(tmp_path / f"half{n}.pcap", sip_peers.rtp_packets(audio))
        sent.append(len(audio) // 160)
        play_ms.append(len(audio) // 8)
    first, second = [await RtpPeer(seed=n).start() for n in (1, 2)]
    (tmp_path / "agents.csv").write_text(f"SEQUENTIAL\n{first.port};\n{second.port};\n")
    # The first call lasts until the replacing call has been up for a while; the replacing
    # call starts once the first half has been keyed.
    replace_at = play_ms[0] + 1000
    call1 = sip_peers.caller_scenario(sdp_port="[media_port]", play="half0.pcap",
                                      hold_ms=replace_at + 1500)
    call2 = sip_peers.caller_scenario(sdp_port="[media_port]", play="half1.pcap",
                                      hold_ms=play_ms[1] + 1500)
    call2 = call2.replace("  <send", f'  <pause milliseconds="{replace_at}"/>\n  <send', 1)
    sip_port, centre_port = pick_udp_port(), pick_udp_port()
    carrier_ports = [pick_udp_port(CARRIER_IP) for _ in range(2)]
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with sip_peers.kamailio(tmp_path, sip_port=sip_port, ng_port=node.ng_address[1],
                                      centre_port=centre_port,
                                      carrier_port=carrier_ports[0]) as kam:
            procs.append(await sip_peers.sipp(
                tmp_path, "agents", _agents_scenario(), ip=CENTRE_IP, port=centre_port,
                media_port=pick_udp_port(CENTRE_IP), calls=2, inf=tmp_path / "agents.csv"))
            await sip_peers.wait_udp_bound(CENTRE_IP, centre_port)
            for n, xml in enumerate((call1, call2)):
                procs.append(await sip_peers.sipp(
                    tmp_path, f"customer{n}", xml, ip=CARRIER_IP, port=carrier_ports[n],
                    media_port=pick_udp_port(CARRIER_IP), target=f"127.0.0.1:{sip_port}"))
            # The first agent opens a payment as soon as the call is up.
            assert await until(lambda: len(node.registry.calls) == 1
                               and sip_peers.answered_call(node) is not None, 10.0), (
                kam.log.read_text()[-3000:])
            call_id = next(iter(node.registry.calls))
            node.payments.assign(call_id, "alice", "test")
            session = node.payments.start(call_id, "alice")
            assert await until(lambda: len(node.registry.calls) == 2, 20.0)
            await sip_peers.all_exited_0(procs, kam)

        assert session.status is PaymentStatus.CANCELLED and session.error == "call-ended"
        kinds = [(e.type, e.agent_id, e.status) for e in node.payments.bus.history]
        assert kinds[-1] == ("ended", "alice", PaymentStatus.CANCELLED)
        assert node.payments.capturing(call_id) is False
        for peer, share in ((first, sent[0]), (second, sent[1]), (tap, sum(sent))):
            sip_peers.assert_heard_audio_but_no_digit(peer, share)
        assert "".join(d.digit for d in node_digits) == "".join(HALVES)  # captured all the same
        assert node.registry.calls == {}  # both BYEs deleted their calls
    finally:
        for proc in procs:
            await sip_peers.stop(proc)
        first.close()
        second.close()
