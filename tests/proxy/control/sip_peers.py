"""Real SIP peers for tests: Kamailio with the shipped kamailio.cfg, sipp phones, RTP pcaps.

sipp plays the customer's audio from a pcap this module writes (card digits in-band and as
RFC 4733 events); the contact centre's SDP points at an RtpPeer of the test, which records what
an agent would hear. Everything binds loopback and is stopped by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsp import g711, tones
from proxy.control.calls import PENDING_TAG
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.spandsp import spandsp_detect
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.rtp import RtpPacket
from proxy.media.types import DigitEvent
from proxy.service.config import load_config
from proxy.service.serve import Node
from tests.conftest import pick_udp_port, udp_port_bound

KAMAILIO_CFG = Path(__file__).parents[3] / "config" / "kamailio" / "kamailio.cfg"
CARRIER_IP = "127.0.0.2"  # the carrier (customers) — the cfg's CARRIER_NET
CENTRE_IP = "127.0.0.1"  # the contact centre and Kamailio
PTIME = 160


def card_audio(digits: str, *, level_dbm0: float = -10.0) -> np.ndarray:
    """16-bit audio of a caller keying ``digits`` in-band (80 ms tones, 80 ms gaps)."""
    audio = tones.dtmf_sequence(digits, tone_ms=80, gap_ms=80, lead_ms=400, tail_ms=400,
                                low_dbm0=level_dbm0)
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def rtp_packets(audio: np.ndarray, events: str = "", *, ssrc: int = 0x1234) -> list[bytes]:
    """PCMU packets of ``audio`` followed by RFC 4733 events (PT 101) for ``events``."""
    codes = g711.encode(audio, "ulaw").tobytes()
    codes += b"\xff" * (-len(codes) % PTIME)
    out: list[bytes] = []
    seq, ts = 1000, 160000
    for i in range(0, len(codes), PTIME):
        out.append(bytes(RtpPacket(0, seq, ts, ssrc, payload=codes[i:i + PTIME])))
        seq, ts = seq + 1, ts + PTIME
    for key in events:
        code = "0123456789*#ABCD".index(key)
        for n in range(1, 6):  # 100 ms of event, then three end packets
            end = n == 5
            for _ in range(3 if end else 1):
                event = TelephoneEvent(code, end, 10, n * PTIME)
                out.append(bytes(RtpPacket(101, seq, ts, ssrc, marker=n == 1,
                                           payload=bytes(event))))
                seq += 1
        ts += 6 * PTIME
        for _ in range(5):  # a pause of silence between the keys
            out.append(bytes(RtpPacket(0, seq, ts, ssrc, payload=b"\xff" * PTIME)))
            seq, ts = seq + 1, ts + PTIME
    return out


def write_pcap(path: Path, payloads: list[bytes], *, src: str = CARRIER_IP) -> None:
    """A libpcap file (Ethernet/IPv4/UDP) of ``payloads`` 20 ms apart, as sipp plays it."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, payload in enumerate(payloads):
            udp = struct.pack("!HHHH", 40000, 40002, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton(src), socket.inet_aton(CENTRE_IP))
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            t = n * 0.02
            f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
            f.write(frame)


def _sdp(ip: str, port: str) -> str:
    return (f"v=0\no=- 1 1 IN IP4 {ip}\ns=-\nc=IN IP4 {ip}\nt=0 0\n"
            f"m=audio {port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
            "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=sendrecv\n")


_HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">\n'


def _request(method: str, cseq: int, sdp: str | None, *, first: bool) -> str:
    uri = "sip:callee@[remote_ip]:[remote_port]" if first else "[next_url]"
    to_tag = "" if first else "[peer_tag_param]"
    body = f"Content-Type: application/sdp\nContent-Length: [len]\n\n{sdp}" if sdp else (
        "Content-Length: 0\n")
    routes = "" if first else "[routes]\n"
    retrans = "" if method == "ACK" else ' retrans="500"'  # an ACK is never retransmitted
    return f"""  <send{retrans}><![CDATA[
{method} {uri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:callee@[remote_ip]:[remote_port]>{to_tag}
Call-ID: [call_id]
CSeq: {cseq} {method}
{routes}Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
{body}
]]></send>
"""


def _reply(code: str, sdp: str | None, *, to_tag: bool = True) -> str:
    """A reply; ``to_tag`` adds our tag (not when the request already carries it)."""
    tag = ";tag=[pid]SIPpTag01[call_number]" if to_tag else ""
    body = f"Content-Type: application/sdp\nContent-Length: [len]\n\n{sdp}" if sdp else (
        "Content-Length: 0\n")
    return f"""  <send><![CDATA[
SIP/2.0 {code}
[last_Via:]
[last_From:]
[last_To:]{tag}
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:callee@[local_ip]:[local_port]>
{body}
]]></send>
"""


