"""Kamailio 5.6 (stock rtpengine module) drives ToneGuard; sipp places a call whose RTP flows
both ways through ToneGuard: sipp UAC plays Debian's g711a.pcap and an RFC 2833 key, sipp UAS
echoes the audio back. A recording tap (an RtpPeer) gets a copy of everything ToneGuard sends
either party: the audio must be there, the caller's RFC 2833 key must not (had it reached the
far end, the echo would have brought it back through ToneGuard too). Everything on loopback,
started and stopped by the test."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.demo.phone import RtpPeer
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.conftest import pick_udp_port, udp_port_bound
from tests.proxy.control.sip_peers import start_node, stop

KAMAILIO_CFG = Path(__file__).parents[3] / "config" / "kamailio" / "kamailio.cfg"
PCAP_DIR = Path("/usr/share/sip-tester")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]


@pytest.fixture
async def recorder() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer().start()
    yield peer
    peer.close()


@pytest.fixture
async def node(media_ports: tuple[int, int], recorder: RtpPeer
               ) -> AsyncIterator[tuple[Node, list[DigitEvent]]]:
    digits: list[DigitEvent] = []
    node = await start_node(media_ports, digits,
                            masking={"recording_tap": f"127.0.0.1:{recorder.port}"})
    yield node, digits
    await node.stop()


async def _kamailio_ready(kamailio: asyncio.subprocess.Process, sip_port: int,
                          toneguard: Node, log: Path) -> None:
    """Until kamailio has bound its SIP port and its rtpengine module has pinged ToneGuard."""
    async with asyncio.timeout(20):
        while not (udp_port_bound("127.0.0.1", sip_port) and toneguard.ng.counters["received"] > 0):
            assert kamailio.returncode is None, log.read_text()[-2000:]
            await asyncio.sleep(0.05)


async def test_call_through_kamailio_has_media_both_ways_through_toneguard(
        node: tuple[Node, list[DigitEvent]], recorder: RtpPeer, tmp_path: Path) -> None:
    toneguard, digits = node
    sip_port, uas_port, uas_media = (pick_udp_port() for _ in range(3))
    uac_port, uac_media = pick_udp_port("127.0.0.2"), pick_udp_port("127.0.0.2")
    cfg = KAMAILIO_CFG.read_text().replace(
        'SIP_LISTEN udp:127.0.0.1:5060', f'SIP_LISTEN udp:127.0.0.1:{sip_port}').replace(
        '"udp:127.0.0.1:2223"', f'"udp:127.0.0.1:{toneguard.ng_address[1]}"').replace(
        '"sip:127.0.0.1:5080"', f'"sip:127.0.0.1:{uas_port}"')  # the caller: 127.0.0.2
    (tmp_path / "kamailio.cfg").write_text(cfg)
    (tmp_path / "pcap").mkdir()
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        os.symlink(PCAP_DIR / name, tmp_path / "pcap" / name)
    log = (tmp_path / "kamailio.log").open("wb")
    kamailio = await asyncio.create_subprocess_exec(
        "kamailio", "-f", str(tmp_path / "kamailio.cfg"), "-DD", "-E", "-w", str(tmp_path),
        "-P", str(tmp_path / "kamailio.pid"), stdout=log, stderr=log)
    uas = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-mi", "127.0.0.1",
        "-mp", str(uas_media), "-rtp_echo", "-m", "1", "-nostdin",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    uac = None
    try:
        await _kamailio_ready(kamailio, sip_port, toneguard, tmp_path / "kamailio.log")
        uac = await asyncio.create_subprocess_exec(
            "sipp", "-sn", "uac_pcap", f"127.0.0.1:{sip_port}", "-i", "127.0.0.2",
            "-p", str(uac_port), "-mi", "127.0.0.2", "-mp", str(uac_media), "-m", "1",
            "-timeout", "40", "-timeout_error", "-nostdin", "-trace_err",
            cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        observed: dict[str, int] = {}
        async with asyncio.timeout(45):
            # While the call is up, sample ToneGuard's own counters for both legs.
            while uac.returncode is None:
                for call in toneguard.registry.calls.values():
                    for party in call.parties.values():
                        for media in party.medias:
                            stats = await toneguard.engine.stats(media.stream_id)
                            observed[party.tag] = max(observed.get(party.tag, 0),
                                                      stats.packets_in)
                try:
                    async with asyncio.timeout(0.5):
                        await uac.wait()
                except TimeoutError:
                    pass
        errors = (await uac.stderr.read()).decode() if uac.stderr else ""
        assert uac.returncode == 0, errors or (tmp_path / "kamailio.log").read_text()[-3000:]
        assert len(observed) == 2, observed  # the caller's leg and the contact centre's leg
        assert min(observed.values()) > 100, observed  # ~8 s of 20 ms packets each way
        assert toneguard.registry.calls == {}  # BYE → rtpengine_manage → delete
        assert [d.digit for d in digits] == ["1"] and digits[0].source == "rfc4733"
        # The key arrived (above) but went no further: not one telephone-event packet was
        # sent to either party, while the audio was (PCMA, both ways).
        assert len(recorder.received.events(8)) > 200, len(recorder.received.packets)
        assert recorder.received.events(101) == []
        assert {p.payload_type for _, p in recorder.received.packets} == {8}
    finally:
        for proc in (uac, uas, kamailio):
            if proc is not None:
                await stop(proc)
        log.close()
