"""Calls in both directions through Kamailio (the shipped kamailio.cfg) and ToneGuard, with the
node's default policy: the customer keys a test card in-band and as RFC 4733 events, whether the
customer called in or the contact centre called out, and before and after a transfer of the
contact-centre leg to another phone by re-INVITE. What reaches the contact centre is decoded by
spandsp and multimon-ng: no digit, and audio did arrive."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.control import sip_peers
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]
CARD = "4111111111111111"
EVENTS = "123#"


async def _node(media_ports: tuple[int, int], **masking: object) -> Node:
    return await sip_peers.start_node(media_ports, DIGITS, masking=masking)


DIGITS: list[DigitEvent] = []


@pytest.fixture
async def node(media_ports: tuple[int, int]) -> AsyncIterator[Node]:
    """A node with the default policy (what the README tells people to run)."""
    DIGITS.clear()
    node = await _node(media_ports)
    yield node
    await node.stop()


def _card_pcap(path: Path, digits: str, events: str) -> np.ndarray:
    audio = sip_peers.card_audio(digits)
    sip_peers.write_pcap(path, sip_peers.rtp_packets(audio, events))
    return audio


def _assert_heard_audio_but_no_digit(agent: RtpPeer, *, min_packets: int) -> None:
    audio_packets = [p for _, p in agent.received.packets if p.payload_type == 0]
    events = [p for _, p in agent.received.packets if p.payload_type == 101]
    assert len(audio_packets) >= min_packets, len(audio_packets)  # the agent heard the call
    assert events == []  # no RFC 4733 event left ToneGuard
    heard = agent.received.audio()
    assert spandsp_detect(heard) == ""
    assert multimon_detect(heard) == ""
    assert leaked_ms(heard) == 0.0


async def _run(uac: asyncio.subprocess.Process, uas: asyncio.subprocess.Process,
               kam: sip_peers.Kamailio) -> None:
    async with asyncio.timeout(60):
        await uac.wait()
        await uas.wait()
    errors = (await uac.stderr.read()).decode() if uac.stderr else ""
    assert uac.returncode == 0 and uas.returncode == 0, errors or kam.log.read_text()[-3000:]


@dataclass
class Flow:
    """One SIP call: who calls, which phone plays which card, what the contact centre hears."""

    outbound: bool  # the contact centre calls the customer
    cards: list[str]  # what the customer keys (a second one after the transfer)
    transfer: bool = False  # the contact centre re-INVITEs toward a second agent's phone


async def _place(toneguard: Node, flow: Flow,
                 tmp_path: Path) -> tuple[list[RtpPeer], list[int]]:
    """Run ``flow`` through Kamailio; the agents' phones (what they heard) and the customer's
    audio packets sent per card."""
    sent = []
    pcaps = []
    for n, card in enumerate(flow.cards):
        digits, events = card.split("+") if "+" in card else (card, "")
        audio = _card_pcap(tmp_path / f"card{n}.pcap", digits, events)
        sent.append(len(audio) // 160 + len(events) * 5)  # audio packets (5 after each event)
        pcaps.append((f"card{n}.pcap", len(audio) // 8 + len(events) * 220))
    agents = [await RtpPeer(CENTRE_IP).start() for _ in range(2 if flow.transfer else 1)]
    sip_port, centre_port, carrier_port = (pick_udp_port() for _ in range(3))
    first_ms = pcaps[0][1] + 1000
    hold_ms = max(ms for _, ms in pcaps) + 1500
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with sip_peers.kamailio(tmp_path, sip_port=sip_port,
                                      ng_port=toneguard.ng_address[1], centre_port=centre_port,
                                      carrier_port=carrier_port) as kam:
            if flow.outbound:  # the customer answers and keys; the agent's side calls
                callee = sip_peers.callee_scenario(
                    sdp_port="[media_port]", play=pcaps[0][0], reinvite=flow.transfer,
                    play_after=pcaps[1][0] if flow.transfer else None)
                caller = sip_peers.caller_scenario(
                    sdp_port=str(agents[0].port), play=None, hold_ms=hold_ms,
                    reinvite_port=str(agents[1].port) if flow.transfer else None,
                    reinvite_after_ms=first_ms)
                callee_at, caller_at = (CARRIER_IP, carrier_port), (CENTRE_IP, centre_port)
            else:  # the customer calls in and keys; the contact centre answers
                callee = sip_peers.callee_scenario(sdp_port=str(agents[0].port), play=None)
                caller = sip_peers.caller_scenario(sdp_port="[media_port]", play=pcaps[0][0],
                                                   hold_ms=hold_ms)
                callee_at, caller_at = (CENTRE_IP, centre_port), (CARRIER_IP, carrier_port)
            procs.append(await sip_peers.sipp(tmp_path, "callee", callee, ip=callee_at[0],
                                              port=callee_at[1],
                                              media_port=pick_udp_port(callee_at[0])))
            await sip_peers.wait_udp_bound(*callee_at)
            procs.append(await sip_peers.sipp(tmp_path, "caller", caller, ip=caller_at[0],
                                              port=caller_at[1],
                                              media_port=pick_udp_port(caller_at[0]),
                                              target=f"127.0.0.1:{sip_port}"))
            await _run(procs[1], procs[0], kam)
        return agents, sent
    finally:
        for proc in procs:
            await sip_peers.stop(proc)


@pytest.mark.parametrize("flow", [
    pytest.param(Flow(outbound=False, cards=[CARD + "+" + EVENTS]), id="inbound"),
    pytest.param(Flow(outbound=True, cards=[CARD + "+" + EVENTS]), id="outbound"),
    pytest.param(Flow(outbound=True, cards=[CARD, "5555555555554444+" + EVENTS],
                      transfer=True), id="outbound-transferred-by-re-invite"),
])
async def test_the_customers_card_never_reaches_any_agent_whoever_calls(
        node: Node, flow: Flow, tmp_path: Path) -> None:
    agents, sent = await _place(node, flow, tmp_path)
    try:
        for agent, packets in zip(agents, sent, strict=True):  # after a transfer: the second
            _assert_heard_audio_but_no_digit(agent, min_packets=packets * 95 // 100)
        keyed = "".join(c.replace("+", "") for c in flow.cards)
        assert "".join(d.digit for d in DIGITS) == keyed  # captured all the same
        assert node.registry.calls == {}  # BYE deleted the call's media
    finally:
        for agent in agents:
            agent.close()


async def test_control_without_masking_the_agent_decodes_the_card(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The same outbound call with always-on masking off: the decoders do hear the card, so
    the assertions above could fail."""
    node = await _node(media_ports, always_on=False)
    try:
        agents, _ = await _place(node, Flow(outbound=True, cards=[CARD]), tmp_path)
        heard = agents[0].received.audio()
        assert spandsp_detect(heard) == CARD and multimon_detect(heard) == CARD
        agents[0].close()
    finally:
        await node.stop()
