"""The shipped kamailio.cfg with WITH_WEBRTC, driven with raw SIP (no browser: fast): a browser
registers over the WebSocket with the API's credential for its own address (over UDP, with
another agent's credential, an expired one or a wrong password it is refused, and nothing is
registered); a carrier call to a registered agent reaches that WebSocket with ToneGuard's
WebRTC offer (DTLS, ICE, rtcp-mux, a=mid) and is assigned to that agent; a call to a user who
is not registered goes to the contact centre as before with plain RTP; a browser's own INVITE
is refused. The real browser end to end is test_softphone_chromium.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from proxy.api.app import sip_credential
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.proxy.control.sip_peers import CARRIER_IP, kamailio, start_node

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not shutil.which("kamailio"), reason="needs kamailio"),
]

OFFER = ("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
         "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


def _message(first_line: str, headers: list[str], body: str = "") -> str:
    ctype = ["Content-Type: application/sdp"] if body else []
    return "\r\n".join([first_line, *headers, *ctype, f"Content-Length: {len(body)}", "",
                        body])


SECRET = "softphone-test-secret-0123456789"


def _register(user: str, via: str, contact: str, call_id: str, cseq: int = 1,
              authorization: str = "") -> str:
    auth = [f"Authorization: {authorization}"] if authorization else []
    return _message("REGISTER sip:127.0.0.1 SIP/2.0", [
        f"Via: {via};branch=z9hG4bK-{call_id}-{cseq}", "Max-Forwards: 70",
        f"To: <sip:{user}@127.0.0.1>", f"From: <sip:{user}@127.0.0.1>;tag=r{call_id}",
        f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Contact: <{contact}>;expires=600",
        *auth])


def _digest(challenge: str, user: str, password: str) -> str:
    """RFC 2617 digest (MD5, no qop: Kamailio's www_challenge with flags 0) for a REGISTER."""
    realm = re.search(r'realm="([^"]+)"', challenge)
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    assert realm and nonce, challenge
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()
    uri = "sip:127.0.0.1"
    response = md5(f"{md5(f'{user}:{realm[1]}:{password}')}:{nonce[1]}:{md5(f'REGISTER:{uri}')}")
    return (f'Digest username="{user}", realm="{realm[1]}", nonce="{nonce[1]}", uri="{uri}", '
            f'response="{response}", algorithm=MD5')


async def _register_ws(ws, agent: str, contact: str, call_id: str,  # type: ignore[no-untyped-def]
                       user: str, password: str) -> str:
    """REGISTER, the 401's challenge answered with ``user``/``password``: the final status."""
    await ws.send(_register(agent, "SIP/2.0/WS abc.invalid", contact, call_id))
    challenge = await _next(ws.recv, "SIP/2.0 ")
    assert challenge.startswith("SIP/2.0 401"), challenge
    await ws.send(_register(agent, "SIP/2.0/WS abc.invalid", contact, call_id, cseq=2,
                            authorization=_digest(challenge, user, password)))
    return (await _next(ws.recv, "SIP/2.0 ")).split("\r\n", 1)[0]


def _invite(user: str, via: str, contact: str, call_id: str, sip_port: int, ip: str,
            media_port: int) -> str:
    return _message(f"INVITE sip:{user}@127.0.0.1:{sip_port} SIP/2.0", [
        f"Via: {via};branch=z9hG4bK-{call_id};rport", "Max-Forwards: 70",
        f"From: <sip:02079460018@{ip}>;tag=c{call_id}", f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {call_id}", "CSeq: 1 INVITE", f"Contact: <{contact}>"],
        OFFER.format(ip=ip, port=media_port))


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.messages: asyncio.Queue[str] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.messages.put_nowait(data.decode("utf-8", "replace"))


async def _next(get, starts: str, timeout: float = 10.0) -> str:  # type: ignore[no-untyped-def]
    """The next message that starts with ``starts`` (others, e.g. 100 Trying, skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await get()
            text = message if isinstance(message, str) else message.decode()
            if text.startswith(starts):
                return text


async def _udp(ip: str, port: int) -> tuple[asyncio.DatagramTransport, Udp]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Udp, local_addr=(ip, port))
    return transport, protocol


@pytest.fixture
async def node(media_ports: tuple[int, int]) -> AsyncIterator[Node]:
    digits: list[DigitEvent] = []
    node = await start_node(media_ports, digits)
    yield node
    await node.stop()


async def test_browser_legs_route_through_toneguard_with_webrtc_flags(
        node: Node, tmp_path: Path) -> None:
    sip_port, centre_port, ws_port = pick_udp_port(), pick_udp_port(), pick_tcp_port()
    carrier_port, local_port = pick_udp_port(CARRIER_IP), pick_udp_port()
    async with kamailio(tmp_path, sip_port=sip_port, ng_port=node.ng_address[1],
                        centre_port=centre_port, carrier_port=pick_udp_port(CARRIER_IP),
                        ws_port=ws_port, softphone_secret=SECRET) as kam:
        carrier, _carrier_in = await _udp(CARRIER_IP, carrier_port)
        centre, centre_in = await _udp("127.0.0.1", centre_port)
        local, local_in = await _udp("127.0.0.1", local_port)
        try:
            async with asyncio.timeout(10):  # the WS listener is up
                while True:
                    try:
                        with socket.create_connection(("127.0.0.1", ws_port), timeout=1):
                            break
                    except OSError:
                        await asyncio.sleep(0.05)
            # Over UDP a REGISTER is refused: agents register from the panel only.
            local.sendto(_register("agent-demo", f"SIP/2.0/UDP 127.0.0.1:{local_port}",
                                   f"sip:agent-demo@127.0.0.1:{local_port}", "reg-udp")
                         .encode(), ("127.0.0.1", sip_port))
            assert (await _next(local_in.messages.get, "SIP/2.0 ")).startswith(
                "SIP/2.0 403")

            async with websockets.connect(f"ws://127.0.0.1:{ws_port}",
                                          subprotocols=["sip"]) as ws:  # type: ignore[list-item]
                contact = "sip:x1@abc.invalid;transport=ws"
                secret = SECRET.encode()
                # Another agent's credential, an expired one, a wrong password: refused.
                user, password = sip_credential(secret, "agent-other", 3600)
                assert (await _register_ws(ws, "agent-demo", contact, "reg-other", user,
                                           password)).startswith("SIP/2.0 403")
                user, password = sip_credential(secret, "agent-demo", 60,
                                                now=time.time() - 120)
                assert (await _register_ws(ws, "agent-demo", contact, "reg-old", user,
                                           password)).startswith("SIP/2.0 403")
                user, password = sip_credential(b"not-the-secret", "agent-demo", 3600)
                assert (await _register_ws(ws, "agent-demo", contact, "reg-wrong", user,
                                           password)).startswith("SIP/2.0 401")
                # None of those registered anything: a call to the agent goes elsewhere.
                carrier.sendto(_invite(
                    "agent-demo", f"SIP/2.0/UDP {CARRIER_IP}:{carrier_port}",
                    f"sip:02079460018@{CARRIER_IP}:{carrier_port}", "before-register",
                    sip_port, CARRIER_IP, 40006).encode(), ("127.0.0.1", sip_port))
                invite = await _next(centre_in.messages.get, "INVITE ")
                assert "Call-ID: before-register" in invite
                # The API's credential for this agent: registered.
                user, password = sip_credential(secret, "agent-demo", 3600)
                assert (await _register_ws(ws, "agent-demo", contact, "reg-ws", user,
                                           password)).startswith("SIP/2.0 200")

                # A carrier call to the registered agent: to its WebSocket, WebRTC offer.
                carrier.sendto(_invite(
                    "agent-demo", f"SIP/2.0/UDP {CARRIER_IP}:{carrier_port}",
                    f"sip:02079460018@{CARRIER_IP}:{carrier_port}", "to-browser", sip_port,
                    CARRIER_IP, 40000).encode(), ("127.0.0.1", sip_port))
                invite = await _next(ws.recv, "INVITE ")
                assert invite.startswith("INVITE sip:x1@abc.invalid;transport=ws SIP/2.0")
                sdp = invite.split("\r\n\r\n", 1)[1]
                assert "m=audio" in sdp and "UDP/TLS/RTP/SAVPF" in sdp
                for line in ("a=fingerprint:sha-256 ", "a=setup:passive", "a=ice-ufrag:",
                             "a=ice-pwd:", "a=candidate:", "a=rtcp-mux", "a=mid:"):
                    assert line in sdp, line
                assert "127.0.0.2" not in sdp  # the carrier's own address never reaches it
                call = node.payments.calls["to-browser"]
                assert call.agent_id == "agent-demo" and call.caller == "02079460018"

                # A browser calling out is refused (not built: the reverse bridge flags).
                await ws.send(_invite("agent-demo", "SIP/2.0/WS abc.invalid", contact,
                                      "from-browser", sip_port, "127.0.0.1", 40002))
                assert (await _next(ws.recv, "SIP/2.0 4")).startswith("SIP/2.0 403")
                assert "from-browser" not in node.registry.calls

            # A user who is not registered: the contact centre, plain RTP, as without WebRTC.
            carrier.sendto(_invite(
                "agent-other", f"SIP/2.0/UDP {CARRIER_IP}:{carrier_port}",
                f"sip:02079460018@{CARRIER_IP}:{carrier_port}", "to-centre", sip_port,
                CARRIER_IP, 40004).encode(), ("127.0.0.1", sip_port))
            invite = await _next(centre_in.messages.get, "INVITE ")
            sdp = invite.split("\r\n\r\n", 1)[1]
            assert "RTP/AVP" in sdp and "SAVPF" not in sdp and "a=fingerprint" not in sdp
            assert "a=candidate" not in sdp
            assert "to-centre" in node.registry.calls
        except BaseException:
            print(kam.log.read_text()[-3000:])
            raise
        finally:
            for transport in (carrier, centre, local):
                transport.close()
