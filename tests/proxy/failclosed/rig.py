"""A call through a real ToneGuard node for the fail-closed tests, and the checks they share.

Everything goes over loopback sockets, as in production: Kamailio's side of ng (bencode over
UDP), the agent's REST calls, and RTP/SRTP between RtpPeer phones and the node; a recording
tap (ng ``recording-tap``) listens too. :meth:`CallRig.leaks` says every way the caller's keys
reached the agent (RTP or RTCP port) or the tap; :meth:`CallRig.audio_arrived` that the
caller's audio did arrive, so silence cannot pass for "nothing leaked".

Assumption: ToneGuard relays a party's packets under that party's SSRC (as rtpengine does), so
"the caller's audio reached the agent" is counted by the caller's SSRC.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.control import sdes
from proxy.control.ng_client import NgClient
from proxy.control.sdp import parse
from proxy.demo.phone import RtpPeer
from proxy.media.types import SrtpParams
from tests.conftest import pick_udp_port
from tests.proxy.conftest import Stack
from tests.proxy.failclosed.wire import (
    LAWS,
    Address,
    Codec,
    Heard,
    RtpSource,
    Send,
    by_source,
    judge,
    noise,
    phone_sdp,
    send,
)

AGENT_ID = "agent-demo"  # the agent the stack's agent key belongs to
ARRIVED_FRACTION = 0.8  # of the caller's audio packets sent, at least this many must arrive
SETTLE_SECONDS = 4.0  # bound on waiting for the relay to flush after the last packet


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait (bounded) until ``condition()`` holds; False if it did not within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --- ng and REST ----------------------------------------------------------------------------

class NgControl(NgClient):
    """Kamailio's side of ng (the shared client, given to ``create_datagram_endpoint``): a
    request is retransmitted until its reply, which is returned, error or not."""

    def __init__(self) -> None:
        super().__init__(raise_on_error=False)

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        return self._transport

    async def ok(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.request(body)
        assert reply.get("result") in ("ok", "pong"), (
            f"ng {body.get('command')} refused: {reply.get('error-reason')}")
        return reply


# --- one call -------------------------------------------------------------------------------

async def bind_pair(host: str = "127.0.0.1", *, srtp_send: SrtpParams | None = None,
                    seed: int = 1) -> tuple[RtpPeer, RtpPeer]:
    """A phone's two sockets: RTP on an even port, RTCP on the next one."""
    for _ in range(50):
        port = pick_udp_port(host) // 2 * 2
        rtp = RtpPeer(host, srtp_send=srtp_send, seed=seed)
        try:
            await rtp.start(port)
        except OSError:
            continue
        rtcp = RtpPeer(host)
        try:
            await rtcp.start(port + 1)
        except OSError:
            rtp.close()
            continue
        return rtp, rtcp
    raise OSError("no free even/odd UDP port pair on loopback")


@dataclass
class CallSetup:
    """The caller's offer; the agent answers in kind (same first codec, same events)."""

    codecs: Sequence[Codec] = (Codec(0, "PCMU"), Codec(8, "PCMA"),
                               Codec(101, "telephone-event"))
    ptime: int = 20
    rtcp_mux: bool = False
    caller_suite: str | None = None  # SDES-SRTP on the caller leg with this suite
    agent_plain: bool = True  # False: the agent leg speaks what the caller offered
    agent_suite: str | None = None  # which of the offered suites the agent picks (SAVP)
    advertise_rtcp: bool = False  # the caller's SDP says a=rtcp:<port+1>

    @property
    def send_codec(self) -> Codec:
        return next(c for c in self.codecs if c.pt in LAWS)

    @property
    def event_codec(self) -> Codec | None:
        return next((c for c in self.codecs if c.is_event), None)


