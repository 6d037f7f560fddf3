"""SIP-level load: the loadtest/sipp scenarios through Kamailio (the shipped kamailio.cfg) and
ToneGuard, the UAS's media recorded by ``loadtest.sip record`` and decoded for leaks. Customers
key the test card in-band and as RFC 2833 events; every agent leg must arrive and hold no digit
and no event."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from loadtest.sip import card_packets
from proxy.media.types import DigitEvent
from tests.conftest import pick_udp_port
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP, kamailio, start_node, stop

ROOT = Path(__file__).parents[2]
SIPP = ROOT / "loadtest" / "sipp"
pytestmark = [pytest.mark.peer, pytest.mark.skipif(
    not (shutil.which("kamailio") and shutil.which("sipp")), reason="needs kamailio and sipp")]


def test_the_shipped_pcaps_are_what_the_generator_writes() -> None:
    """loadtest/sipp/*.pcap are build products: `python -m loadtest.sip pcaps` rewrites them."""
    from loadtest.sip import write_pcap

    for profile in ("inband", "rfc2833"):
        fresh = SIPP / f"fresh-{profile}.pcap"
        try:
            write_pcap(fresh, card_packets(profile))
            assert fresh.read_bytes() == (SIPP / f"card-{profile}.pcap").read_bytes()
        finally:
            fresh.unlink(missing_ok=True)


def test_rfc2833_pcap_carries_events_in_place_of_audio() -> None:
    inband, events = card_packets("inband"), card_packets("rfc2833")
    assert all(p[1] & 0x7F == 0 for _, p in inband)
    # 26 keys (23 digits, three #), each 4 updates and 3 end packets.
    assert sum(p[1] & 0x7F == 101 for _, p in events) == 26 * 7
    assert len({t for t, _ in events}) == len(inband)  # same ticks, same length


async def _run(workdir: Path, *args: str) -> asyncio.subprocess.Process:
    log = (workdir / f"{args[0].rsplit('/', 1)[-1]}-{len(os.listdir(workdir))}.log").open("wb")
    return await asyncio.create_subprocess_exec(*args, cwd=workdir, stdout=log, stderr=log)


@pytest.mark.timeout(180)
async def test_sipp_calls_through_kamailio_leak_nothing_to_the_uas(
        tmp_path: Path, media_ports: tuple[int, int]) -> None:
    for name in ("uac-inband.xml", "uac-rfc2833.xml", "uas.xml", "card-inband.pcap",
                 "card-rfc2833.pcap"):
        shutil.copy(SIPP / name, tmp_path / name)
    digits: list[DigitEvent] = []
    node = await start_node(media_ports, digits)
    sip, centre, carrier = pick_udp_port(), pick_udp_port(), pick_udp_port(CARRIER_IP)
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with kamailio(tmp_path, sip_port=sip, ng_port=node.ng_address[1],
                            centre_port=centre, carrier_port=carrier):
            ready = tmp_path / "recorder.port"
            recorder = await _run(tmp_path, sys.executable, "-m", "loadtest.sip", "record",
                                  "--listen", f"{CENTRE_IP}:0", "--idle", "3", "--seconds",
                                  "120", "--report", str(tmp_path / "sip.json"),
                                  "--ready-file", str(ready))
            procs.append(recorder)
            async with asyncio.timeout(30):
                while not ready.exists() or not ready.read_text():
                    await asyncio.sleep(0.05)
            uas = await _run(tmp_path, "sipp", "-sf", "uas.xml", "-i", CENTRE_IP, "-p",
                             str(centre), "-mi", CENTRE_IP, "-mp", str(pick_udp_port()),
                             "-key", "recorder_port", ready.read_text(), "-m", "4",
                             "-nostdin", "-timeout", "90", "-timeout_error")
            procs.append(uas)
            for profile in ("inband", "rfc2833"):  # two calls each, at once
                uac = await _run(tmp_path, "sipp", f"127.0.0.1:{sip}", "-sf",
                                 f"uac-{profile}.xml", "-i", CARRIER_IP, "-p",
                                 str(pick_udp_port(CARRIER_IP)), "-mi", CARRIER_IP, "-mp",
                                 str(pick_udp_port(CARRIER_IP)), "-r", "10", "-l", "2", "-m",
                                 "2", "-d", "500", "-nostdin", "-timeout", "60",
                                 "-timeout_error")
                procs.append(uac)
                async with asyncio.timeout(60):
                    assert await uac.wait() == 0, profile
            async with asyncio.timeout(60):
                assert await uas.wait() == 0
                await recorder.wait()
    finally:
        for proc in procs:
            await stop(proc)
        await node.stop()
    result = json.loads((tmp_path / "sip.json").read_text())
    assert result["calls"] == 4, result
    for leg in result["legs"]:
        # The agent heard each call: about 7 s of audio (the RFC 2833 calls' keys are events,
        # so their legs carry fewer audio packets).
        assert leg["audio_packets"] > 150, leg
        assert leg["spandsp_digits"] == leg["multimon_digits"] == leg["events_passed"] == 0
    assert result["ok"] is True and result["calls_with_leak"] == 0
    assert len(digits) >= 4 * 23  # ToneGuard did see every key it masked
