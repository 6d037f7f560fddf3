"""Calls, parties and the ng command handlers, sans-IO over a MediaEngine.

An offer from party A (``from-tag``) creates, per media section, a stream facing A and a stream
facing B, linked; the SDP returned (for B) advertises B's stream, the answer's SDP (for A)
advertises A's. SRTP is terminated per leg: each stream gets its own key, generated here and
advertised in SDES ``a=crypto`` to the party it faces. Stream ids are ``call-id/tag/index``
(B's tag is ``"~"`` until the answer names it).

Masking: the caller's stream (the offerer's, by default) gets the configured MaskingPolicy, so
its DTMF is masked before it reaches the agent whether or not anyone asked (always-on);
``block DTMF``/``unblock DTMF`` change it live. Digits the media plane reports are passed to
``on_digit`` (the secure-pay manager), never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import structlog

from proxy.control import ng, sdes
from proxy.control.sdp import (
    DTLS_ATTRIBUTES,
    ICE_ATTRIBUTES,
    MediaSection,
    SdpError,
    SessionDescription,
)
from proxy.control.sdp import parse as parse_sdp
from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.types import (
    SRTP_SUITES,
    DigitEvent,
    IdleEvent,
    LocalEndpoint,
    MediaEngine,
    MediaError,
    MediaEvent,
    PortsExhaustedError,
    StreamConfig,
)

log = structlog.get_logger("toneguard.calls")
PENDING_TAG = "~"
SAVP = ("RTP/SAVP", "RTP/SAVPF")
PLAIN = ("RTP/AVP", "RTP/AVPF")
Role = Literal["offerer", "answerer"]


@dataclass(frozen=True)
class CallPolicy:
    """Deployment defaults for masking (config [masking])."""

    always_on: bool = True
    caller: Literal["offerer", "answerer", "both", "none"] = "offerer"
    masking: MaskingPolicy = field(default_factory=MaskingPolicy)
    recording: tuple[str, int] | None = None  # RTP copy of what is sent (masked) to a recorder


@dataclass
class Media:
    index: int
    stream_id: str
    local: LocalEndpoint
    kind: str = "audio"
    protocol: str = "RTP/AVP"  # what this party speaks
    config: StreamConfig = field(default_factory=StreamConfig)
    offered_keys: dict[str, sdes.CryptoAttribute] = field(default_factory=dict)  # ours, by suite
    crypto_suite: str = ""
    sdp_address: str = ""


@dataclass
class Party:
    tag: str
    role: Role
    created: float
    label: str = ""
    medias: list[Media] = field(default_factory=list)


@dataclass
class Call:
    call_id: str
    created: float
    last_signal: float
    parties: dict[str, Party] = field(default_factory=dict)
    metadata: str = ""
    digits: int = 0  # count only: the digits themselves never stay here
    caller: str = ""  # per-call override of whose DTMF is masked ("" = the node's setting)
    recording: tuple[str, int] | None = None  # per-call recording tap

    def party(self, role: Role) -> Party | None:
        return next((p for p in self.parties.values() if p.role == role), None)

    def other(self, party: Party) -> Party | None:
        return next((p for p in self.parties.values() if p is not party), None)


DigitSink = Callable[[str, str, DigitEvent], None]  # (call_id, tag, event)


class CallRegistry:
    """All calls of this node and the ng commands that act on them."""

    def __init__(self, engine: MediaEngine, *, address: str, advertised_address: str = "",
                 policy: CallPolicy | None = None, on_digit: DigitSink | None = None,
                 on_call: Callable[[str, bool], None] | None = None,
                 on_securepay: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._address = advertised_address or address
        self._policy = policy or CallPolicy()
        self._on_digit = on_digit
        self._on_call = on_call  # (call id, True when created / False when gone)
        self._on_securepay = on_securepay  # call id → payment sid (ng-started secure pay)
        self._clock = clock
        self.calls: dict[str, Call] = {}
        self._by_stream: dict[str, tuple[str, str]] = {}  # stream id → (call id, tag)
        self.counters: dict[str, int] = {"calls_total": 0, "calls_deleted": 0,
                                         "calls_idle": 0}
        self._idle: list[str] = []
        engine.subscribe(self._on_media_event)

    # --- dispatch --------------------------------------------------------------------------

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        body = ng.normalise(body)  # idempotent: callers other than the ng socket too
        command = body.get("command")
        if not isinstance(command, str) or not command:
            raise ng.NgError('Dictionary contains no key "command"')
        handler = self._handlers.get(command.lower())
        if handler is None:
            raise ng.NgError("Unrecognized command")
        return await handler(self, body)

    async def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"result": "pong"}

    # --- offer / answer --------------------------------------------------------------------

    async def offer(self, body: dict[str, Any]) -> dict[str, Any]:
        call_id = ng.require_str(body, "call-id")
        from_tag = ng.require_str(body, "from-tag")
        sdp = self._parse_sdp(body)
        now = self._clock()
        call = self.calls.get(call_id)
        created = call is None
        if call is None:
            call = Call(call_id, now, now)
            self.calls[call_id] = call
            self.counters["calls_total"] += 1
        call.last_signal = now
        if isinstance(body.get("metadata"), str):
            call.metadata = body["metadata"]
        try:
            self._call_options(call, body)
        except ng.NgError:
            if created:
                del self.calls[call_id]
            raise
        if created and self._on_call is not None:
            self._on_call(call_id, True)
        a = call.parties.get(from_tag)
        if a is None:
            # A re-INVITE from the other side makes the answerer the offerer of this exchange.
            role: Role = "offerer" if not call.parties else "answerer"
            a = Party(from_tag, role, now)
            call.parties[from_tag] = a
        a.label = ng.get_str(body, "label") or ng.get_str(body, "from-label") or a.label
        b = call.other(a)
        if b is None:
            b = Party(PENDING_TAG, "answerer" if a.role == "offerer" else "offerer", now)
            call.parties[PENDING_TAG] = b
        if (to_label := ng.get_str(body, "to-label")) is not None:
            b.label = to_label
        try:
            out = await self._negotiate(call, a, b, sdp, body, offer=True)
        except BaseException:
            if not any(p.medias for p in call.parties.values()):
                await self._drop(call)
            raise
        return {"result": "ok", "sdp": out}

    async def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        call_id = ng.require_str(body, "call-id")
        from_tag = ng.require_str(body, "from-tag")
        to_tag = ng.require_str(body, "to-tag")
        sdp = self._parse_sdp(body)
        call = self._call(call_id)
        call.last_signal = self._clock()
        a = call.parties.get(from_tag)
        if a is None:
            raise ng.NgError("Unknown call-ID or from-tag")
        b = call.parties.get(to_tag) or call.parties.get(PENDING_TAG)
        if b is None:
            raise ng.NgError("Unknown to-tag")
        if b.tag == PENDING_TAG:
            del call.parties[PENDING_TAG]
            b.tag = to_tag
            call.parties[to_tag] = b
            for m in b.medias:
                self._by_stream[m.stream_id] = (call.call_id, to_tag)
        b.label = ng.get_str(body, "to-label") or ng.get_str(body, "label") or b.label
        out = await self._negotiate(call, b, a, sdp, body, offer=False)
        return {"result": "ok", "sdp": out}

    def _call_options(self, call: Call, body: dict[str, Any]) -> None:
        """ToneGuard's per-call keys on an offer: flag ``caller-offerer`` | ``caller-answerer``
        | ``caller-both`` | ``caller-none`` (whose DTMF is masked) and ``recording-tap``
        (``HOST:PORT`` receiving an RTP copy of the masked audio)."""
        for flag in ng.flags(body):
            if flag.startswith("caller-"):
                choice = flag.removeprefix("caller-")
                if choice not in ("offerer", "answerer", "both", "none"):
                    raise ng.NgError(f"Invalid flag '{flag}'")
                call.caller = choice
        tap = ng.get_str(body, "recording-tap")
        if tap:
            host, _, port = tap.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ng.NgError("Invalid recording-tap: expected HOST:PORT")
            call.recording = (host.strip("[]"), int(port))

    def _parse_sdp(self, body: dict[str, Any]) -> SessionDescription:
        text = ng.get_str(body, "sdp")
        if not text:
            raise ng.NgError("No SDP body in message")
        try:
            return parse_sdp(text)
        except SdpError as exc:
            raise ng.NgError(f"Failed to parse SDP: {exc}") from None

    async def _negotiate(self, call: Call, sender: Party, receiver: Party,
                         sdp: SessionDescription, body: dict[str, Any], *, offer: bool) -> str:
        """Take ``sender``'s SDP; configure its streams; return the SDP for ``receiver``."""
        flags = ng.flags(body)
        transport = ng.get_str(body, "transport-protocol")
        sdes_opts = {o.lower() for o in body.get("sdes", [])} | {
            f[len("sdes-"):] for f in flags if f.startswith("sdes-")}
        ice = (ng.get_str(body, "ice") or "").lower()
        if ice not in ("", "remove", "default", "optional", "force", "force-relay"):
            raise ng.NgError(f"Invalid ICE option '{ice}'")
        dtls = (ng.get_str(body, "dtls") or "").lower()
        if dtls in ("passive", "active"):
            raise ng.NgError("DTLS-SRTP is not supported yet (use SDES or plain RTP)")
        trust_address = "trust-address" in flags
        symmetric = "asymmetric" not in flags
        out = parse_sdp(sdp.serialise())  # a deep copy we rewrite for the receiver
        sdp_changed = False
        for index, section in enumerate(sdp.media):
            proto = section.proto
            if "DTLS" in proto or "TLS" in proto:
                raise ng.NgError(f"media {index}: {proto} (DTLS-SRTP) is not supported yet")
            s_media = await self._media(call, sender, index, section)
            r_media = await self._media(call, receiver, index, section)
            if offer:  # an answer leaves the offerer speaking what it offered
                r_media.protocol = transport if transport in SAVP + PLAIN else proto
            await self._engine.link(s_media.stream_id, r_media.stream_id)
            s_media.protocol = proto
            s_media.kind = section.media
            if section.port == 0:
                out.media[index].port = 0  # a rejected/disabled stream stays disabled
                continue
            peer_addr = sdp.media_connection(index) or ""
            received_from = body.get("received-from")
            if (not trust_address and isinstance(received_from, list)
                    and len(received_from) == 2 and "sip-source-address" in flags):
                peer_addr = str(received_from[1])
            s_media.sdp_address = peer_addr
            mux = section.rtcp_mux
            rtcp_port = section.rtcp_port or section.port + 1
            srtp_recv = None
            if proto in SAVP:
                chosen = self._accept_crypto(section, s_media, offer, index)
                srtp_recv = chosen.params
            config = replace(
                s_media.config,
                peer=(peer_addr, section.port),
                rtcp_peer=(peer_addr, section.port if mux else rtcp_port),
                rtcp_mux=mux,
                symmetric=symmetric,
                srtp_recv=srtp_recv,
                srtp_send=s_media.offered_keys[s_media.crypto_suite].params
                if proto in SAVP and s_media.crypto_suite else None,
                codecs=section.codecs(),
                masking=self._masking_for(call, sender, s_media.config.masking),
                recording=call.recording or self._policy.recording,
                label=sender.label,
            )
            s_media.config = config
            try:
                await self._engine.configure(s_media.stream_id, config)
            except MediaError as exc:
                raise ng.NgError(f"media {index}: {exc}") from None
            self._rewrite_section(out.media[index], r_media, section, sdes_opts, offer,
                                  "demux" in {o.lower() for o in body.get("rtcp-mux", [])})
            sdp_changed = True
        out.set_connection(self._address)
        replaces = {r.lower() for r in body.get("replace", [])}
        if "origin" in replaces:
            out.replace_origin(self._address)
        if "sdp-version" in replaces and sdp_changed:
            out.bump_version()
        out.remove_attributes(*ICE_ATTRIBUTES, *DTLS_ATTRIBUTES, "group", "msid-semantic")
        return out.serialise()

    async def _media(self, call: Call, party: Party, index: int,
                     section: MediaSection) -> Media:
        while len(party.medias) <= index:
            i = len(party.medias)
            stream_id = f"{call.call_id}/{party.tag}/{i}"
            # Always a port pair: a=rtcp advertises the odd port as a fallback, and rtcp-mux,
            # when negotiated, is demultiplexed on the RTP port.
            try:
                local = await self._engine.allocate(stream_id, call.call_id, rtcp_mux=False)
            except PortsExhaustedError as exc:
                log.error("cannot allocate media", call_id=call.call_id, reason=str(exc))
                raise ng.NgError("Ran out of ports") from None
            party.medias.append(Media(i, stream_id, local))
            self._by_stream[stream_id] = (call.call_id, party.tag)
        return party.medias[index]

    def _accept_crypto(self, section: MediaSection, media: Media, offer: bool,
                       index: int) -> sdes.CryptoAttribute:
        try:
            theirs = sdes.offered(section.attributes("crypto"))
        except sdes.SdesError as exc:
            raise ng.NgError(f"media {index}: {exc}") from None
        if not theirs:
            raise ng.NgError(f"media {index}: {section.proto} without a supported a=crypto "
                             f"suite ({', '.join(SRTP_SUITES)})")
        if offer:
            chosen = theirs[0]  # the offerer's preference that we support
            ours = sdes.generate(chosen.suite, chosen.tag)
            media.offered_keys = {chosen.suite: ours}
        else:
            # The answerer picked one of the suites we offered, under its tag number.
            chosen = theirs[0]
            if chosen.suite not in media.offered_keys:
                raise ng.NgError(f"media {index}: answer chose {chosen.suite}, not offered")
        media.crypto_suite = chosen.suite
        return chosen

    def _rewrite_section(self, out: MediaSection, facing: Media, section: MediaSection,
                         sdes_opts: set[str], offer: bool, demux: bool) -> None:
        """Make ``out`` (a copy of the sender's section) advertise ``facing``'s stream."""
        out.port = facing.local.rtp_port
        out.proto = facing.protocol
        out.remove_attributes("crypto", "rtcp", *ICE_ATTRIBUTES, *DTLS_ATTRIBUTES)
        # Offer rtcp-mux onward if the offerer wanted it; answer it if the offerer offered it.
        mux = section.rtcp_mux and not demux if offer else facing.config.rtcp_mux
        out.remove_attributes("rtcp-mux")
        out.add_attribute("rtcp", str(facing.local.rtcp_port))
        if mux:
            out.add_attribute("rtcp-mux")
        if facing.protocol in SAVP and "off" not in sdes_opts:
            if offer:
                suites = [s for s in SRTP_SUITES if f"no-{s.lower()}" not in sdes_opts]
                if not suites:
                    raise ng.NgError("SDES: every supported suite was excluded")
                facing.offered_keys = {s: sdes.generate(s, i + 1) for i, s in enumerate(suites)}
                for key in facing.offered_keys.values():
                    out.add_attribute("crypto", key.format())
            else:
                # Answer to the offerer: our key for the suite it offered first, its tag.
                key = facing.offered_keys.get(facing.crypto_suite)
                if key is not None:
                    out.add_attribute("crypto", key.format())

    def _masking_for(self, call: Call, party: Party,
                     current: MaskingPolicy | None) -> MaskingPolicy | None:
        if current is not None:
            return current  # a live block/unblock decision survives re-INVITEs
        caller = call.caller or self._policy.caller
        protected = caller in ("both", party.role)
        if not protected:
            return None
        if self._policy.always_on:
            return self._policy.masking
        return replace(self._policy.masking, masked=False)  # detect, count, don't mask yet

    # --- delete / query / list / statistics ------------------------------------------------

    def _call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise ng.NgError("Unknown call-ID")
        return call

    async def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        call_id = ng.require_str(body, "call-id")
        call = self.calls.get(call_id)
        if call is None:
            if "fatal" in ng.flags(body):
                raise ng.NgError("Call-ID not found or tags didn't match")
            return {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
        reply = await self._query_reply(call)
        await self._drop(call)
        self.counters["calls_deleted"] += 1
        return reply

    async def _drop(self, call: Call) -> None:
        for party in call.parties.values():
            for m in party.medias:
                await self._engine.release(m.stream_id)
                self._by_stream.pop(m.stream_id, None)
        if self.calls.pop(call.call_id, None) is not None and self._on_call is not None:
            self._on_call(call.call_id, False)

    async def query(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._query_reply(self._call(ng.require_str(body, "call-id")))

    async def _query_reply(self, call: Call) -> dict[str, Any]:
        totals = {"RTP": {"packets": 0, "bytes": 0, "errors": 0},
                  "RTCP": {"packets": 0, "bytes": 0, "errors": 0}}
        tags: dict[str, Any] = {}
        for party in call.parties.values():
            other = call.other(party)
            medias = []
            for m in party.medias:
                st = await self._engine.stats(m.stream_id)
                totals["RTP"]["packets"] += st.packets_in
                totals["RTP"]["bytes"] += st.bytes_in
                totals["RTP"]["errors"] += st.errors
                totals["RTCP"]["packets"] += st.rtcp_in
                endpoint = st.endpoint or m.config.peer
                medias.append({
                    "index": m.index + 1,
                    "type": m.kind,
                    "protocol": m.protocol,
                    "streams": [{
                        "local port": m.local.rtp_port,
                        "endpoint": _endpoint(endpoint),
                        "advertised endpoint": _endpoint(m.config.peer),
                        "crypto suite": m.crypto_suite,
                        "last packet": int(st.last_packet),
                        "stats": {"packets": st.packets_in, "bytes": st.bytes_in,
                                  "errors": st.errors},
                        "sent": {"packets": st.packets_out, "bytes": st.bytes_out},
                        "dtmf masked": st.dtmf_masked,
                    }],
                    "flags": ["masked"] if m.config.masking and m.config.masking.effective
                    else [],
                })
            tags[party.tag] = {
                "tag": party.tag, "label": party.label, "created": int(party.created),
                "in dialogue with": other.tag if other else "", "medias": medias,
            }
        reply: dict[str, Any] = {
            "result": "ok", "created": int(call.created), "created_us": int(call.created * 1e6),
            "last signal": int(call.last_signal), "tags": tags, "totals": totals,
            "dtmf": {"digits": call.digits},
        }
        if call.metadata:
            reply["metadata"] = call.metadata
        return reply

    async def list_calls(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = ng.get_int(body, "limit", 32) or 32
        return {"result": "ok", "calls": list(self.calls)[:limit]}

    async def statistics(self, body: dict[str, Any]) -> dict[str, Any]:
        totals = await self._engine.totals()
        streams = sum(len(p.medias) for c in self.calls.values() for p in c.parties.values())
        return {"result": "ok", "statistics": {
            "currentstatistics": {"sessionsown": len(self.calls), "sessionstotal": len(self.calls),
                                  "streams": streams, "packetrate": 0},
            "totalstatistics": {"totalsessions": self.counters["calls_total"],
                                "deletedsessions": self.counters["calls_deleted"],
                                "timeoutsessions": self.counters["calls_idle"],
                                "packets": totals.packets_in,
                                "bytes": totals.bytes_in,
                                "errors": totals.errors,
                                "dtmfmasked": totals.dtmf_masked},
            "controlstatistics": {"proxies": []},
        }}

    # --- block / unblock DTMF --------------------------------------------------------------

    async def block_dtmf(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_dtmf(body, block=True)

    async def unblock_dtmf(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_dtmf(body, block=False)

    def _select(self, call: Call, body: dict[str, Any]) -> list[Party]:
        if "all" in ng.flags(body):
            return list(call.parties.values())
        label = ng.get_str(body, "label")
        if label:
            chosen = [p for p in call.parties.values() if p.label == label]
            if not chosen:
                raise ng.NgError(f"No participant with label '{label}'")
            return chosen
        address = ng.get_str(body, "address")
        if address:
            chosen = [p for p in call.parties.values()
                      if any(m.sdp_address == address for m in p.medias)]
            if not chosen:
                raise ng.NgError(f"No participant with address '{address}'")
            return chosen
        for key in ("from-tag", "to-tag"):
            tag = ng.get_str(body, key)
            if tag:
                if tag not in call.parties:
                    raise ng.NgError(f"Unknown {key}")
                return [call.parties[tag]]
        return list(call.parties.values())

    async def _set_dtmf(self, body: dict[str, Any], *, block: bool) -> dict[str, Any]:
        call = self._call(ng.require_str(body, "call-id"))
        parties = self._select(call, body)
        base = self._policy.masking
        mode_text = ng.get_str(body, "dtmf-security")
        try:
            mode = DtmfSecurityMode.parse(mode_text) if mode_text else None
        except ValueError as exc:
            raise ng.NgError(str(exc)) from None
        frequency = ng.get_float(body, "frequency")
        volume = ng.get_float(body, "volume")
        digit = ng.get_str(body, "digit") or ng.get_str(body, "code")
        if digit is not None and (len(digit) != 1 or digit not in "0123456789*#ABCD"):
            raise ng.NgError(f"Invalid digit '{digit}'")
        if frequency is not None and not 50 <= frequency <= 3900:
            raise ng.NgError("Invalid frequency: must be 50-3900 Hz")
        for party in parties:
            for m in party.medias:
                current = m.config.masking or base
                if block:
                    if mode is None:  # keep the party's mode; "off" would mask nothing
                        mode = (current.mode if current.mode is not DtmfSecurityMode.OFF
                                else base.mode)
                    policy = current.with_mode(mode)
                    policy = replace(
                        policy, masked=True,
                        tone_frequency_hz=frequency or policy.tone_frequency_hz,
                        volume_dbm0=-abs(volume) if volume is not None else policy.volume_dbm0,
                        digit=digit or policy.digit)
                else:
                    policy = replace(current, masked=False)
                m.config = replace(m.config, masking=policy)
                try:
                    await self._engine.configure(m.stream_id, m.config)
                except MediaError as exc:
                    raise ng.NgError(str(exc)) from None
        log.info("dtmf policy changed", call_id=call.call_id, blocked=block,
                 parties=[p.tag for p in parties])
        reply: dict[str, Any] = {"result": "ok"}
        # ToneGuard's own key: `block DTMF` with `secure-pay=start` also opens a payment.
        if block and (ng.get_str(body, "secure-pay") or "").lower() in ("start", "yes", "on"):
            if self._on_securepay is None:
                raise ng.NgError("secure-pay is not available on this node")
            try:
                reply["secure-pay-sid"] = self._on_securepay(call.call_id)
            except LookupError as exc:
                raise ng.NgError(f"secure-pay: {exc}") from None
        return reply

    # --- media events ----------------------------------------------------------------------

    def _on_media_event(self, event: MediaEvent) -> None:
        owner = self._by_stream.get(event.stream_id)
        if owner is None:
            return
        call_id, tag = owner
        call = self.calls.get(call_id)
        if call is None:
            return
        if isinstance(event, DigitEvent):
            call.digits += 1
            if self._on_digit is not None:
                self._on_digit(call_id, tag, event)
        elif isinstance(event, IdleEvent) and call_id not in self._idle:
            self._idle.append(call_id)

    async def reap_idle(self) -> list[str]:
        """Delete calls whose media went idle (called periodically by the server)."""
        reaped = []
        while self._idle:
            call_id = self._idle.pop()
            call = self.calls.get(call_id)
            if call is not None:
                await self._drop(call)
                self.counters["calls_idle"] += 1
                reaped.append(call_id)
                log.info("call deleted: media idle", call_id=call_id)
        return reaped

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await self._drop(call)

    _handlers: ClassVar[dict[str, Callable[..., Any]]] = {
        "ping": ping, "offer": offer, "answer": answer, "delete": delete, "query": query,
        "list": list_calls, "statistics": statistics, "block dtmf": block_dtmf,
        "unblock dtmf": unblock_dtmf,
    }


def _endpoint(addr: tuple[str, int] | None) -> dict[str, Any]:
    if addr is None:
        return {}
    return {"family": "IPv6" if ":" in addr[0] else "IPv4", "address": addr[0], "port": addr[1]}