class CallRig:
    """A caller, an agent (RTP and RTCP ports), a recording tap and a node, in one call."""

    def __init__(self, stack: Stack, setup: CallSetup) -> None:
        self.stack = stack
        self.setup = setup
        self.call_id = "fc-" + secrets.token_hex(4)
        self.ng = NgControl()
        self.http = httpx.AsyncClient(base_url=stack.api, timeout=10)
        self.caller_key = sdes.generate(setup.caller_suite) if setup.caller_suite else None
        self.caller = RtpPeer(srtp_send=self.caller_key.params if self.caller_key else None,
                              seed=31)
        self.agent_key: sdes.CryptoAttribute | None = None
        self.agent: RtpPeer | None = None
        self.agent_rtcp: RtpPeer | None = None
        self.tap = RtpPeer(seed=33)
        self.caller_src = RtpSource(self.caller.ssrc, seed=34)
        self.agent_src: RtpSource | None = None
        self.offer_body: dict[str, Any] = {}
        self.answer_body: dict[str, Any] = {}
        self.to_toneguard: Address = ("", 0)  # where the caller sends RTP
        self.to_toneguard_rtcp: Address = ("", 0)  # ...and RTCP (a=rtcp, else RTP + 1)
        self.agent_to_toneguard: Address = ("", 0)  # where the agent sends RTP
        self.agent_sent = 0  # audio packets the agent sent toward the caller
        self._closers: list[Callable[[], None]] = []

    async def start(self) -> CallRig:
        s = self.setup
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.ng, remote_addr=self.stack.ng)
        self._closers.append(lambda: self.ng.transport.close() if self.ng.transport else None)
        await self.caller.start()
        self._closers.append(self.caller.close)
        await self.tap.start()
        self._closers.append(self.tap.close)
        self.offer_body = {
            "command": "offer", "call-id": self.call_id, "from-tag": "caller",
            "label": "caller", "replace": ["origin"],
            "recording-tap": f"127.0.0.1:{self.tap.port}",
            "sdp": self.caller_sdp()}
        if s.agent_plain:
            self.offer_body.setdefault("transport-protocol", "RTP/AVP")
        offer = await self.ng.ok(self.offer_body)
        chosen = self._agent_side(offer["sdp"])
        if chosen is not None:
            self.agent_key = sdes.generate(chosen.suite, chosen.tag)
        self.agent, self.agent_rtcp = await bind_pair(
            srtp_send=self.agent_key.params if self.agent_key else None, seed=32)
        self._closers += [self.agent.close, self.agent_rtcp.close]
        self.agent.set_srtp_recv(chosen.params if chosen else None)
        self.agent_src = RtpSource(self.agent.ssrc, seed=35)
        self.answer_body = {
            "command": "answer", "call-id": self.call_id, "from-tag": "caller",
            "to-tag": "agent", "label": "agent", "sdp": self.agent_sdp(offer["sdp"])}
        answer = await self.ng.ok(self.answer_body)
        self._caller_keys(answer["sdp"])
        r = await self.http.post(f"/v1/calls/{self.call_id}/assign", json={"agent_id": AGENT_ID},
                                 headers={"Authorization": f"Bearer {self.stack.admin_key}"})
        r.raise_for_status()
        return self

    def caller_sdp(self) -> str:
        s = self.setup
        return phone_sdp("127.0.0.1", self.caller.port, s.codecs,
                         proto="RTP/SAVP" if self.caller_key else "RTP/AVP",
                         crypto=[self.caller_key] if self.caller_key else (),
                         rtcp_mux=s.rtcp_mux, ptime=s.ptime,
                         rtcp_port=self.caller.port + 1 if s.advertise_rtcp else None)

    def agent_sdp(self, offer_sdp: str) -> str:
        assert self.agent is not None
        section = parse(offer_sdp).media[0]
        codecs = [Codec(self.setup.send_codec.pt, {0: "PCMU", 8: "PCMA"}[
            self.setup.send_codec.pt])]
        if (event := self.setup.event_codec) is not None:
            codecs.append(Codec(event.pt, "telephone-event"))
        return phone_sdp("127.0.0.1", self.agent.port, codecs, proto=section.proto,
                         crypto=[self.agent_key] if self.agent_key else (),
                         rtcp_mux=section.rtcp_mux, session=4712)

    def _agent_side(self, offer_sdp: str) -> sdes.CryptoAttribute | None:
        """Where the agent sends, and on an SRTP agent leg the key ToneGuard will send with
        (the suite the agent picks from the offer; the agent's own key is made once, for
        that suite, and kept across re-offers as phones do)."""
        parsed = parse(offer_sdp)
        section = parsed.media[0]
        self.agent_to_toneguard = (parsed.media_connection(0) or "", section.port)
        if section.proto not in ("RTP/SAVP", "RTP/SAVPF"):
            return None
        offered = sdes.offered(section.attributes("crypto"))
        assert offered, "an SRTP offer to the agent carries no usable a=crypto"
        wanted = self.agent_key.suite if self.agent_key else self.setup.agent_suite
        return next((c for c in offered if c.suite == wanted), offered[0])

    def _caller_keys(self, answer_sdp: str) -> None:
        section = parse(answer_sdp).media[0]
        self.to_toneguard = (parse(answer_sdp).media_connection(0) or "", section.port)
        self.to_toneguard_rtcp = (self.to_toneguard[0], section.rtcp_port or section.port + 1)
        if self.caller_key is not None:
            offered = sdes.offered(section.attributes("crypto"))
            assert offered, "the answer to an SDES caller carries no usable a=crypto"
            self.caller.set_srtp_recv(offered[0].params)

    async def reoffer(self) -> None:
        """A re-INVITE with the same SDP: offer and answer again; keys follow the new SDP."""
        offer = await self.ng.ok(self.offer_body)
        chosen = self._agent_side(offer["sdp"])
        assert self.agent is not None
        self.agent.set_srtp_recv(chosen.params if chosen else None)
        self.answer_body["sdp"] = self.agent_sdp(offer["sdp"])
        answer = await self.ng.ok(self.answer_body)
        self._caller_keys(answer["sdp"])

    async def close(self) -> None:
        try:
            if self.ng.transport is not None:
                await self.ng.request({"command": "delete", "call-id": self.call_id})
        finally:
            await self.http.aclose()
            for closer in self._closers:
                closer()

    async def __aenter__(self) -> CallRig:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- talking --------------------------------------------------------------------------

    def agent_plan(self, seconds: float, seed: int = 9) -> list[Send]:
        """The agent's own audio (noise) toward ToneGuard, for ``seconds``."""
        assert self.agent_src is not None
        return self.agent_src.segment(noise(seconds, seed=seed), self.agent_to_toneguard,
                                      pt=self.setup.send_codec.pt)

    async def talk(self, caller_plan: list[Send], *,
                   extra: Sequence[tuple[RtpPeer, list[Send]]] = ()) -> None:
        """Play the caller's plan (and the agent's noise for as long), then wait until what
        the caller sent to the RTP port has reached the agent (bounded: a node that drops it
        is caught by the checks, not here)."""
        assert self.agent is not None
        seconds = (caller_plan[-1][0] + 0.1) if caller_plan else 0.1
        agent_plan = self.agent_plan(seconds)
        self.agent_sent += len(agent_plan)
        plays = [send(self.caller, caller_plan), send(self.agent, agent_plan)]
        plays += [send(peer, plan) for peer, plan in extra]
        await asyncio.gather(*plays)
        stamps = [p.timestamp for _, p, d in caller_plan if d == self.to_toneguard
                  and p.payload_type in LAWS and p.ssrc == self.caller.ssrc]
        if stamps:
            last = max(stamps, key=lambda ts: (ts - stamps[0]) & 0xFFFFFFFF)
            await until(lambda: self._arrived_ts(last), SETTLE_SECONDS)

    def _arrived_ts(self, timestamp: int) -> bool:
        """The caller's audio at RTP ``timestamp`` (or later) reached the agent. (Timestamps,
        not sequence numbers: a masking relay renumbers after the events it drops.)"""
        assert self.agent is not None
        tail = [p for _, p in self.agent.received.packets[-20:] if p.ssrc == self.caller.ssrc]
        return any(((p.timestamp - timestamp) & 0xFFFFFFFF) < 0x80000000 for p in tail)

    # --- what arrived ---------------------------------------------------------------------

    def agent_heard(self) -> dict[int, Heard]:
        assert self.agent is not None
        return by_source(self.agent.received)

    def arrived(self, ssrc: int, where: str = "agent") -> int:
        """Audio packets of ``ssrc`` the agent (or the tap) received."""
        peer = self.agent if where == "agent" else self.tap
        assert peer is not None
        return sum(1 for _, p in peer.received.packets
                   if p.ssrc == ssrc and p.payload_type in LAWS)

    def leaks(self, *, event_pts: Sequence[int] = (), foreign: Sequence[int] = ()) -> list[str]:
        """Every way the caller's keys reached the agent or the recording tap, as sentences
        (empty: nothing leaked). ``event_pts``: RFC 4733 payload types the caller used (none
        may reach the agent); ``foreign``: SSRCs of which no packet may reach the agent."""
        assert self.agent is not None and self.agent_rtcp is not None and self.agent_src
        problems = []
        for where, heard in (("agent RTP port", self.agent_heard()),
                             ("recording tap", by_source(self.tap.received))):
            for ssrc, h in heard.items():
                if where == "recording tap" and ssrc == self.agent_src.ssrc:
                    continue  # the agent's own voice, recorded too
                verdict = judge(h.audio)
                if not verdict.clean:
                    problems.append(f"{where}, SSRC {ssrc:#x} ({h.packets} packets): {verdict}")
                events = sum(h.payload_types[pt] for pt in event_pts)
                if events:
                    problems.append(f"{where}, SSRC {ssrc:#x}: {events} RFC 4733 event "
                                    "packet(s) of the caller arrived")
                if ssrc in foreign and h.packets:
                    problems.append(f"{where}: {h.packets} packet(s) of foreign SSRC "
                                    f"{ssrc:#x} arrived")
        stray = self.agent_rtcp.received.packets
        if stray:
            problems.append(f"agent RTCP port: {len(stray)} RTP packet(s) arrived "
                            f"(SSRCs {', '.join(sorted({f'{p.ssrc:#x}' for _, p in stray}))})")
            for ssrc, h in by_source(self.agent_rtcp.received).items():
                verdict = judge(h.audio)
                if not verdict.clean:
                    problems.append(f"agent RTCP port, SSRC {ssrc:#x}: {verdict}")
        return problems

    def audio_arrived(self, sent: int) -> list[str]:
        """Sentences if less than ARRIVED_FRACTION of the caller's ``sent`` audio packets
        reached the agent or the recording tap (silence must not pass as 'nothing leaked')."""
        problems = []
        for where in ("agent", "tap"):
            got = self.arrived(self.caller.ssrc, where)
            if got < ARRIVED_FRACTION * sent:
                problems.append(f"only {got} of the caller's {sent} audio packets reached the "
                                f"{'agent' if where == 'agent' else 'recording tap'}")
        return problems

    def caller_heard_agent(self) -> list[str]:
        """A sentence if the real caller got less than half of the agent's audio."""
        got = sum(1 for _, p in self.caller.received.packets if p.payload_type in LAWS)
        if got < self.agent_sent / 2:
            return [f"the real caller received {got} of the agent's {self.agent_sent} "
                    "audio packets"]
        return []

    # --- control --------------------------------------------------------------------------

    async def dtmf(self, block: bool, **extra: Any) -> dict[str, Any]:
        """``block DTMF`` / ``unblock DTMF`` on the caller (reply returned, error or not)."""
        body = {"command": "block DTMF" if block else "unblock DTMF", "call-id": self.call_id,
                **extra}
        return await self.ng.request(body)

    async def start_payment(self) -> str:
        r = await self.http.post(f"/v1/calls/{self.call_id}/payments", json={},
                                 headers={"Authorization": f"Bearer {self.stack.agent_key}"})
        assert r.status_code == 201, f"payment start: HTTP {r.status_code} {r.text[:200]}"
        sid: str = r.json()["sid"]
        return sid

    async def cancel_payment(self, sid: str) -> None:
        r = await self.http.post(f"/v1/calls/{self.call_id}/payments/{sid}",
                                 json={"Status": "cancel"},
                                 headers={"Authorization": f"Bearer {self.stack.agent_key}"})
        assert r.status_code == 200, f"payment cancel: HTTP {r.status_code} {r.text[:200]}"

    async def payment(self, sid: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/calls/{self.call_id}/payments/{sid}",
                                headers={"Authorization": f"Bearer {self.stack.agent_key}"})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    async def payment_settled(self, sid: str, timeout: float = 10.0) -> dict[str, Any]:
        """The payment once it left capturing/submitting (or as it is after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            view = await self.payment(sid)
            if view["status"] not in ("capturing", "ready", "submitting") or (
                    loop.time() >= deadline):
                return view
            await asyncio.sleep(0.05)

    async def caller_stream(self) -> dict[str, Any]:
        """The caller's stream as ng ``query`` reports it (stats, latched endpoint)."""
        reply = await self.ng.ok({"command": "query", "call-id": self.call_id})
        stream: dict[str, Any] = reply["tags"]["caller"]["medias"][0]["streams"][0]
        return stream
