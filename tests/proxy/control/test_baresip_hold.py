"""Real phones through Kamailio (the shipped kamailio.cfg) and ToneGuard: a customer on baresip
calls the contact centre (baresip), keys a card in-band, one side puts the call on hold and
resumes it (re-INVITEs with sendonly / sendrecv), and the customer keys another card. After
every step audio flows both ways (counted from what each phone decoded, not assumed), SRTP keys
survive the hold (a phone keeps its first key, as baresip does), and spandsp and multimon-ng
decode no digit from what the agent's phone heard — while ToneGuard captured every one."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from dsp import g711, tones
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from proxy.media.rtp import RtpPacket, RtpParseError, is_rtcp
from proxy.media.srtp import SrtpError, SrtpReceiver
from proxy.media.types import DigitEvent, SrtpParams
from proxy.service.serve import Node
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.proxy.control import sip_peers
from tests.proxy.control.baresip import LoopbackCapture, Phone, phone
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("baresip")),
                       reason="needs kamailio and baresip"),
]
CARDS = ("4111111111111111", "5555555555554444")
CUSTOMER_MARK, AGENT_MARK = 700.0, 1200.0  # each side's voice: a tone we can count
FRAME = 160


def _customer_microphone() -> np.ndarray:
    """Voice, a card, a long quiet stretch (the hold happens here), voice, another card."""
    def voice(ms: float) -> np.ndarray:
        return tones.sine(CUSTOMER_MARK, ms, -15.0)

    def card(digits: str) -> np.ndarray:
        return tones.dtmf_sequence(digits, tone_ms=80, gap_ms=80, low_dbm0=-10.0)

    # (baresip hangs up when its microphone file ends: the tail keeps it talking)
    return np.concatenate([voice(1000), card(CARDS[0]), tones.silence(5500), voice(1000),
                           card(CARDS[1]), tones.silence(20000)])


def _frames_with(samples: np.ndarray, freq: float) -> int:
    """20 ms frames of ``samples`` in which ``freq`` stands well above everything else."""
    n = len(samples) // FRAME
    if n == 0:
        return 0
    frames = samples[:n * FRAME].reshape(n, FRAME).astype(np.float64)
    t = np.arange(FRAME) / 8000.0
    ref = np.exp(-2j * np.pi * freq * t)
    tone = np.abs(frames @ ref) * 2 / FRAME  # amplitude at freq
    rms = np.sqrt(np.mean(frames ** 2, axis=1)) * np.sqrt(2)
    return int(np.sum((tone > 300) & (tone > 0.7 * rms)))


@pytest.fixture(params=[True], ids=["masked"])
async def node(request: pytest.FixtureRequest, media_ports: tuple[int, int]
               ) -> AsyncIterator[tuple[Node, list[DigitEvent]]]:
    digits: list[DigitEvent] = []
    # baresip binds its RTP socket to the wildcard address, so its packets leave from
    # 127.0.0.1 while its SDP says 127.0.0.2 — as a phone behind NAT does: the documented
    # NAT option lets such a source latch within the learning window.
    node = await sip_peers.start_node(media_ports, digits,
                                      masking={"always_on": request.param},
                                      media={"learn_any_source": True})
    yield node, digits
    await node.stop()


async def _hold_and_resume(holder: Phone) -> None:
    await holder.command("hold")
    await asyncio.sleep(1.5)  # on hold for a while (the customer's microphone is quiet here)
    await holder.command("resume")


def _keys_toward(node: Node, label: str) -> SrtpParams | None:
    """The SDES key ToneGuard sends with toward the party labelled ``label``."""
    [call] = node.registry.calls.values()
    [party] = [p for p in call.parties.values() if p.label == label]
    return party.medias[0].keys.send


def _relay_ports(node: Node) -> set[int]:
    """ToneGuard's own RTP and RTCP ports of the call (what it sends the phones from)."""
    [call] = node.registry.calls.values()
    return {port for party in call.parties.values() for media in party.medias
            for port in (media.local.rtp_port, media.local.rtcp_port)}


def _audio(datagrams: list[bytes], key: SrtpParams | None) -> tuple[np.ndarray, int]:
    """The PCMU audio in captured RTP (decrypted with ``key``), in timestamp order, and how
    many datagrams did not decrypt or parse (RTCP on the RTP port is skipped)."""
    receiver = SrtpReceiver(key) if key else None
    packets, bad = [], 0
    for data in datagrams:
        if is_rtcp(data):
            continue
        try:
            packets.append(RtpPacket.parse(receiver.unprotect(data) if receiver else data))
        except (SrtpError, RtpParseError):
            bad += 1
    audio = [p for p in packets if p.payload_type == 0]
    audio.sort(key=lambda p: p.timestamp)
    codes = b"".join(p.payload for p in audio)
    return g711.decode(np.frombuffer(codes, np.uint8), "ulaw"), bad