def _play(pcap: str | None) -> str:
    if pcap is None:
        return ""
    return f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'


def caller_scenario(*, sdp_port: str, play: str | None, hold_ms: int,
                    reinvite_port: str | None = None, reinvite_after_ms: int = 0) -> str:
    """A UAC that calls, optionally plays a pcap, optionally re-INVITEs after
    ``reinvite_after_ms`` with a new media port (a transfer to another agent's phone),
    waits ``hold_ms``, and hangs up."""
    sdp_ip = "[media_ip]"
    xml = _HEAD.format(name="caller") + _request("INVITE", 1, _sdp(sdp_ip, sdp_port),
                                                 first=True)
    xml += ('  <recv response="100" optional="true"/>\n'
            '  <recv response="180" optional="true"/>\n'
            '  <recv response="183" optional="true"/>\n'
            '  <recv response="200" rtd="true" rrs="true"/>\n')
    xml += _request("ACK", 1, None, first=False) + _play(play)
    cseq = 2
    if reinvite_port is not None:
        xml += f'  <pause milliseconds="{reinvite_after_ms}"/>\n'
        xml += _request("INVITE", cseq, _sdp(sdp_ip, reinvite_port), first=False)
        xml += ('  <recv response="100" optional="true"/>\n'
                '  <recv response="200" rrs="true"/>\n')
        xml += _request("ACK", cseq, None, first=False)
        cseq += 1
    xml += f'  <pause milliseconds="{hold_ms}"/>\n'
    xml += _request("BYE", cseq, None, first=False)
    xml += '  <recv response="200" crlf="true"/>\n</scenario>\n'
    return xml


def callee_scenario(*, sdp_port: str, play: str | None, reinvite: bool = False,
                    play_after: str | None = None) -> str:
    """A UAS that answers, optionally plays a pcap, optionally accepts one re-INVITE (then
    plays ``play_after``), and waits for the BYE."""
    xml = _HEAD.format(name="callee") + '  <recv request="INVITE" crlf="true"/>\n'
    xml += _reply("180 Ringing", None) + _reply("200 OK", _sdp("[media_ip]", sdp_port))
    xml += '  <recv request="ACK" crlf="true"/>\n' + _play(play)
    if reinvite:
        xml += '  <recv request="INVITE"/>\n' + _reply("200 OK", _sdp("[media_ip]", sdp_port),
                                                      to_tag=False)
        xml += '  <recv request="ACK"/>\n' + _play(play_after)
    xml += '  <recv request="BYE"/>\n' + _reply("200 OK", None, to_tag=False)
    xml += "</scenario>\n"
    return xml


async def stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    # SIGINT: a ToneGuard node stops at once (SIGTERM would drain its calls); Kamailio and
    # sipp end on it too.
    proc.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(5):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


@dataclass
class Kamailio:
    sip_port: int
    log: Path


@contextlib.asynccontextmanager
async def kamailio(workdir: Path, *, sip_port: int, ng_port: int, centre_port: int,
                   carrier_port: int, fork_port: int | None = None,
                   ws_port: int | None = None,
                   softphone_secret: str = "") -> AsyncIterator[Kamailio]:
    """The shipped kamailio.cfg with its defines pointed at this test's ports; ``fork_port``
    turns on its parallel forking to a second contact-centre target there, ``ws_port`` its
    WITH_WEBRTC part (browsers registering over SIP on a WebSocket there, on loopback, with
    credentials derived from ``softphone_secret``)."""
    cfg = KAMAILIO_CFG.read_text().replace(
        "SIP_LISTEN udp:127.0.0.1:5060", f"SIP_LISTEN udp:127.0.0.1:{sip_port}").replace(
        '"udp:127.0.0.1:2223"', f'"udp:127.0.0.1:{ng_port}"').replace(
        '"sip:127.0.0.1:5080"', f'"sip:{CENTRE_IP}:{centre_port}"').replace(
        '"sip:127.0.0.2:5090"', f'"sip:{CARRIER_IP}:{carrier_port}"')
    if fork_port is not None:
        fork = '##!define CONTACT_CENTRE_FORK "sip:127.0.0.1:5082"'
        if fork not in cfg:
            raise RuntimeError(f"{KAMAILIO_CFG} no longer has the line {fork!r}")
        cfg = cfg.replace(fork, f'#!define CONTACT_CENTRE_FORK "sip:{CENTRE_IP}:{fork_port}"')
    if ws_port is not None:
        for line, wanted in (("##!define WITH_WEBRTC", "#!define WITH_WEBRTC"),
                             ("#!define WS_LISTEN tcp:127.0.0.1:8088",
                              f"#!define WS_LISTEN tcp:127.0.0.1:{ws_port}"),
                             ('"change-me-to-the-content-of-api.softphone_secret_file"',
                              f'"{softphone_secret}"')):
            if line not in cfg:
                raise RuntimeError(f"{KAMAILIO_CFG} no longer has the line {line!r}")
            cfg = cfg.replace(line, wanted)
    (workdir / "kamailio.cfg").write_text(cfg)
    log_path = workdir / "kamailio.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            "kamailio", "-f", str(workdir / "kamailio.cfg"), "-DD", "-E", "-w", str(workdir),
            "-P", str(workdir / "kamailio.pid"), stdout=log, stderr=log)
        try:
            async with asyncio.timeout(10):  # until it has bound its SIP port
                while not udp_port_bound("127.0.0.1", sip_port):
                    if proc.returncode is not None:
                        raise RuntimeError(log_path.read_text()[-2000:])
                    await asyncio.sleep(0.05)
            yield Kamailio(sip_port, log_path)
        finally:
            await stop(proc)


