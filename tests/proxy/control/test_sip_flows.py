"""SIP call flows beyond a plain call, with real Kamailio (the shipped kamailio.cfg) and sipp
(scenarios in tests/proxy/control/sipp/) in front of ToneGuard: early media, forking, CANCEL,
rejects, re-INVITE glare (491), UPDATE, re-INVITE with SDES, SIP INFO DTMF.

sipp does the signalling; the media of both parties are RtpPeers of the test (their ports are
in sipp's SDP, ``-key rtp_port``), so the test keys the customer's card where the flow says
and counts the audio each side heard. The test follows the flow through ToneGuard's own log
events (``call answered``, ``call re-offered``), never through fixed sleeps. After each flow:
what reached the agent is decoded by spandsp and multimon-ng (no digit, while audio arrived and
ToneGuard captured every key) and nothing is left behind (ng ``list`` empty, no stream held).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from dsp import tones
from proxy.control import sdes
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent, SrtpParams
from proxy.service.serve import Node
from tests.conftest import pick_udp_port, udp_port_bound
from tests.proxy.control import sip_peers
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]
SIPP_DIR = Path(__file__).parent / "sipp"
CARDS = ("4111111111111111", "5555555555554444")
AGENT_VOICE_HZ = 1200.0  # what the agent "says": counted on the customer's side
CARD_MS = 400 + 16 * 160 + 400  # sip_peers.card_audio of a 16-digit card


@dataclass
class Flow:
    """One test's peers: ToneGuard, Kamailio, the two media ends, sipp processes, log events."""

    node: Node
    digits: list[DigitEvent]
    kamailio: sip_peers.Kamailio
    workdir: Path
    centre_ports: list[int]
    carrier_port: int
    logs: list[dict[str, Any]]
    customer: RtpPeer
    agents: list[RtpPeer]
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _quiet_since: dict[int, float] = field(default_factory=dict)  # id(phone) → last play end

    async def sipp(self, name: str, scenario: str | Path, *, rtp_port: int,
                   duration_ms: int = 0, caller: bool = False, centre: int = 0,
                   extra: tuple[str, ...] = (), **keys: object) -> None:
        """Start sipp ``scenario`` (a name in sipp/ or a path) for one call: the customer's
        phone (``caller``, calling Kamailio from the carrier's address) or contact-centre
        target ``centre``."""
        ip, port = ((CARRIER_IP, self.carrier_port) if caller
                    else (CENTRE_IP, self.centre_ports[centre]))
        args = ["sipp", "-sf", str(SIPP_DIR / scenario), "-i", ip, "-p", str(port),
                "-mi", ip, "-mp", str(_sipp_media_port(ip)), "-m", "1", "-d", str(duration_ms),
                "-timeout", "30", "-timeout_error", "-nostdin", "-trace_err",
                "-error_file", str(self.workdir / f"{name}.errors"), "-trace_msg",
                "-message_file", str(self.workdir / f"{name}.messages"),
                "-key", "rtp_port", str(rtp_port)]
        for key, value in keys.items():
            args += ["-key", key, str(value)]
        args += extra
        if caller:
            args.insert(1, f"127.0.0.1:{self.kamailio.sip_port}")
        with (self.workdir / f"{name}.stderr").open("wb") as stderr:
            self.procs[name] = await asyncio.create_subprocess_exec(
                *args, cwd=self.workdir, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
        if not caller:
            await self.until(lambda: udp_port_bound(ip, port), timeout=10)

    async def finished(self, timeout: float = 40.0) -> None:
        """Until every sipp has ended; each must have played its scenario to the end."""
        async with asyncio.timeout(timeout):
            for proc in self.procs.values():
                await proc.wait()
        for name, proc in self.procs.items():
            assert proc.returncode == 0, (name, self._errors(name),
                                          self.kamailio.log.read_text()[-3000:])

    def _errors(self, name: str) -> str:
        """What sipp ``name`` said went wrong (its error trace, else its stderr)."""
        for suffix in ("errors", "stderr"):
            path = self.workdir / f"{name}.{suffix}"
            if path.exists() and path.stat().st_size:
                return path.read_text()[-3000:]
        return ""

    def assert_captured(self, *cards: str) -> None:
        """ToneGuard detected every key of ``cards``, in order: the card was really keyed where
        the decoders on the agent's side found nothing. (A key may count twice: on this
        shared 2-core machine a phone's packets can stall long enough to split a tone.)"""
        captured = iter("".join(d.digit for d in self.digits))
        assert all(key in captured for key in "".join(cards)), "keys missing"  # subsequence
        assert len(self.digits) <= len("".join(cards)) + 2, len(self.digits)

    def count(self, event: str) -> int:
        return sum(1 for e in self.logs if e.get("event") == event)

    async def until(self, condition: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                for name, proc in self.procs.items():
                    assert proc.returncode in (None, 0), (name, self._errors(name))
                await asyncio.sleep(0.02)

    def toward(self, label: str) -> tuple[str, int]:
        """Where the party labelled ``label`` sends its media (ToneGuard's port facing it)."""
        [call] = self.node.registry.calls.values()
        labelled = [p for p in call.parties.values() if p.label == label]
        if not labelled:  # unlabelled (a late offer): the customer is the caller's tag
            caller_tag = f"{self.procs['caller'].pid}SIPpTag001"
            labelled = [p for p in call.parties.values()
                        if (p.tag == caller_tag) == (label == "customer")]
        [party] = labelled
        return CENTRE_IP, party.medias[0].local.rtp_port

    async def talk(self, card: str, *, agent: int = 0, customer: RtpPeer | None = None
                   ) -> None:
        """The customer keys ``card`` in-band while the agent talks, both in real time. Each
        phone's RTP clock ran on while it was quiet, as a real phone's does."""
        audio = sip_peers.card_audio(card)
        voice = tones.sine(AGENT_VOICE_HZ, len(audio) / 8, -15.0)
        customer = customer or self.customer
        phones = (customer, self.agents[agent])
        now = asyncio.get_running_loop().time()
        for phone in phones:
            if id(phone) in self._quiet_since:
                phone.skip((now - self._quiet_since[id(phone)]) * 1000)
        await asyncio.gather(customer.play(audio, self.toward("customer")),
                             self.agents[agent].play(voice, self.toward("agent")))
        for phone in phones:
            self._quiet_since[id(phone)] = asyncio.get_running_loop().time()

    async def nothing_left(self) -> None:
        """ng ``list`` is empty and the engine holds no stream (every port released)."""
        await self.until(lambda: not self.node.registry.calls, timeout=5)
        listed = await self.node.registry.handle({"command": "list"})
        assert listed["calls"] == []
        assert (await self.node.engine.totals()).streams == 0

    def received_sdp(self, name: str, line: str, status: str = "200 OK") -> list[str]:
        """``line`` (a regex) in each ``status`` reply with SDP that sipp ``name`` received,
        in order: what ToneGuard advertised to that party."""
        trace = (self.workdir / f"{name}.messages").read_text()
        found = []
        for message in re.split(r"\n-{10,}[^\n]*\n", trace):
            if ("message received" in message and f"SIP/2.0 {status}" in message
                    and "v=0" in message):
                found += re.findall(line, message)
        return found


def _sipp_media_port(ip: str) -> int:
    """A port for sipp's own media sockets (unused here: the test's phones carry the media),
    with the three after it free too — sipp binds audio and video RTP/RTCP at port..port+3
    and exits when one is taken."""
    for _ in range(50):
        port = pick_udp_port(ip)
        if port % 2 == 0 and port + 3 <= 65535 and not any(
                udp_port_bound(ip, port + n) for n in range(1, 4)):
            return port
    raise RuntimeError(f"no four free UDP ports in a row on {ip}")


@contextlib.asynccontextmanager
async def _flow(media_ports: tuple[int, int], workdir: Path, *, agents: int = 1,
                fork: bool = False, customer_key: SrtpParams | None = None
                ) -> AsyncIterator[Flow]:
    digits: list[DigitEvent] = []
    node = await sip_peers.start_node(media_ports, digits)
    peers: list[RtpPeer] = []
    centre_ports = [pick_udp_port() for _ in range(2 if fork else 1)]
    carrier_port = pick_udp_port(CARRIER_IP)
    try:
        peers.append(await RtpPeer(CARRIER_IP, srtp_send=customer_key).start())
        for _ in range(agents):
            peers.append(await RtpPeer(CENTRE_IP).start())
        with capture_logs() as logs:
            async with sip_peers.kamailio(
                    workdir, sip_port=pick_udp_port(), ng_port=node.ng_address[1],
                    centre_port=centre_ports[0], carrier_port=carrier_port,
                    fork_port=centre_ports[1] if fork else None) as kam:
                flow = Flow(node, digits, kam, workdir, centre_ports, carrier_port, logs,
                            peers[0], peers[1:])
                try:
                    yield flow
                finally:  # the phones go before the proxy they talk to
                    for proc in flow.procs.values():
                        await sip_peers.stop(proc)
    finally:
        for peer in peers:
            peer.close()
        await node.stop()


def _assert_agent_heard_audio_but_no_digit(agent: RtpPeer, *, min_packets: int) -> None:
    audio = [p for _, p in agent.received.packets if p.payload_type == 0]
    assert len(audio) >= min_packets, len(audio)  # the agent heard the customer
    assert agent.received.events(101) == []  # no RFC 4733 event left ToneGuard
    heard = agent.received.audio()
    assert spandsp_detect(heard) == ""
    assert multimon_detect(heard) == ""
    assert leaked_ms(heard) == 0.0


def _voice_packets(peer: RtpPeer) -> int:
    """Packets of the agent's voice the customer's phone received."""
    return sum(1 for _, p in peer.received.packets if p.payload_type == 0
               and np.any(np.frombuffer(p.payload, np.uint8) != 0xFF))


def _packets(ms: int) -> int:
    return ms // 20 * 9 // 10  # 20 ms packets, 10 % allowance for a loaded machine


# --- 1. early media ----------------------------------------------------------------------


async def test_a_card_keyed_during_early_media_is_masked_and_the_call_goes_on_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    async with _flow(media_ports, tmp_path) as flow:
        agent = flow.agents[0]
        # The contact centre answers 183 with SDP, then 200 once the first card was keyed.
        await flow.sipp("callee", "callee_early.xml", rtp_port=agent.port,
                        duration_ms=CARD_MS + 3000)
        await flow.sipp("caller", "caller.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=CARD_MS + 3000)
        await flow.until(lambda: flow.count("call answered") == 1)  # the 183
        await flow.talk(CARDS[0])
        assert flow.count("call answered") == 1  # all of it before the 200
        early = len(agent.received.packets)
        assert early >= _packets(CARD_MS)  # early media did flow to the agent ...
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)  # ... and back
        await flow.until(lambda: flow.count("call answered") == 2)  # the 200
        await flow.talk(CARDS[1])
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(agent, min_packets=_packets(2 * CARD_MS))
        assert len(agent.received.packets) - early >= _packets(CARD_MS)  # after the 200 too
        flow.assert_captured(*CARDS)
        await flow.nothing_left()


# --- 2. forking --------------------------------------------------------------------------


async def test_a_forked_call_goes_to_the_branch_that_answers_and_the_other_is_released(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """Kamailio rings two contact-centre targets (CONTACT_CENTRE_FORK): the loser answers
    183 with SDP and plays early media, the winner rings (180) and answers; Kamailio cancels
    the loser. The winner's phone gets the call (masked), the loser's nothing more."""
    async with _flow(media_ports, tmp_path, agents=2, fork=True) as flow:
        winner, loser = flow.agents
        await flow.sipp("loser", "callee_cancelled.xml", rtp_port=loser.port, centre=1)
        await flow.sipp("winner", "callee.xml", rtp_port=winner.port, centre=0,
                        duration_ms=CARD_MS + 2000)
        await flow.sipp("caller", "caller.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=CARD_MS + 3000)
        await flow.until(lambda: flow.count("call answered") == 1)  # the loser's 183
        await flow.talk(CARDS[0], agent=1)  # early media with the loser
        assert len(loser.received.packets) >= _packets(CARD_MS)
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)
        await flow.until(lambda: flow.count("call answered") == 2)  # the winner's 200
        await flow.until(lambda: flow.procs["loser"].returncode is not None)  # CANCELled
        heard_early = len(loser.received.packets)
        [call_id] = flow.node.registry.calls
        query = await flow.node.registry.handle({"command": "query", "call-id": call_id})
        winner_tag = f"{flow.procs['winner'].pid}SIPpTag011"
        caller_tag = f"{flow.procs['caller'].pid}SIPpTag001"
        assert set(query["tags"]) == {caller_tag, winner_tag}  # the loser's tag is gone ...
        assert query["tags"][caller_tag]["in dialogue with"] == winner_tag
        assert (await flow.node.engine.totals()).streams == 2  # ... and held no stream
        await flow.talk(CARDS[1], agent=0)
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(winner, min_packets=_packets(CARD_MS))
        assert len(loser.received.packets) == heard_early  # nothing after the 200
        _assert_agent_heard_audio_but_no_digit(loser, min_packets=_packets(CARD_MS))
        flow.assert_captured(*CARDS)
        await flow.nothing_left()



async def test_a_late_183_from_a_cancelled_fork_does_not_take_the_call_away(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The race of parallel forking: one branch answers, Kamailio CANCELs the other, whose
    183 with SDP crosses the CANCEL. That 183 arrives after the 200 and must not move the
    media (ToneGuard would follow the branch that answered last)."""
    async with _flow(media_ports, tmp_path, agents=2, fork=True) as flow:
        winner, loser = flow.agents
        # (Kamailio sends the CANCEL again when the 183 comes: that one is ignored.)
        await flow.sipp("loser", "callee_late_183.xml", rtp_port=loser.port, centre=1,
                        extra=("-default_behaviors", "all,-abortunexp"))
        await flow.sipp("winner", "callee.xml", rtp_port=winner.port, centre=0,
                        duration_ms=300)
        await flow.sipp("caller", "caller.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=CARD_MS + 2000)
        await flow.until(lambda: flow.procs["loser"].returncode is not None)  # its 183 sent
        assert len(flow.node.registry.calls) == 1
        winner_tag = f"{flow.procs['winner'].pid}SIPpTag011"
        await flow.talk(CARDS[0], agent=0)
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(winner, min_packets=_packets(CARD_MS))
        assert loser.received.packets == []
        answered = [e.get("to_tag") for e in flow.logs if e.get("event") == "call answered"]
        assert "SIP/2.0 183" in (tmp_path / "loser.messages").read_text()  # it was sent
        assert set(answered) == {winner_tag}  # Kamailio did not pass the late 183 on
        await flow.nothing_left()


async def test_two_forks_answer_200_and_the_caller_keeps_the_last_one_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """Both forks answer 200: the second target's 200 crosses the CANCEL Kamailio sent it once
    the first had answered (RFC 3261 §13.2.2.4). The caller ACKs both, keeps the last (the one
    ToneGuard follows) and BYEs the first: that BYE's delete names the dropped branch, so the
    kept dialog's media goes on — masked, both ways — until its own BYE ends the call."""
    async with _flow(media_ports, tmp_path, agents=2, fork=True) as flow:
        dropped, kept = flow.agents
        await flow.sipp("dropped", "callee.xml", rtp_port=dropped.port, centre=0,
                        duration_ms=300)
        await flow.sipp("kept", "callee_200_after_cancel.xml", rtp_port=kept.port, centre=1)
        await flow.sipp("caller", "caller_two_answers.xml", rtp_port=flow.customer.port,
                        caller=True, duration_ms=CARD_MS + 3000)
        await flow.until(lambda: flow.count("call answered") == 2)  # both 200s
        # The dropped dialog's BYE reached ToneGuard as a delete naming that branch.
        await flow.until(lambda: flow.count("forked branch deleted: the call's media stays") == 1)
        [call_id] = flow.node.registry.calls
        query = await flow.node.registry.handle({"command": "query", "call-id": call_id})
        kept_tag = f"{flow.procs['kept'].pid}SIPpTag011"
        caller_tag = f"{flow.procs['caller'].pid}SIPpTag001"
        assert set(query["tags"]) == {caller_tag, kept_tag}
        assert (await flow.node.engine.totals()).streams == 2
        heard_before = len(dropped.received.packets)
        await flow.talk(CARDS[0], agent=1)
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)  # the kept agent is heard
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(kept, min_packets=_packets(CARD_MS))
        assert len(dropped.received.packets) == heard_before  # nothing to the dropped fork
        flow.assert_captured(CARDS[0])
        await flow.nothing_left()  # the kept dialog's BYE ended the call


# --- 3. CANCEL, rejects, glare -----------------------------------------------------------


async def _early_media_flows(flow: Flow) -> None:
    """Until the 183 was answered through ToneGuard, then a second of early media each way:
    the call holds streams that must be released."""
    await flow.until(lambda: flow.count("call answered") == 1)
    assert (await flow.node.engine.totals()).streams == 2
    assert len((await flow.node.registry.handle({"command": "list"}))["calls"]) == 1
    agent = flow.agents[0]
    await asyncio.gather(flow.customer.play(tones.sine(700, 1000, -15), flow.toward("customer")),
                         agent.play(tones.sine(AGENT_VOICE_HZ, 1000, -15), flow.toward("agent")))
    await agent.wait_for(_packets(1000))
    await flow.until(lambda: _voice_packets(flow.customer) >= _packets(1000), timeout=5)


async def test_a_call_cancelled_before_answer_leaves_nothing_behind(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee_cancelled.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_cancel.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=3000)
        await _early_media_flows(flow)
        await flow.finished()  # CANCEL → 200, 487 → ACK on both sides
        await flow.nothing_left()
        assert flow.node.registry.counters.deleted >= 1  # deleted over ng, not by idling


@pytest.mark.parametrize("reject", ["486 Busy Here", "503 Service Unavailable"])
async def test_a_rejected_call_leaves_nothing_behind(
        media_ports: tuple[int, int], tmp_path: Path, reject: str) -> None:
    async with _flow(media_ports, tmp_path) as flow:
        scenario = tmp_path / "callee_reject.xml"
        scenario.write_text((SIPP_DIR / "callee_reject.xml").read_text().replace(
            "SIP/2.0 486 Busy Here", f"SIP/2.0 {reject}"))
        await flow.sipp("callee", scenario, rtp_port=flow.agents[0].port, duration_ms=3000)
        await flow.sipp("caller", "caller_rejected.xml", rtp_port=flow.customer.port,
                        caller=True)
        await _early_media_flows(flow)
        await flow.finished()
        await flow.nothing_left()
        assert flow.node.registry.counters.deleted >= 1


async def test_a_re_invite_refused_491_for_glare_then_retried_keeps_the_call_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """A re-offer that never gets an answer (491 Request Pending: both sides re-INVITEd at
    once) leaves the call as it was: the retried re-INVITE is answered on the same ports, the
    card keyed after it is masked, and the BYE leaves nothing behind."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee_glare.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_glare.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=1000)
        await flow.until(lambda: flow.count("call re-offered") == 2  # refused, retried ...
                         and flow.count("call answered") == 2)  # ... and answered
        await flow.talk(CARDS[0])
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(flow.agents[0], min_packets=_packets(CARD_MS))
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)
        flow.assert_captured(CARDS[0])
        ports = flow.received_sdp("caller", r"m=audio (\d+)")
        assert len(ports) == 2 and len(set(ports)) == 1, ports  # the same port throughout
        await flow.nothing_left()


# --- 4. UPDATE and re-INVITE with SDES ---------------------------------------------------


async def test_an_update_moving_the_customer_keeps_ports_and_masking_and_audio_both_ways(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The customer's UPDATE (with SDP) moves its media to another port mid-call: ToneGuard
    keeps its ports, re-latches onto the new address, and the card keyed there is masked."""
    moved = await RtpPeer(CARRIER_IP).start()
    try:
        async with _flow(media_ports, tmp_path) as flow:
            await flow.sipp("callee", "callee_update.xml", rtp_port=flow.agents[0].port)
            await flow.sipp("caller", "caller_update.xml", rtp_port=flow.customer.port,
                            caller=True, duration_ms=CARD_MS + 2000, rtp_port2=moved.port)
            await flow.until(lambda: flow.count("call answered") == 1)
            await flow.talk(CARDS[0])
            before = len(flow.agents[0].received.packets)
            await flow.until(lambda: flow.count("call re-offered") == 1
                             and flow.count("call answered") == 2)  # UPDATE and its 200
            await flow.talk(CARDS[1], customer=moved)
            await flow.finished()
            agent = flow.agents[0]
            _assert_agent_heard_audio_but_no_digit(agent, min_packets=_packets(2 * CARD_MS))
            assert len(agent.received.packets) - before >= _packets(CARD_MS)  # after too
            assert _voice_packets(flow.customer) >= _packets(CARD_MS)  # before the UPDATE
            assert _voice_packets(moved) >= _packets(CARD_MS)  # and at the new address
            flow.assert_captured(*CARDS)
            ports = flow.received_sdp("caller", r"m=audio (\d+)")
            assert len(ports) == 2 and len(set(ports)) == 1, ports  # INVITE's and UPDATE's 200
            await flow.nothing_left()
    finally:
        moved.close()


async def test_a_re_invite_with_sdes_keeps_keys_ports_and_masking(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The customer's leg is SDES-SRTP; it re-INVITEs with the same key mid-call: ToneGuard
    answers with the same port and the same key (suite, tag), its SRTP context carries on (the
    customer's phone keeps decrypting with the key of the first answer), and the card keyed
    after the re-INVITE is masked."""
    key = sdes.generate("AES_CM_128_HMAC_SHA1_80")
    async with _flow(media_ports, tmp_path, customer_key=key.params) as flow:
        await flow.sipp("callee", "callee_reinvite.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_sdes.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=CARD_MS + 2000, crypto=key.format().split("inline:")[1])
        await flow.until(lambda: flow.count("call answered") == 1)
        [call] = flow.node.registry.calls.values()
        [customer] = [p for p in call.parties.values() if p.label == "customer"]
        first_key = customer.medias[0].keys.send
        flow.customer.set_srtp_recv(first_key)  # as a phone does: the first answer's key
        await flow.talk(CARDS[0])
        heard = _voice_packets(flow.customer)
        await flow.until(lambda: flow.count("call re-offered") == 1
                         and flow.count("call answered") == 2)
        await flow.talk(CARDS[1])
        await flow.finished()
        assert customer.medias[0].keys.send == first_key
        assert heard >= _packets(CARD_MS)
        assert _voice_packets(flow.customer) - heard >= _packets(CARD_MS)  # after it too
        assert flow.customer.received.errors == 0  # every packet decrypted with that key
        _assert_agent_heard_audio_but_no_digit(flow.agents[0],
                                               min_packets=_packets(2 * CARD_MS))
        flow.assert_captured(*CARDS)
        cryptos = flow.received_sdp("caller", r"a=crypto:([^\r\n]+)")
        assert len(cryptos) == 2 and cryptos[0] == cryptos[1], cryptos  # the same key line
        assert cryptos[0].split()[1] == "AES_CM_128_HMAC_SHA1_80"
        ports = flow.received_sdp("caller", r"m=audio (\d+)")
        assert len(ports) == 2 and len(set(ports)) == 1, ports
        await flow.nothing_left()



async def test_a_re_invite_without_sdp_gets_its_offer_and_answer_through_toneguard(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """A late-offer re-INVITE (no SDP): the contact centre's 200 carries the offer, the
    customer's ACK the answer. The customer must be offered ToneGuard's port, not the
    agent's phone, and the card keyed afterwards is masked."""
    async with _flow(media_ports, tmp_path) as flow:
        agent = flow.agents[0]
        await flow.sipp("callee", "callee_reinvite.xml", rtp_port=agent.port)
        await flow.sipp("caller", "caller_reinvite_no_sdp.xml", rtp_port=flow.customer.port,
                        caller=True, duration_ms=1000)
        await flow.until(lambda: flow.count("call answered") == 2)  # the ACK's answer
        await flow.talk(CARDS[0])
        await flow.finished()
        ports = flow.received_sdp("caller", r"m=audio (\d+)")
        assert len(ports) == 2 and len(set(ports)) == 1, ports  # ToneGuard's, both times
        assert str(agent.port) not in ports
        _assert_agent_heard_audio_but_no_digit(agent, min_packets=_packets(CARD_MS))
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)
        flow.assert_captured(CARDS[0])
        await flow.nothing_left()

# --- 5. SIP INFO DTMF --------------------------------------------------------------------


async def test_sip_info_dtmf_is_answered_and_dropped_by_kamailio_never_relayed(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """application/dtmf-relay and Application/DTMF INFO from the customer: Kamailio answers
    200 and counts them; the contact centre's UA never receives an INFO (its scenario has
    no place for one: sipp would abort the call)."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_info.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=500)
        await flow.finished()
        assert "INFO sip:" in (tmp_path / "caller.messages").read_text()  # it was sent ...
        assert "INFO sip:" not in (tmp_path / "callee.messages").read_text()  # ... not relayed
        log = flow.kamailio.log.read_text()
        dropped = re.findall(r"SIP INFO DTMF dropped \(call .* (\d+) so far\)", log)
        assert dropped == ["1", "2"], log[-2000:]
        await flow.nothing_left()



async def test_a_late_offer_sdp_in_the_200_and_the_ack_is_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The customer's INVITE has no SDP: the contact centre's 200 carries the offer and the
    customer's ACK the answer, both through ToneGuard. Nobody is labelled on this path, so
    every party is masked (fail closed) and the card is masked."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_late_offer.xml", rtp_port=flow.customer.port,
                        caller=True, duration_ms=CARD_MS + 2000)
        await flow.until(lambda: flow.count("call answered") == 1)  # the ACK's answer
        await flow.talk(CARDS[0])
        await flow.finished()
        _assert_agent_heard_audio_but_no_digit(flow.agents[0], min_packets=_packets(CARD_MS))
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)
        flow.assert_captured(CARDS[0])
        await flow.nothing_left()


async def test_a_late_offer_in_a_reliable_183_answered_in_the_prack_is_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """RFC 3262: the customer's INVITE has no SDP, the contact centre's reliable 183 brings
    the offer and the customer's PRACK the answer, both through ToneGuard (the customer is
    offered ToneGuard's port, never the agent's); the card keyed during that early media and
    after the 200 is masked."""
    async with _flow(media_ports, tmp_path) as flow:
        agent = flow.agents[0]
        await flow.sipp("callee", "callee_prack.xml", rtp_port=agent.port,
                        duration_ms=CARD_MS + 2000)
        await flow.sipp("caller", "caller_prack.xml", rtp_port=flow.customer.port,
                        caller=True, duration_ms=CARD_MS + 2000)
        await flow.until(lambda: flow.count("call answered") == 1)  # the PRACK's answer
        await flow.talk(CARDS[0])
        await flow.finished()
        offered = flow.received_sdp("caller", r"m=audio (\d+)", "183")
        assert len(offered) == 1 and str(agent.port) not in offered, offered
        _assert_agent_heard_audio_but_no_digit(agent, min_packets=_packets(CARD_MS))
        assert _voice_packets(flow.customer) >= _packets(CARD_MS)
        flow.assert_captured(CARDS[0])
        await flow.nothing_left()

# --- 6. what ToneGuard refuses never goes on --------------------------------------------


async def test_a_re_invite_toneguard_refuses_is_rejected_488_and_the_call_stays_masked(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The customer re-INVITEs offering only G.729 at its own address. ToneGuard refuses it
    (nothing it can inspect for DTMF); Kamailio must then answer 488 itself: relayed as it
    was, the re-INVITE would send the customer's audio around ToneGuard. The contact centre
    never sees it (its scenario has no place for a second INVITE), the call stays as it was
    and the card keyed afterwards is masked."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_refused_reinvite.xml", rtp_port=flow.customer.port,
                        caller=True, duration_ms=CARD_MS + 2000)
        await flow.until(lambda: flow.count("call answered") == 1)
        await flow.talk(CARDS[0])
        await flow.until(lambda: "SDP refused" in flow.kamailio.log.read_text())
        await flow.talk(CARDS[1])
        await flow.finished()
        assert (tmp_path / "callee.messages").read_text().count("INVITE sip:") == 1
        _assert_agent_heard_audio_but_no_digit(flow.agents[0],
                                               min_packets=_packets(2 * CARD_MS))
        assert _voice_packets(flow.customer) >= _packets(2 * CARD_MS)
        flow.assert_captured(*CARDS)
        await flow.nothing_left()


async def test_an_answer_toneguard_refuses_is_not_relayed(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The contact centre's 183 says RTP/SAVP without a key: ToneGuard refuses the answer and
    Kamailio drops that 183 (relayed, it would point the customer at the agent's own
    address). The 200 that follows is fine: the call goes on masked."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee_refused_early.xml", rtp_port=flow.agents[0].port,
                        duration_ms=1000)
        await flow.sipp("caller", "caller.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=CARD_MS + 2000)
        await flow.until(lambda: flow.count("call answered") == 1)  # the 200
        await flow.talk(CARDS[0])
        await flow.finished()
        assert "SIP/2.0 183" in (tmp_path / "callee.messages").read_text()  # sent ...
        assert "SIP/2.0 183" not in (tmp_path / "caller.messages").read_text()  # ... dropped
        assert "ToneGuard SDP refused: 183 reply" in flow.kamailio.log.read_text()
        _assert_agent_heard_audio_but_no_digit(flow.agents[0], min_packets=_packets(CARD_MS))
        flow.assert_captured(CARDS[0])
        await flow.nothing_left()


async def test_kpml_subscriptions_and_reports_are_dropped_by_kamailio_never_relayed(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """KPML (RFC 4730) is the other way SIP reports keys: a SUBSCRIBE for Event: KPML is
    answered 489 and a NOTIFY carrying application/kpml-response+xml 200, both counted, and
    neither reaches the contact centre."""
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", "caller_kpml.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=500)
        await flow.finished()
        sent = (tmp_path / "caller.messages").read_text()
        assert "SUBSCRIBE sip:" in sent and "NOTIFY sip:" in sent
        relayed = (tmp_path / "callee.messages").read_text()
        assert "SUBSCRIBE sip:" not in relayed and "NOTIFY sip:" not in relayed
        log = flow.kamailio.log.read_text()
        dropped = re.findall(r"KPML (\w+) dropped \(call .* (\d+) so far\)", log)
        assert dropped == [("SUBSCRIBE", "1"), ("NOTIFY", "2")], log[-2000:]
        await flow.nothing_left()


async def test_a_200_toneguard_refuses_reaches_the_customer_without_media(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The contact centre's 200 says RTP/SAVP without a key: ToneGuard refuses the answer.
    Kamailio cannot hold a 2xx back, so it relays it with an SDP that refuses the audio
    (port 0, no address): the call connects silent instead of the customer being pointed at
    the agent's own phone."""
    async with _flow(media_ports, tmp_path) as flow:
        agent = flow.agents[0]
        await flow.sipp("callee", "callee_refused_200.xml", rtp_port=agent.port)
        await flow.sipp("caller", "caller.xml", rtp_port=flow.customer.port, caller=True,
                        duration_ms=500)
        await flow.finished()
        assert f"m=audio {agent.port} RTP/SAVP" in (tmp_path / "callee.messages").read_text()
        assert flow.received_sdp("caller", r"m=audio (\d+)") == ["0"]
        assert flow.received_sdp("caller", r"c=IN IP4 (\S+)") == ["0.0.0.0"]
        assert "relayed without media" in flow.kamailio.log.read_text()
        await flow.nothing_left()


async def test_a_first_invite_toneguard_refuses_is_rejected_488_and_leaves_nothing(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """The customer offers only G.729: ToneGuard refuses, Kamailio answers 488 and the
    contact centre never sees the INVITE (its scenario would take the call)."""
    scenario = tmp_path / "caller_g729.xml"
    scenario.write_text((SIPP_DIR / "caller_rejected.xml").read_text().replace(
        "m=audio [rtp_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
        "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\n",
        "m=audio [rtp_port] RTP/AVP 18\na=rtpmap:18 G729/8000\n"))
    assert "G729" in scenario.read_text()
    async with _flow(media_ports, tmp_path) as flow:
        await flow.sipp("callee", "callee.xml", rtp_port=flow.agents[0].port)
        await flow.sipp("caller", scenario, rtp_port=flow.customer.port, caller=True)
        await flow.until(lambda: flow.procs["caller"].returncode is not None)
        assert flow.procs["caller"].returncode == 0
        assert "SIP/2.0 488" in (tmp_path / "caller.messages").read_text()
        assert not (tmp_path / "callee.messages").exists() or (
            "INVITE sip:" not in (tmp_path / "callee.messages").read_text())
        await flow.nothing_left()
        assert flow.node.registry.counters.created == 1  # it was asked, and refused
