"""Drain through the real client: Kamailio 5.6's stock rtpengine module with a set of two
ToneGuard nodes, A weighted so that every call goes to it. A call goes to A (the control);
then A drains, and the next call goes to B: A answered its offer "load limit", the module moved
on to B without failing the call, and the call's media flowed through B. sipp on both ends,
everything on loopback, started and stopped by the test."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.media.types import DigitEvent
from proxy.service.config import load_config
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.proxy.control.sip_peers import KAMAILIO_CFG, stop, wait_udp_bound

PCAP_DIR = Path("/usr/share/sip-tester")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]


async def _node(ports: tuple[int, int], digits: list[DigitEvent]) -> Node:
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": ports[0], "port_max": ports[1]},
        "api": {"listen": "127.0.0.1:0"},
    })
    return await Node.start(config, on_digit=lambda call, tag, event: digits.append(event))


@pytest.fixture
async def nodes(media_ports: tuple[int, int]) -> AsyncIterator[tuple[Node, Node]]:
    base = media_ports[0]  # one 200-port window, split between the two nodes
    a = await _node((base, base + 98), [])
    b = await _node((base + 100, base + 198), [])
    yield a, b
    await a.stop()
    await b.stop()


async def _place_call(workdir: Path, sip_port: int, name: str, node: Node) -> tuple[int, str]:
    """One sipp call from the carrier's address, playing G.711 audio; its exit code and
    errors. While it is up, ``node`` must show it with the caller Kamailio named in the
    offer's metadata (``caller=$fU``: sipp's From user is "sipp")."""
    uac = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uac_pcap", f"127.0.0.1:{sip_port}", "-i", "127.0.0.2",
        "-p", str(pick_udp_port("127.0.0.2")), "-mi", "127.0.0.2",
        "-mp", str(pick_udp_port("127.0.0.2")), "-m", "1", "-timeout", "40", "-timeout_error",
        "-nostdin", "-trace_err", "-error_file", str(workdir / f"{name}.errors"),
        cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(45):
            while not node.payments.calls and uac.returncode is None:
                await asyncio.sleep(0.05)
            callers = [info.caller for info in node.payments.calls.values()]
            await uac.wait()
        assert callers == ["sipp"], callers
        errors = (await uac.stderr.read()).decode() if uac.stderr else ""
        return uac.returncode or 0, errors
    finally:
        await stop(uac)


async def test_a_draining_node_sends_kamailio_on_to_the_next_node_of_its_set(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    sip_port, uas_port, uas_media = (pick_udp_port() for _ in range(3))
    # Kamailio 5.6 hashes the Call-ID to 0..255 and picks by weight: with A at 256 and B at 1,
    # A gets every call while it takes them.
    cfg = KAMAILIO_CFG.read_text().replace(
        "SIP_LISTEN udp:127.0.0.1:5060", f"SIP_LISTEN udp:127.0.0.1:{sip_port}").replace(
        '"udp:127.0.0.1:2223"',
        f'"udp:127.0.0.1:{a.ng_address[1]}=256 udp:127.0.0.1:{b.ng_address[1]}=1"').replace(
        '"sip:127.0.0.1:5080"', f'"sip:127.0.0.1:{uas_port}"')
    (tmp_path / "kamailio.cfg").write_text(cfg)
    (tmp_path / "pcap").mkdir()
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):  # what sipp's uac_pcap plays
        os.symlink(PCAP_DIR / name, tmp_path / "pcap" / name)
    log_path = tmp_path / "kamailio.log"
    log = log_path.open("wb")
    kamailio = await asyncio.create_subprocess_exec(
        "kamailio", "-f", str(tmp_path / "kamailio.cfg"), "-DD", "-E", "-w", str(tmp_path),
        "-P", str(tmp_path / "kamailio.pid"), stdout=log, stderr=log)
    uas = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-mi", "127.0.0.1",
        "-mp", str(uas_media), "-rtp_echo", "-m", "2", "-nostdin",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_udp_bound("127.0.0.1", sip_port, timeout=20)
        await wait_udp_bound("127.0.0.1", uas_port, timeout=20)

        # The control: with both nodes taking calls, the call goes to A.
        code, errors = await _place_call(tmp_path, sip_port, "first", a)
        assert code == 0, errors or log_path.read_text()[-3000:]
        assert (a.registry.counters.created, b.registry.counters.created) == (1, 0)
        assert a.registry.calls == {}  # BYE deleted it

        assert await a.drain(limit=60)  # no live calls: done at once, and A stays draining
        assert a.draining

        code, errors = await _place_call(tmp_path, sip_port, "second", b)
        assert code == 0, errors or log_path.read_text()[-3000:]
        assert a.readings().offers_refused == 1  # A was asked first and said "load limit" ...
        assert (a.registry.counters.created, b.registry.counters.created) == (1, 1)  # ... so B
        totals = await b.engine.totals()
        assert totals.packets_in > 200, totals  # the call's audio both ways went through B
        assert b.registry.calls == {}  # and Kamailio sent B the call's delete too
        kamailio_log = log_path.read_text()
        assert "has reached its load limit (draining: this node takes no new calls)" in (
            kamailio_log), kamailio_log[-3000:]
    finally:
        for proc in (uas, kamailio):
            await stop(proc)
        log.close()


async def test_a_call_no_node_takes_is_refused_not_relayed_around_the_media_relay(
        media_ports: tuple[int, int], tmp_path: Path) -> None:
    """Fail closed in the shipped kamailio.cfg: with its only node draining, Kamailio's offer
    fails — and the INVITE must then be refused (488), not relayed with the phones' own
    addresses (the media, the customer's keys included, would bypass masking)."""
    node = await _node(media_ports, [])
    sip_port, uas_port = pick_udp_port(), pick_udp_port()
    cfg = KAMAILIO_CFG.read_text().replace(
        "SIP_LISTEN udp:127.0.0.1:5060", f"SIP_LISTEN udp:127.0.0.1:{sip_port}").replace(
        '"udp:127.0.0.1:2223"', f'"udp:127.0.0.1:{node.ng_address[1]}"').replace(
        '"sip:127.0.0.1:5080"', f'"sip:127.0.0.1:{uas_port}"')
    (tmp_path / "kamailio.cfg").write_text(cfg)
    log_path = tmp_path / "kamailio.log"
    log = log_path.open("wb")
    kamailio = await asyncio.create_subprocess_exec(
        "kamailio", "-f", str(tmp_path / "kamailio.cfg"), "-DD", "-E", "-w", str(tmp_path),
        "-P", str(tmp_path / "kamailio.pid"), stdout=log, stderr=log)
    uas = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1", "-nostdin",
        "-trace_msg", "-message_file", str(tmp_path / "uas.messages"),
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    uac = None
    try:
        await wait_udp_bound("127.0.0.1", sip_port, timeout=20)
        await wait_udp_bound("127.0.0.1", uas_port, timeout=20)
        assert await node.drain(limit=60)
        uac = await asyncio.create_subprocess_exec(
            "sipp", "-sn", "uac", f"127.0.0.1:{sip_port}", "-i", "127.0.0.2",
            "-p", str(pick_udp_port("127.0.0.2")), "-m", "1", "-timeout", "20",
            "-timeout_error", "-nostdin", "-trace_msg",
            "-message_file", str(tmp_path / "uac.messages"),
            cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(30):
            await uac.wait()
        assert uac.returncode != 0  # the call failed ...
        messages = (tmp_path / "uac.messages").read_text()
        assert "SIP/2.0 488 Not Acceptable Here" in messages, messages[-2000:]  # ... so
        assert node.readings().offers_refused == 1 and node.registry.counters.created == 0
        uas_saw = tmp_path / "uas.messages"
        assert not uas_saw.exists() or "INVITE sip:" not in uas_saw.read_text()  # never rang
        assert "ToneGuard SDP refused: INVITE rejected 488" in log_path.read_text()
    finally:
        for proc in (uac, uas, kamailio):
            await stop(proc)
        log.close()
        await node.stop()