@pytest.mark.parametrize(("srtp", "holder", "node"), [
    pytest.param(False, "customer", True, id="rtp-customer-holds"),
    pytest.param(True, "customer", True, id="srtp-customer-holds"),
    pytest.param(True, "agent", True, id="srtp-agent-holds"),
    # The control: masking off, the same capture and decoders do read both cards.
    pytest.param(True, "customer", False, id="control-unmasked"),
], indirect=["node"])
async def test_hold_and_resume_keep_audio_flowing_and_digits_masked(
        node: tuple[Node, list[DigitEvent]], tmp_path: Path, srtp: bool, holder: str) -> None:
    toneguard, digits = node
    sip_port, centre_port = pick_udp_port(), pick_udp_port()
    carrier_port = pick_udp_port(CARRIER_IP)
    agent_rtp, customer_rtp = _rtp_range(), _rtp_range()
    microphone = _customer_microphone()
    to_agent, to_customer = LoopbackCapture(agent_rtp), LoopbackCapture(customer_rtp)
    try:
        async with (
            sip_peers.kamailio(tmp_path, sip_port=sip_port, ng_port=toneguard.ng_address[1],
                               centre_port=centre_port, carrier_port=carrier_port),
            phone(tmp_path / "agent", "agent", ip=CENTRE_IP, sip_port=centre_port,
                  ctrl_port=pick_tcp_port(), rtp_ports=agent_rtp,
                  microphone=tones.sine(AGENT_MARK, 30000, -20.0), srtp=srtp) as agent,
            phone(tmp_path / "customer", "customer", ip=CARRIER_IP, sip_port=carrier_port,
                  ctrl_port=pick_tcp_port(), rtp_ports=customer_rtp,
                  microphone=microphone, srtp=srtp) as customer,
        ):
            await customer.command("dial", f"sip:agent@127.0.0.1:{sip_port}")
            await customer.wait_event("CALL_ESTABLISHED")
            keys = _keys_toward(toneguard, "agent"), _keys_toward(toneguard, "customer")
            relay = _relay_ports(toneguard)
            await asyncio.sleep(4.6)  # the first card has been keyed
            before = (len(to_agent.sent_from(relay)), len(to_customer.sent_from(relay)))
            await _hold_and_resume(customer if holder == "customer" else agent)
            await asyncio.sleep(8.5)  # the second card, and a second
            assert (_keys_toward(toneguard, "agent"),
                    _keys_toward(toneguard, "customer")) == keys  # kept across the hold
            assert _relay_ports(toneguard) == relay  # and ToneGuard's ports
            await customer.command("hangup")
            await customer.wait_event("CALL_CLOSED")
    finally:
        to_agent.close()
        to_customer.close()
    # The capture saw every datagram (else a shortfall below would be the capture's).
    assert (to_agent.drops, to_customer.drops) == (0, 0)
    # Nothing reached either phone from the other phone's ports: media never went around
    # ToneGuard. (Datagrams from elsewhere are other programs' loopback traffic that happens to
    # hit the phones' port ranges on a shared machine: not this call's.)
    assert to_agent.sent_from(customer_rtp) == [] and to_customer.sent_from(agent_rtp) == []
    from_relay_to_agent, from_relay_to_customer = (to_agent.sent_from(relay),
                                                   to_customer.sent_from(relay))
    heard_by_agent, bad_agent = _audio(from_relay_to_agent, keys[0])
    _heard_by_customer, bad_customer = _audio(from_relay_to_customer, keys[1])
    # Every datagram ToneGuard sent each phone decrypts with the one key it was given: no
    # re-keying.
    assert (bad_agent, bad_customer) == (0, 0)
    # Audio flowed both ways, before and after the hold: each side's marker tone was heard,
    # and packets kept coming after it.
    after_agent = _audio(from_relay_to_agent[before[0]:], keys[0])[0]
    after_customer = _audio(from_relay_to_customer[before[1]:], keys[1])[0]
    assert _frames_with(heard_by_agent[:len(heard_by_agent) - len(after_agent)],
                        CUSTOMER_MARK) >= 35  # ~50 frames of the customer's first second
    assert _frames_with(after_agent, CUSTOMER_MARK) >= 35  # and of its second, after resume
    assert _frames_with(after_customer, AGENT_MARK) >= 200  # the agent heard after resume too
    # Every key went through ToneGuard (so media never bypassed it after the resume) ...
    assert "".join(d.digit for d in digits) == "".join(CARDS)
    # ... and none reached the agent (the control: all of them did).
    expected = "" if toneguard.config.masking.always_on else "".join(CARDS)
    assert spandsp_detect(heard_by_agent) == expected
    assert multimon_detect(heard_by_agent) == expected
    assert toneguard.registry.calls == {}


def _rtp_range() -> range:
    base = pick_udp_port() // 2 * 2
    return range(base, base + 20)
