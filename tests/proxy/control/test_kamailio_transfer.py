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
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.spandsp import spandsp_detect
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
DIGITS: list[DigitEvent] = []
HALVES = ("41111111", "11111111")


@pytest.fixture
async def tap() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer(seed=9).start()
    yield peer
    peer.close()


@pytest.fixture
async def node(media_ports: tuple[int, int], tap: RtpPeer) -> AsyncIterator[Node]:
    DIGITS.clear()
    node = await sip_peers.start_node(media_ports, DIGITS,
                                      masking={"recording_tap": f"127.0.0.1:{tap.port}"})
    yield node
    await node.stop()


def _agents_scenario() -> str:
    """One UAS for both agents' phones (the cfg routes every carrier call to one centre
    address): each call answers with the media port of its line in the injection file."""
    return sip_peers.callee_scenario(sdp_port="[field0]", play=None)


async def _sipp(workdir: Path, name: str, xml: str, *, ip: str, port: int, calls: int = 1,
                target: str | None = None, inf: Path | None = None,
                ) -> asyncio.subprocess.Process:
    """As :func:`sip_peers.sipp`, with a call count and an injection file."""
    scenario = workdir / f"{name}.xml"
    scenario.write_text(xml)
    args = ["sipp", "-sf", str(scenario), "-i", ip, "-p", str(port), "-mi", ip,
            "-mp", str(pick_udp_port(ip)), "-m", str(calls), "-timeout", "40",
            "-timeout_error", "-nostdin", "-trace_err", "-error_file",
            str(workdir / f"{name}.errors")]
    if inf is not None:
        args += ["-inf", str(inf)]
    if target is not None:
        args.insert(1, target)
    return await asyncio.create_subprocess_exec(
        *args, cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def _audio_packets(peer: RtpPeer) -> int:
    return sum(1 for _, p in peer.received.packets if p.payload_type == 0)


async def test_an_attended_transfer_cancels_the_old_payment_and_nobody_hears_the_card(
        node: Node, tap: RtpPeer, tmp_path: Path) -> None:
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
            procs.append(await _sipp(tmp_path, "agents", _agents_scenario(), ip=CENTRE_IP,
                                     port=centre_port, calls=2, inf=tmp_path / "agents.csv"))
            await sip_peers.wait_udp_bound(CENTRE_IP, centre_port)
            for n, xml in enumerate((call1, call2)):
                procs.append(await _sipp(tmp_path, f"customer{n}", xml, ip=CARRIER_IP,
                                         port=carrier_ports[n],
                                         target=f"127.0.0.1:{sip_port}"))
            # The first agent opens a payment as soon as the call is up.
            assert await until(lambda: len(node.registry.calls) == 1 and any(
                p.tag != "~" for p in next(iter(node.registry.calls.values())).parties.values()
                if p.role == "answerer"), 10.0), kam.log.read_text()[-3000:]
            call_id = next(iter(node.registry.calls))
            node.payments.assign(call_id, "alice", "test")
            session = node.payments.start(call_id, "alice")
            assert await until(lambda: len(node.registry.calls) == 2, 20.0)
            async with asyncio.timeout(60):
                for proc in procs:
                    await proc.wait()
            errors = [(await p.stderr.read()).decode() if p.stderr else "" for p in procs]
            assert [p.returncode for p in procs] == [0, 0, 0], (
                errors, kam.log.read_text()[-3000:])

        assert session.status is PaymentStatus.CANCELLED and session.error == "call-ended"
        kinds = [(e.type, e.agent_id, e.status) for e in node.payments.bus.history]
        assert kinds[-1] == ("ended", "alice", PaymentStatus.CANCELLED)
        assert node.payments.capturing(call_id) is False
        for peer, share in ((first, sent[0]), (second, sent[1]), (tap, sum(sent))):
            assert _audio_packets(peer) >= share * 9 // 10, (_audio_packets(peer), share)
            heard = peer.received.audio()
            assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
            assert leaked_ms(heard) == 0.0
        assert "".join(d.digit for d in DIGITS) == "".join(HALVES)  # captured all the same
        assert node.registry.calls == {}  # both BYEs deleted their calls
    finally:
        for proc in procs:
            await sip_peers.stop(proc)
        first.close()
        second.close()