async def sipp(workdir: Path, name: str, xml: str, *, ip: str, port: int, media_port: int,
               target: str | None = None, timeout_s: int = 40, calls: int = 1,
               inf: Path | None = None) -> asyncio.subprocess.Process:
    """Start sipp with scenario ``xml`` bound on ``ip``, for ``calls`` calls (fields from the
    injection file ``inf``); a UAC when ``target``."""
    scenario = workdir / f"{name}.xml"
    scenario.write_text(xml)
    args = ["sipp", "-sf", str(scenario), "-i", ip, "-p", str(port), "-mi", ip,
            "-mp", str(media_port), "-m", str(calls), "-timeout", str(timeout_s),
            "-timeout_error", "-nostdin", "-trace_err", "-error_file",
            str(workdir / f"{name}.errors"),
            "-trace_msg", "-message_file", str(workdir / f"{name}.messages")]
    if inf is not None:
        args += ["-inf", str(inf)]
    if target is not None:
        args.insert(1, target)
    return await asyncio.create_subprocess_exec(
        *args, cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def all_exited_0(procs: list[asyncio.subprocess.Process], kam: Kamailio,
                      timeout: float = 60.0) -> None:
    """Until every sipp in ``procs`` has exited (bounded); each must have exited 0, else the
    assertion shows their errors and the end of Kamailio's log."""
    async with asyncio.timeout(timeout):
        for proc in procs:
            await proc.wait()
    errors = [(await p.stderr.read()).decode() if p.stderr else "" for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), (
        errors, kam.log.read_text()[-3000:])


def answered_call(node: Node) -> str | None:
    """The id of a call of ``node`` whose answerer has answered (a tag and media), else None."""
    for call in node.registry.calls.values():
        answerer = call.party("answerer")
        if answerer is not None and answerer.tag != PENDING_TAG and answerer.medias:
            return call.call_id
    return None


def audio_packets(peer: RtpPeer) -> int:
    """The audio (PCMU) packets ``peer`` received."""
    return sum(1 for _, p in peer.received.packets if p.payload_type == 0)


def assert_heard_audio_but_no_digit(peer: RtpPeer, sent: int, *, percent: int = 90) -> None:
    """``peer`` received at least ``percent`` % of the ``sent`` audio packets (the audio did
    arrive), no RFC 4733 event (none leaves ToneGuard toward a masked leg), and spandsp,
    multimon-ng and the leak meter find no digit in what it heard."""
    assert audio_packets(peer) >= sent * percent // 100, (audio_packets(peer), sent)
    assert peer.received.events() == []
    heard = peer.received.audio()
    assert spandsp_detect(heard) == ""
    assert multimon_detect(heard) == ""
    assert leaked_ms(heard) == 0.0


async def wait_udp_bound(ip: str, port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not udp_port_bound(ip, port):
            await asyncio.sleep(0.05)


async def start_node(media_ports: tuple[int, int], digits: list[DigitEvent], *,
                     masking: dict[str, object] | None = None,
                     media: dict[str, object] | None = None) -> Node:
    """A ToneGuard node for a SIP test: ng on a free loopback port (Kamailio's target), media
    in ``media_ports``, its API on any port, every digit it reports appended to ``digits``."""
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1], **(media or {})},
        "api": {"listen": "127.0.0.1:0"},
        "masking": masking or {},
    })
    return await Node.start(config, on_digit=lambda call, tag, event: digits.append(event))
