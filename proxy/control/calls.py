"""Calls, parties and one handler per ng command, sans-IO over a MediaEngine.

An offer from party A (``from-tag``) creates, per media section, a stream facing A and a stream
facing B, linked; the SDP returned (for B) advertises B's stream, the answer's SDP (for A)
advertises A's. SRTP is terminated per leg (:mod:`proxy.control.keying`). Stream ids are
``call-id/tag/index`` (B's tag is ``"~"`` until the answer names it).

Handlers take typed requests (:mod:`proxy.control.requests`); replies are shaped by
:mod:`proxy.control.replies`; whose DTMF is masked is decided by :mod:`proxy.control.customer`
and applied to every audio stream of the call whenever anything it depends on changes
(negotiation, ``block DTMF``/``unblock DTMF``, a secure-pay capture starting or ending).
Digits the media plane reports are passed to ``on_digit`` (the secure-pay manager), never logged.

A call has two offer/answer parties (a third tag in plain offer/answer is refused) and any
number of *subscriptions* (``subscribe request``/``subscribe answer``/``unsubscribe``, e.g. a
supervisor): listen-only parties whose streams are extra outputs of a party's stream, so they
get exactly the (masked) packets its dialogue partner gets. A re-negotiation that moves the
contact centre's media, or names an agent in ``metadata``, is reported to ``on_renegotiated``
(the payment manager moves or cancels an open payment).
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog

from proxy.control import ng
from proxy.control.customer import CallPolicy, Decision, decide, party_masking
from proxy.control.dtls_leg import WEBRTC_PROTOCOLS, DtlsLeg, has_ice
from proxy.control.keying import SdesLeg, offered_keys
from proxy.control.replies import query_reply, statistics_reply
from proxy.control.requests import (
    STATE_CHANGING,
    DeleteRequest,
    DtmfRequest,
    ListRequest,
    NegotiateRequest,
    PingRequest,
    QueryRequest,
    Request,
    StatisticsRequest,
    SubscribeAnswerRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    parse_request,
)
from proxy.control.sdp import (
    DTLS_ATTRIBUTES,
    ICE_ATTRIBUTES,
    MediaSection,
    SessionDescription,
)
from proxy.control.sdp import parse as parse_sdp
from proxy.media.dtls import NodeCertificate
from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.types import (
    Address,
    DigitEvent,
    DtlsKeyedEvent,
    IdleEvent,
    LatchedEvent,
    LocalEndpoint,
    MediaEngine,
    MediaError,
    MediaEvent,
    PortsExhaustedError,
    RestoredStream,
    SrtpIndex,
    SrtpIndexEvent,
    SrtpParams,
    StreamConfig,
)

__all__ = ["PENDING_TAG", "Call", "CallCounters", "CallLimits", "CallPolicy", "CallRegistry",
           "DigitSink", "LatchingDefaults", "Media", "Party"]

log = structlog.get_logger("toneguard.calls")
PENDING_TAG = "~"
SAVP = ("RTP/SAVP", "RTP/SAVPF")
PLAIN = ("RTP/AVP", "RTP/AVPF")
# What the masking pipeline can look inside (proxy.media.masking): G.711, RFC 4733 events, and
# comfort noise (which cannot carry a tone). Offers toward a call whose DTMF is masked are cut
# down to these, so the answer cannot pick a codec whose packets would have to be dropped.
INSPECTABLE = frozenset({"PCMU", "PCMA", "telephone-event", "CN"})
Role = Literal["offerer", "answerer"]


@dataclass
class Media:
    index: int
    stream_id: str
    local: LocalEndpoint
    kind: str = "audio"
    protocol: str = "RTP/AVP"  # what this party speaks
    config: StreamConfig = field(default_factory=StreamConfig)
    keys: SdesLeg = field(default_factory=SdesLeg)
    webrtc: DtlsLeg = field(default_factory=DtlsLeg)  # used when ``protocol`` is UDP/TLS/...
    mux_required: bool = False  # ng rtcp-mux=require when this stream was offered
    sdp_address: str = ""
    section: MediaSection | None = None  # what this party last sent (a subscription mirrors it)
    remote: Address | None = None  # the last specified SDP address and port (moves are noticed)
    source: str = ""  # a subscription's media: the stream whose output it gets
    # Where each SRTP direction's index stood when the engine last reported it (written to
    # the store: a restart continues from there, past 65 536 packets too).
    recv_index: SrtpIndex | None = None
    send_index: SrtpIndex | None = None
    # A WebRTC leg's keys from its verified DTLS handshake (recv, send) and the peer's
    # address then: a restart resumes the leg from them (stored sealed), as browsers expect.
    dtls_keys: tuple[SrtpParams, SrtpParams] | None = None
    latched: Address | None = None


@dataclass
class Party:
    tag: str
    role: Role
    created: float
    label: str = ""
    source_address: str = ""  # SIP source (``received-from``), for customer networks
    medias: list[Media] = field(default_factory=list)
    dtmf: MaskingPolicy | None = None  # the last block/unblock DTMF decision; None = default
    subscriber: bool = False  # created by ``subscribe request``: receives copies, sends nothing
    final: bool = False  # answered by a final response (``SIP code`` >= 200): tag fixed

    @property
    def addresses(self) -> list[str]:
        found = [m.sdp_address for m in self.medias if m.sdp_address]
        return [*found, self.source_address] if self.source_address else found


@dataclass
class Call:
    call_id: str
    created: float
    last_signal: float
    parties: dict[str, Party] = field(default_factory=dict)
    metadata: str = ""
    digits: int = 0  # count only: the digits themselves never stay here
    caller: str = ""  # the call's ``caller-*`` flag ("" = decided by labels/networks/config)
    recording: tuple[str, int] | None = None  # per-call recording tap
    capturing: bool = False  # a secure-pay session of this call is capturing digits
    masking_reason: str = ""  # which rule chose the customers (logged when it changes)
    # To-tags of forked branches whose answer a later branch's answer replaced: their dialogs
    # are not the one the call follows, so a ``delete`` naming one leaves the media alone.
    # (In the store's record too: a call restored mid-ring still knows them.)
    branches: set[str] = field(default_factory=set)

    @property
    def dialogue(self) -> list[Party]:
        """The offer/answer parties (the customer and the contact centre's leg): who is masked
        is decided among these only, so a subscriber's label or address cannot change it."""
        return [p for p in self.parties.values() if not p.subscriber]

    def party(self, role: Role) -> Party | None:
        return next((p for p in self.dialogue if p.role == role), None)

    def other(self, party: Party) -> Party | None:
        return next((p for p in self.dialogue if p is not party), None)


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What one call may take of the node (config [ng])."""

    max_media_per_offer: int = 8
    max_parties: int = 4


@dataclass(frozen=True, slots=True)
class LatchingDefaults:
    """How streams learn their remote endpoint (config [media]; ng flags per offer/answer)."""

    learn_any_source: bool = False
    learning_window: float = 5.0


@dataclass(slots=True)
class CallCounters:
    created: int = 0
    deleted: int = 0
    idle: int = 0


DigitSink = Callable[[str, str, DigitEvent], None]  # (call_id, tag, event)
# (call id, the ``metadata`` of this message or None, whether a leg's media moved): after a
# re-negotiation of an existing call, for whoever tracks the agent a call is assigned to.
LegHook = Callable[[str, str | None, bool], None]


class CallRegistry:
    """All calls of this node and the ng commands that act on them."""

    def __init__(self, engine: MediaEngine, *, address: str, advertised_address: str = "",
                 policy: CallPolicy | None = None, on_digit: DigitSink | None = None,
                 on_call: Callable[[str, bool], None] | None = None,
                 on_securepay: Callable[[str], str] | None = None,
                 on_renegotiated: LegHook | None = None,
                 limits: CallLimits | None = None,
                 latching: LatchingDefaults | None = None,
                 certificate: NodeCertificate | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._address = advertised_address or address
        # Calls adopted on another node's media address (proxy/store/takeover.py): call id →
        # the address their SDP keeps advertising (a re-offer must not move their media).
        self.addresses: dict[str, str] = {}
        self._policy = policy or CallPolicy()
        self._on_digit = on_digit
        self._on_call = on_call  # (call id, True when created / False when gone)
        self._on_securepay = on_securepay  # call id → payment sid (ng-started secure pay)
        self._on_renegotiated = on_renegotiated
        self._clock = clock
        self._limits = limits or CallLimits()
        self._latching = latching or LatchingDefaults()
        self._certificate = certificate  # the node's DTLS certificate (made when first needed)
        self.calls: dict[str, Call] = {}
        self._by_stream: dict[str, tuple[str, str]] = {}  # stream id → (call id, tag)
        self.counters = CallCounters()
        self._idle: list[str] = []
        self._dropping: set[str] = set()  # call ids whose streams are being released
        # Told the id of a call whose state changed (proxy.store writes it later, off this path).
        self.on_state: Callable[[str], None] | None = None
        engine.subscribe(self._on_media_event)

    @property
    def engine(self) -> MediaEngine:
        return self._engine

    @property
    def certificate(self) -> NodeCertificate:
        if self._certificate is None:
            self._certificate = NodeCertificate.generate()
        return self._certificate

    def use_certificate(self, certificate: NodeCertificate) -> None:
        """The node set's certificate from the shared store (before any call is restored or
        offered): the same fingerprint across restarts, so a browser's re-offer still matches."""
        self._certificate = certificate

    # --- dispatch --------------------------------------------------------------------------

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        """One ng message (a dictionary, any key spelling) → its reply dictionary."""
        return await self.dispatch(parse_request(ng.normalise(body)))

    async def dispatch(self, request: Request) -> dict[str, Any]:
        try:
            return await self._dispatch(request)
        finally:
            if self.on_state is not None and isinstance(request, STATE_CHANGING):
                self.on_state(request.call_id)

    async def _dispatch(self, request: Request) -> dict[str, Any]:
        match request:
            case PingRequest():
                return {"result": "pong"}
            case NegotiateRequest(command="offer"):
                return await self.offer(request)
            case NegotiateRequest():
                return await self.answer(request)
            case DeleteRequest():
                return await self.delete(request)
            case QueryRequest():
                return await self.query(request)
            case ListRequest():
                return await self.list_calls(request)
            case StatisticsRequest():
                return await self.statistics(request)
            case DtmfRequest():
                return await self.set_dtmf(request)
            case SubscribeRequest():
                return await self.subscribe_request(request)
            case SubscribeAnswerRequest():
                return await self.subscribe_answer(request)
            case UnsubscribeRequest():
                return await self.unsubscribe(request)

    # --- offer / answer --------------------------------------------------------------------

    async def offer(self, req: NegotiateRequest) -> dict[str, Any]:
        if len(req.sdp.media) > self._limits.max_media_per_offer:
            raise ng.NgError(f"Too many media sections ({len(req.sdp.media)} > "
                             f"{self._limits.max_media_per_offer})")
        now = self._clock()
        call = self.calls.get(req.call_id)
        if call is not None:
            _refuse_third_party(call, req.from_tag)
        created = call is None
        if call is None:
            call = Call(req.call_id, now, now)
            self.calls[req.call_id] = call
            self.counters.created += 1
            log.info("call created", call_id=req.call_id, from_tag=req.from_tag)
        call.last_signal = now
        if req.metadata is not None:
            call.metadata = req.metadata
        if req.caller is not None:
            call.caller = req.caller
        if req.recording_tap is not None:
            call.recording = req.recording_tap
        before = self._centre_remotes(call)
        if created and self._on_call is not None:
            self._on_call(req.call_id, True)
        a = call.parties.get(req.from_tag)
        if a is not None:
            log.info("call re-offered", call_id=call.call_id, from_tag=a.tag)
        if a is None:
            # A re-INVITE from the other side makes the answerer the offerer of this exchange.
            role: Role = "offerer" if not call.parties else "answerer"
            a = Party(req.from_tag, role, now)
            call.parties[req.from_tag] = a
        a.label = req.label or req.from_label or a.label
        a.source_address = req.received_from or a.source_address
        b = call.other(a)
        if b is None:
            b = Party(PENDING_TAG, "answerer" if a.role == "offerer" else "offerer", now)
            call.parties[PENDING_TAG] = b
        if req.to_label is not None:
            b.label = req.to_label
        try:
            out = await self._negotiate(call, a, b, req, offer=True)
        except BaseException:
            if created or not any(p.medias for p in call.parties.values()):
                await self._drop(call)  # a failed first offer leaves nothing behind
            raise
        if not created:
            self._renegotiated(call, req, before)
        return {"result": "ok", "sdp": out}

    async def answer(self, req: NegotiateRequest) -> dict[str, Any]:
        call = self._call(req.call_id)
        call.last_signal = self._clock()
        a = call.parties.get(req.from_tag)
        if a is None:
            raise ng.NgError("Unknown call-ID or from-tag")
        if a.subscriber:
            raise ng.NgError(f"from-tag '{a.tag}' is a subscription: use 'subscribe answer'")
        _check_sections(req.sdp, cut_codecs=False)  # a refused answer must not even retag
        b = call.parties.get(req.to_tag) or call.parties.get(PENDING_TAG)
        if b is not None and b.subscriber:
            raise ng.NgError(f"to-tag '{b.tag}' is a subscription: use 'subscribe answer'")
        before = self._centre_remotes(call)
        branch_replaced = False
        if b is None:
            # A forked INVITE: another branch answers (a 183 from one phone, the 200 from
            # another). Every branch was offered the same ports, so the streams stay; the
            # latest answer says where to send — the branch that answered last wins.
            b = call.other(a)
            if b is None:
                raise ng.NgError("Unknown to-tag")
            if b.final:
                # After a final answer another to-tag is a second party, not a branch (as in
                # rtpengine). It was offered the first party's ports, so its media cannot be
                # told apart: taking it would cut the party that answered. Nothing changes.
                raise ng.NgError(
                    f"Call already answered by to-tag '{b.tag}': a second party cannot "
                    "answer the same offer (a supervisor joins with 'subscribe request'; "
                    "flag early answers 'provisional' or omit 'SIP code' for forked calls)")
            log.info("forked call: another branch answered", call_id=call.call_id,
                     replaced_tag=b.tag, to_tag=req.to_tag)
            # Another phone takes the leg a branch had (with media): a change of agent.
            branch_replaced = any(m.remote is not None for m in b.medias)
            call.branches.add(b.tag)
        call.branches.discard(req.to_tag)  # (a replaced branch answering again is followed)
        if b.tag != req.to_tag:
            self._retag(call, b, req.to_tag)
        b.label = req.to_label or req.label or b.label
        b.source_address = req.received_from or b.source_address
        b.final = b.final or req.final
        out = await self._negotiate(call, b, a, req, offer=False)
        log.info("call answered", call_id=call.call_id, from_tag=a.tag, to_tag=b.tag)
        self._renegotiated(call, req, before, branch_replaced=branch_replaced)
        return {"result": "ok", "sdp": out}

    def _centre_remotes(self, call: Call) -> dict[tuple[int, int], Address]:
        """Where the contact centre's media goes, per (party, medium), to compare after a
        negotiation: the parties that are not the customer — every party when the decision
        could not tell (then a customer's new address counts too: fail safe)."""
        parties = call.dialogue
        customers = decide(parties, call.caller, self._policy).customers
        centre = [p for i, p in enumerate(parties) if i not in customers] or parties
        return {(id(p), m.index): m.remote for p in centre for m in p.medias
                if m.remote is not None}

    def _renegotiated(self, call: Call, req: NegotiateRequest,
                      before: dict[tuple[int, int], Address], *,
                      branch_replaced: bool = False) -> None:
        """Tell the payment side that an existing call was re-negotiated, whether the contact
        centre's leg moved (a medium that had a remote address now has another: a transfer by
        re-INVITE; another branch answering) and which agent, if the message names one."""
        after = self._centre_remotes(call)
        moved = branch_replaced or any(
            key in after and after[key] != remote for key, remote in before.items())
        if moved:
            log.info("call leg moved", call_id=call.call_id)
        if self._on_renegotiated is not None and (moved or req.metadata is not None):
            self._on_renegotiated(call.call_id, req.metadata, moved)

    def _retag(self, call: Call, party: Party, tag: str) -> None:
        del call.parties[party.tag]
        party.tag = tag
        call.parties[tag] = party
        for m in party.medias:
            self._by_stream[m.stream_id] = (call.call_id, tag)

    async def _negotiate(self, call: Call, sender: Party, receiver: Party,
                         req: NegotiateRequest, *, offer: bool) -> str:
        """Take ``sender``'s SDP; configure its streams; return the SDP for ``receiver``."""
        sdp = req.sdp
        cut_codecs = offer and self._masks_anyone(call)
        _check_sections(sdp, cut_codecs)  # before anything changes: a refused re-offer
        # leaves the call as it was
        out = parse_sdp(sdp.serialise())  # a deep copy we rewrite for the receiver
        sdp_changed = False
        for index, section in enumerate(sdp.media):
            proto = section.proto.upper()
            s_media = await self._media(call, sender, index)
            r_media = await self._media(call, receiver, index)
            if offer:  # an answer leaves the offerer speaking what it offered
                transport = (req.transport_protocol or "").upper()
                r_media.protocol = (transport if transport in SAVP + PLAIN + WEBRTC_PROTOCOLS
                                    else proto)
                if r_media.protocol in WEBRTC_PROTOCOLS and req.dtls == "off":
                    raise ng.NgError(f"media {index}: DTLS=off with {r_media.protocol}")
                r_media.mux_required = "require" in req.rtcp_mux
            await self._engine.link(s_media.stream_id, r_media.stream_id)
            s_media.protocol = proto
            s_media.kind = section.media.lower()
            if section.port == 0:
                out.media[index].port = 0  # a rejected/disabled stream stays disabled
                continue
            peer_addr = req.peer_address_override or sdp.media_connection(index) or ""
            s_media.sdp_address = peer_addr
            s_media.section = section
            if _specified(peer_addr):  # a hold to 0.0.0.0 is not a move
                s_media.remote = (peer_addr, section.port)
            srtp_recv = (s_media.keys.accept(section, offer=offer, index=index)
                         if proto in SAVP else None)
            webrtc = proto in WEBRTC_PROTOCOLS
            if webrtc:
                s_media.webrtc.accept(section, sdp, offer=offer, index=index)
                if offer:  # ICE back toward the offerer if it offered ICE (an offer's
                    # ICE key is about the SDP going onward; the answer's about this one)
                    s_media.webrtc.ice = has_ice(section, sdp)
            rtcp_mux = section.rtcp_mux or s_media.mux_required
            rtcp_port = section.rtcp_port or section.port + 1
            s_media.config = replace(
                s_media.config,
                peer=(peer_addr, section.port),
                rtcp_peer=(peer_addr, section.port if rtcp_mux else rtcp_port),
                rtcp_mux=rtcp_mux,
                symmetric=req.symmetric,
                media_handover=req.media_handover,
                learn_any_source=req.learn_any_source or self._latching.learn_any_source,
                learning_window=self._latching.learning_window,
                srtp_recv=srtp_recv,
                srtp_send=s_media.keys.send if proto in SAVP else None,
                codecs=section.codecs(),
                recording=call.recording or self._policy.recording,
                label=sender.label,
                dtls=s_media.webrtc.dtls_params(self.certificate) if webrtc else None,
                ice=s_media.webrtc.ice_params() if webrtc else None,
            )
            self._rewrite_section(out.media[index], r_media, section, req, offer=offer,
                                  address=self._advertised(call))
            if cut_codecs and s_media.kind == "audio":
                _keep_inspectable(out.media[index], index)
            sdp_changed = True
        await self._apply_masking(call)  # also configures the streams set up above
        out.set_connection(self._advertised(call))
        if "origin" in req.replace:
            out.replace_origin(self._advertised(call))
        if "sdp-version" in req.replace and sdp_changed:
            out.bump_version()
        out.remove_attributes(*ICE_ATTRIBUTES, *DTLS_ATTRIBUTES, "group", "msid-semantic")
        _session_webrtc_lines(out, receiver)
        return out.serialise()

    async def _media(self, call: Call, party: Party, index: int) -> Media:
        while len(party.medias) <= index:
            i = len(party.medias)
            stream_id = f"{call.call_id}/{party.tag}/{i}"
            # A retagged party keeps its ids (a fork's winner has ``~`` ones): a later party
            # under the old tag (a subscription) must not get — and release — the same stream.
            n = 1
            while stream_id in self._by_stream:
                n += 1
                stream_id = f"{call.call_id}/{party.tag}/{i}.{n}"
            # Always a port pair: a=rtcp advertises the odd port as a fallback, and rtcp-mux,
            # when negotiated, is demultiplexed on the RTP port.
            try:
                local = await self._engine.allocate(stream_id, call.call_id, rtcp_mux=False)
            except PortsExhaustedError as exc:
                log.error("cannot allocate media", call_id=call.call_id, reason=str(exc))
                raise ng.NgError("Ran out of ports") from exc
            party.medias.append(Media(i, stream_id, local))
            self._by_stream[stream_id] = (call.call_id, party.tag)
        return party.medias[index]

    def _rewrite_section(self, out: MediaSection, facing: Media, section: MediaSection,
                         req: NegotiateRequest, *, offer: bool, address: str) -> None:
        """Make ``out`` (a copy of the sender's section) advertise ``facing``'s stream."""
        out.port = facing.local.rtp_port
        out.proto = facing.protocol
        webrtc = facing.protocol in WEBRTC_PROTOCOLS
        out.remove_attributes("crypto", "rtcp", *ICE_ATTRIBUTES, *DTLS_ATTRIBUTES)
        if not facing.protocol.endswith("F"):  # AVPF feedback means nothing to an AVP party
            out.remove_attributes("rtcp-fb", "rtcp-rsize")
        if offer:
            # Offer rtcp-mux onward if the offerer wanted it (not with ``demux``), if ng
            # ``offer``/``require`` asks, and always toward WebRTC (RFC 8834 §4.5 needs it).
            mux = (section.rtcp_mux and not req.demux_rtcp) or webrtc or bool(
                {"offer", "require"} & req.rtcp_mux)
        else:  # answer it if the offerer offered it (``reject``: no)
            mux = facing.config.rtcp_mux and "reject" not in req.rtcp_mux
            if not mux and facing.config.rtcp_mux:
                facing.config = replace(facing.config, rtcp_mux=False, rtcp_peer=(
                    facing.config.peer[0], facing.config.peer[1] + 1)
                    if facing.config.peer else None)
        out.remove_attributes("rtcp-mux")
        required = offer and facing.mux_required
        out.add_attribute("rtcp", str(facing.local.rtp_port if required
                                      else facing.local.rtcp_port))
        if mux:
            out.add_attribute("rtcp-mux")
        if webrtc or req.generate_mid:
            mid = (section.attributes("mid") or [facing.webrtc.their_mid or str(facing.index)])
            out.remove_attributes("mid")
            out.add_attribute("mid", mid[0] if offer else facing.webrtc.their_mid or mid[0])
        if facing.protocol in SAVP:
            facing.keys.advertise(out, offer=offer, options=req.sdes)
        elif webrtc:
            # ICE toward a WebRTC answerer unless ICE=remove (browsers need it); toward a
            # WebRTC offerer if it offered ICE.
            ice = req.ice != "remove" and (offer or facing.webrtc.ice)
            facing.webrtc.advertise(out, offer=offer, mode=req.dtls, ice=ice,
                                    local=facing.local, address=address,
                                    certificate=self.certificate,
                                    hash_name=req.dtls_fingerprint)
            if "trickle-ice" in req.flags:
                out.add_attribute("ice-options", "trickle")
            # The stream facing this party: ICE answered and DTLS gated from now on (the
            # browser may check and hello before its answer reaches us).
            facing.config = replace(facing.config,
                                    dtls=facing.webrtc.dtls_params(self.certificate),
                                    ice=facing.webrtc.ice_params())

    # --- whose DTMF is masked --------------------------------------------------------------

    def _decide(self, call: Call) -> Decision:
        """Who the customers are (:func:`proxy.control.customer.decide`) — and while a payment
        captures on a call where no party is one (``caller-none``, node ``caller = "none"``),
        every party: a capture masks whoever keys, whatever else was said (fail closed)."""
        decision = decide(call.dialogue, call.caller, self._policy)
        if call.capturing and not decision.customers:
            return Decision(frozenset(range(len(call.dialogue))),
                            f"{decision.reason}; capturing: every party masked")
        return decision

    def _masks_anyone(self, call: Call) -> bool:
        return bool(self._decide(call).customers)

    async def _apply_masking(self, call: Call) -> None:
        """Give every stream of the call its masking policy and configure it in the engine.
        (A subscription's streams relay nothing they receive: they are configured once, by
        ``subscribe answer``, and get copies of masked packets only.)"""
        parties = call.dialogue
        decision = self._decide(call)
        if decision.reason != call.masking_reason:
            call.masking_reason = decision.reason
            log.info("dtmf masking decided", call_id=call.call_id, rule=decision.reason,
                     masked_tags=sorted(parties[i].tag for i in decision.customers))
        for i, party in enumerate(parties):
            policy = party_masking(customer=i in decision.customers, live=party.dtmf,
                                   capturing=call.capturing, policy=self._policy)
            for m in party.medias:
                config = replace(m.config, masking=policy if m.kind == "audio" else None)
                m.config = config
                try:
                    await self._engine.configure(m.stream_id, config)
                except MediaError as exc:
                    raise ng.NgError(f"media {m.index}: {exc}") from exc

    def capture_changed(self, call_id: str, capturing: bool) -> asyncio.Task[None] | None:
        """A secure-pay session of the call started (or stopped) capturing digits: the
        customers' DTMF is masked whatever ``unblock DTMF`` or the policy said.

        Synchronous, for the payment manager's hook: the call is marked at once (so an
        ``unblock DTMF`` is refused from now on) and a LookupError refuses a capture on a call
        this node does not have; the streams are reconfigured by the task returned (masking
        applies to audio still held in the look-ahead, so the switch is not late for it).
        """
        call = self.calls.get(call_id)
        if call is None:
            if capturing:
                raise LookupError(f"no call {call_id!r} on this node")
            return None
        if call.capturing == capturing:
            return None
        call.capturing = capturing
        log.info("secure-pay capture masking", call_id=call_id, capturing=capturing)
        task = asyncio.get_running_loop().create_task(self._capture_masking(call),
                                                      name=f"capture-masking {call_id}")
        task.add_done_callback(_log_failure)
        return task

    def _gone(self, call: Call) -> bool:
        """The call was deleted (or is being): its streams are, or are about to be, released."""
        return call.call_id in self._dropping or self.calls.get(call.call_id) is not call

    async def _capture_masking(self, call: Call) -> None:
        """The capture hook's reconfiguration. It runs after the hook returned, so the call
        may have been deleted meanwhile (a hangup ends the payment that started this): then
        there is nothing left to mask or unmask, and no failure to report."""
        if self._gone(call):
            return
        try:
            await self._apply_masking(call)
        except ng.NgError:
            if self._gone(call):  # deleted while this was between two streams
                log.info("capture masking not applied: the call was deleted",
                         call_id=call.call_id)
                return
            raise

    async def set_capture(self, call_id: str, capturing: bool) -> None:
        """:meth:`capture_changed`, waiting until the streams are reconfigured."""
        task = self.capture_changed(call_id, capturing)
        if task is not None:
            await task

    # --- delete / query / list / statistics ------------------------------------------------

    def _call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise ng.NgError("Unknown call-ID")
        return call

    async def delete(self, req: DeleteRequest) -> dict[str, Any]:
        call = self.calls.get(req.call_id)
        scope = "none" if call is None else _delete_scope(call, req.from_tag, req.to_tag)
        if call is None or scope == "none":
            if req.fatal:
                raise ng.NgError("Call-ID not found or tags didn't match")
            return {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
        reply = await self._query_reply(call)
        if scope == "branch":  # that dialog has no media of its own left: nothing to release
            # (its tag stays known: the other side's BYE for the same dialog may follow)
            log.info("forked branch deleted: the call's media stays", call_id=call.call_id,
                     from_tag=req.from_tag, to_tag=req.to_tag)
            return reply
        await self._drop(call)
        self.counters.deleted += 1
        log.info("call deleted", call_id=call.call_id)
        return reply

    async def _drop(self, call: Call) -> None:
        self._dropping.add(call.call_id)  # a capture task between its awaits sees this
        try:
            for party in call.parties.values():
                for m in party.medias:
                    await self._engine.release(m.stream_id)
                    self._by_stream.pop(m.stream_id, None)
        finally:
            self._dropping.discard(call.call_id)
        self.addresses.pop(call.call_id, None)
        if self.calls.pop(call.call_id, None) is not None and self._on_call is not None:
            self._on_call(call.call_id, False)
        if self.on_state is not None:
            self.on_state(call.call_id)

    async def query(self, req: QueryRequest) -> dict[str, Any]:
        return await self._query_reply(self._call(req.call_id))

    async def _query_reply(self, call: Call) -> dict[str, Any]:
        stats = {m.stream_id: await self._engine.stats(m.stream_id)
                 for p in call.parties.values() for m in p.medias}
        return query_reply(call, stats)

    async def list_calls(self, req: ListRequest) -> dict[str, Any]:
        return {"result": "ok", "calls": list(self.calls)[:req.limit]}

    async def statistics(self, req: StatisticsRequest) -> dict[str, Any]:
        streams = sum(len(p.medias) for c in self.calls.values() for p in c.parties.values())
        return statistics_reply(calls=len(self.calls), streams=streams,
                                created=self.counters.created, deleted=self.counters.deleted,
                                idle=self.counters.idle, totals=await self._engine.totals())

    # --- block / unblock DTMF --------------------------------------------------------------

    def _select(self, call: Call, req: DtmfRequest) -> list[Party]:
        s = req.select
        if s.all:
            return list(call.parties.values())
        if s.label:
            chosen = [p for p in call.parties.values() if p.label == s.label]
            if not chosen:
                raise ng.NgError(f"No participant with label '{s.label}'")
            return chosen
        if s.address:
            chosen = [p for p in call.parties.values()
                      if any(m.sdp_address == s.address for m in p.medias)]
            if not chosen:
                raise ng.NgError(f"No participant with address '{s.address}'")
            return chosen
        for key, tag in (("from-tag", s.from_tag), ("to-tag", s.to_tag)):
            if tag:
                if tag not in call.parties:
                    raise ng.NgError(f"Unknown {key}")
                return [call.parties[tag]]
        return list(call.parties.values())

    async def set_dtmf(self, req: DtmfRequest) -> dict[str, Any]:
        call = self._call(req.call_id)
        parties = self._select(call, req)
        if not req.block and call.capturing:
            decision = self._decide(call)
            tags = [p.tag for i, p in enumerate(call.dialogue) if i in decision.customers]
            if any(p.tag in tags for p in parties):
                raise ng.NgError("Cannot unblock DTMF: a secure-pay session of this call is "
                                 "capturing card data")
        base = self._policy.masking
        for party in parties:
            current = party.dtmf or base
            if req.block:
                mode = req.mode or (current.mode if current.mode is not DtmfSecurityMode.OFF
                                    else base.mode)
                policy = replace(
                    current.with_mode(mode), masked=True,
                    tone_frequency_hz=req.frequency_hz or current.tone_frequency_hz,
                    volume_dbm0=(req.volume_dbm0 if req.volume_dbm0 is not None
                                 else current.volume_dbm0),
                    digit=req.digit or current.digit)
            else:
                policy = replace(current, masked=False)
            party.dtmf = policy
        await self._apply_masking(call)
        log.info("dtmf policy changed", call_id=call.call_id, blocked=req.block,
                 parties=[p.tag for p in parties])
        reply: dict[str, Any] = {"result": "ok"}
        # ToneGuard's own key: `block DTMF` with `secure-pay=start` also opens a payment.
        if req.secure_pay:
            if self._on_securepay is None:
                raise ng.NgError("secure-pay is not available on this node")
            try:
                reply["secure-pay-sid"] = self._on_securepay(call.call_id)
            except LookupError as exc:
                raise ng.NgError(f"secure-pay: {exc}") from exc
        return reply

    # --- subscriptions (a supervisor listening in) ------------------------------------------
    #
    # rtpengine's model: a subscription is a new party that receives a copy of the selected
    # parties' media and sends nothing (sendonly toward it). Here the copy is taken where the
    # selected party's media leaves toward its dialogue partner — after masking — so a
    # supervisor hears exactly what the agent hears (the customer masked) and never a clear copy.
    # Listen-only: a second contact-centre party *sending* to the customer would put two
    # unmixed RTP streams on the customer's one port (``bidirectional`` is refused).

    def _sources(self, call: Call, req: SubscribeRequest) -> list[Party]:
        if req.from_tags:
            chosen = []
            for tag in req.from_tags:
                party = call.parties.get(tag)
                if party is None or party.subscriber:
                    raise ng.NgError(f"Unknown from-tag '{tag}'")
                chosen.append(party)
            return chosen
        if req.select.all:
            return call.dialogue
        dtmf_style = DtmfRequest(call.call_id, True, req.select)
        chosen = [p for p in self._select(call, dtmf_style) if not p.subscriber]
        if not chosen:
            raise ng.NgError("No call participant selected")
        return chosen

    async def subscribe_request(self, req: SubscribeRequest) -> dict[str, Any]:
        call = self._call(req.call_id)
        if "bidirectional" in req.flags:
            raise ng.NgError("bidirectional subscriptions are not supported: the customer "
                             "would receive two unmixed RTP streams (subscriptions listen only)")
        sources = self._sources(call, req)
        medias = [m for p in sources for m in p.medias
                  if m.section is not None and m.section.port != 0]
        if not medias:
            raise ng.NgError("The selected participants have no media yet")
        to_tag = req.to_tag or f"sub-{secrets.token_hex(6)}"
        if to_tag == PENDING_TAG:  # ours: an answerer not yet tagged
            raise ng.NgError(f"Invalid to-tag '{to_tag}'")
        old = call.parties.get(to_tag)
        if old is not None and not old.subscriber:
            raise ng.NgError(f"to-tag '{to_tag}' is a party of the call, not a subscription")
        if old is None and len(call.parties) >= self._limits.max_parties:
            raise ng.NgError(f"Too many parties on this call (at most "
                             f"{self._limits.max_parties})")
        if old is not None:  # rtpengine: a repeated to-tag replaces its subscriptions
            await self._end_subscription(call, old)
        now = self._clock()
        call.last_signal = now
        sub = Party(to_tag, "answerer", now, label=req.label or "", subscriber=True)
        call.parties[to_tag] = sub
        address = self._advertised(call)
        out = SessionDescription(lines=[
            ("v", "0"), ("o", f"- {secrets.randbelow(1 << 31)} 1 IN "
                              f"{'IP6' if ':' in address else 'IP4'} {address}"),
            ("s", "ToneGuard subscription"), ("c", "IN IP4 0.0.0.0"), ("t", "0 0")], media=[])
        try:
            for index, source in enumerate(medias):
                assert source.section is not None  # filtered above
                media = await self._media(call, sub, index)
                media.source = source.stream_id
                media.kind = source.kind
                transport = (req.transport_protocol or "").upper()
                media.protocol = transport if transport in SAVP + PLAIN else source.protocol
                section = copy.deepcopy(source.section)  # mirrors what the source sent
                section.port = media.local.rtp_port
                section.proto = media.protocol
                section.remove_attributes("sendrecv", "sendonly", "recvonly", "inactive",
                                          "crypto", "rtcp", "rtcp-mux", *ICE_ATTRIBUTES,
                                          *DTLS_ATTRIBUTES)
                section.add_attribute("rtcp", str(media.local.rtcp_port))
                if media.protocol in SAVP:
                    media.keys.advertise(section, offer=True, options=req.sdes)
                if source.config.masking is not None and media.kind == "audio":
                    _keep_inspectable(section, index)  # what a masked source can send on
                section.add_attribute("inactive" if "inactive" in req.flags else "sendonly")
                media.config = replace(media.config, codecs=source.config.codecs,
                                       label=sub.label, recording=None, masking=None)
                out.media.append(section)
        except BaseException:
            await self._end_subscription(call, sub)
            raise
        out.set_connection(address)
        log.info("subscription requested", call_id=call.call_id, to_tag=to_tag,
                 from_tags=[p.tag for p in sources])
        return {"result": "ok", "sdp": out.serialise(), "to-tag": to_tag,
                "from-tags": [p.tag for p in sources]}

    async def subscribe_answer(self, req: SubscribeAnswerRequest) -> dict[str, Any]:
        call = self._call(req.call_id)
        sub = call.parties.get(req.to_tag)
        if sub is None or not sub.subscriber:
            raise ng.NgError(f"Unknown subscription to-tag '{req.to_tag}'")
        sdp = req.sdp
        if len(sdp.media) != len(sub.medias):
            raise ng.NgError(f"Answer has {len(sdp.media)} media sections, the subscription "
                             f"offered {len(sub.medias)}")
        _check_sections(sdp, cut_codecs=False)
        configs: list[StreamConfig | None] = []
        for index, (section, media) in enumerate(zip(sdp.media, sub.medias, strict=True)):
            if section.port == 0:
                configs.append(None)  # this medium declined: nothing is sent to it
                continue
            offered = media.config.codecs
            if offered and not set(section.codecs().values()) & set(offered.values()):
                raise ng.NgError(f"media {index}: the answer accepts none of the offered codecs")
            peer_addr = sdp.media_connection(index) or ""
            secure = media.protocol in SAVP
            srtp_recv = media.keys.accept(section, offer=False, index=index) if secure else None
            rtcp_port = section.rtcp_port or section.port + 1
            configs.append(replace(
                media.config, peer=(peer_addr, section.port),
                rtcp_peer=(peer_addr, section.port if section.rtcp_mux else rtcp_port),
                rtcp_mux=section.rtcp_mux, symmetric="asymmetric" not in req.flags,
                learning_window=self._latching.learning_window,
                learn_any_source=self._latching.learn_any_source,
                srtp_recv=srtp_recv, srtp_send=media.keys.send if secure else None,
                recording=None, masking=None))
        for media, config in zip(sub.medias, configs, strict=True):
            if config is None:
                await self._engine.remove_output(media.source, media.stream_id)
                continue
            media.config = config
            media.sdp_address = config.peer[0] if config.peer else ""
            try:
                await self._engine.configure(media.stream_id, config)
                await self._engine.add_output(media.source, media.stream_id)
            except MediaError as exc:
                raise ng.NgError(f"media {media.index}: {exc}") from exc
        call.last_signal = self._clock()
        log.info("subscription answered", call_id=call.call_id, to_tag=sub.tag)
        return {"result": "ok"}

    async def unsubscribe(self, req: UnsubscribeRequest) -> dict[str, Any]:
        call = self._call(req.call_id)
        sub = call.parties.get(req.to_tag)
        if sub is None or not sub.subscriber:
            raise ng.NgError(f"Unknown subscription to-tag '{req.to_tag}'")
        await self._end_subscription(call, sub)
        call.last_signal = self._clock()
        log.info("subscription ended", call_id=call.call_id, to_tag=sub.tag)
        return {"result": "ok"}

    async def _end_subscription(self, call: Call, sub: Party) -> None:
        for m in sub.medias:
            if m.source:
                await self._engine.remove_output(m.source, m.stream_id)
            await self._engine.release(m.stream_id)
            self._by_stream.pop(m.stream_id, None)
        call.parties.pop(sub.tag, None)

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
        elif isinstance(event, SrtpIndexEvent | DtlsKeyedEvent | LatchedEvent):
            party = call.parties.get(tag)
            media = next((m for m in party.medias if m.stream_id == event.stream_id),
                         None) if party is not None else None
            if media is None:
                return
            if isinstance(event, SrtpIndexEvent):
                media.recv_index, media.send_index = event.recv, event.send
            elif isinstance(event, LatchedEvent):
                if media.latched == event.endpoint:
                    return  # unchanged (a re-latch on the same source): nothing to store
                media.latched = event.endpoint
            else:
                media.dtls_keys = (event.recv_key, event.send_key)
                media.latched = event.endpoint
            if self.on_state is not None:
                self.on_state(call_id)

    async def reap_idle(self) -> list[str]:
        """Delete calls whose media went idle (called periodically by the server)."""
        reaped = []
        while self._idle:
            call_id = self._idle.pop()
            call = self.calls.get(call_id)
            if call is not None:
                await self._drop(call)
                self.counters.idle += 1
                reaped.append(call_id)
                log.info("call deleted: media idle", call_id=call_id)
        return reaped

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await self._drop(call)

    async def adopt(self, call: Call) -> None:
        """Take over a call restored from the shared store (a restart): every party's streams
        on their own ports again, configured as they were (masking included), SRTP continuing
        from the stored indexes, and only then the dialogue linked and each subscription's
        output added, so nothing is relayed unmasked — in one step of the media engine (one
        round trip to a worker process). A stream whose port cannot be bound fails the whole
        call (released again) with a MediaError."""
        streams = []
        for m in (m for p in call.parties.values() for m in p.medias):
            if m.config.dtls is not None:  # the record holds no certificate: this node's
                m.config = replace(m.config, dtls=m.webrtc.dtls_params(self.certificate))
            streams.append(RestoredStream(
                m.stream_id, m.local.rtp_port, m.local.rtcp_port == m.local.rtp_port,
                m.config, m.recv_index, m.send_index, m.dtls_keys, m.latched))
        links: list[tuple[str, str]] = []
        dialogue = call.dialogue
        if len(dialogue) == 2:
            a, b = dialogue
            links = [(ma.stream_id, mb.stream_id)
                     for ma, mb in zip(a.medias, b.medias, strict=False)]
        # A subscription's output exists once it was answered (its config names a peer); a
        # declined section never got one.
        outputs = [(m.source, m.stream_id) for p in call.parties.values() if p.subscriber
                   for m in p.medias if m.source and m.config.peer is not None]
        await self._engine.restore(call.call_id, streams, links, outputs)
        self.calls[call.call_id] = call
        for party in call.parties.values():
            for m in party.medias:
                self._by_stream[m.stream_id] = (call.call_id, party.tag)
        if self._on_call is not None:
            self._on_call(call.call_id, True)

    async def forget(self, call_id: str) -> bool:
        """Let a call go without an ng command: another node relays it now (a takeover while
        this node was taken for dead, proxy/store/takeover.py). False: not here."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        await self._drop(call)
        log.warning("call let go: another node owns it now", call_id=call_id)
        return True

    def _advertised(self, call: Call) -> str:
        return self.addresses.get(call.call_id, self._address)


def _delete_scope(call: Call, from_tag: str, to_tag: str) -> Literal["call", "branch", "none"]:
    """What a ``delete`` with these tags ends, as rtpengine 10.5 (``call_delete_branch``)
    matches them: no from-tag, the whole call; else the to-tag (the from-tag when there is
    none) must name a party, or, as a last resort, the from-tag a party still waiting for its
    answer; otherwise nothing ("tags didn't match"). One difference: a dialog of a forked
    branch the call no longer follows (two branches answered 200; the caller BYEs one) ends
    only that branch, whichever side names it — rtpengine 10.5 ends the whole call when the
    branch's own side sends the BYE (its to-tag is then the caller's), cutting the kept one."""
    if not from_tag:
        return "call"
    if from_tag in call.branches or to_tag in call.branches:
        return "branch"
    if (to_tag or from_tag) in call.parties:
        return "call"
    party = call.parties.get(from_tag) if to_tag else None
    other = call.other(party) if party is not None else None
    return "call" if other is not None and other.tag == PENDING_TAG else "none"


def _specified(address: str) -> bool:
    """An SDP address that names a host (not empty, not 0.0.0.0 / :: as for a hold)."""
    return address not in ("", "0.0.0.0", "::")


def _refuse_third_party(call: Call, from_tag: str) -> None:
    """An offer from a tag the call does not know, once the call has its offerer: a third
    party in plain offer/answer. Linking it would take the customer's media from the party
    that has it (the first agent would be cut) and could not be told apart on the ports
    already offered; refused before anything changes."""
    if from_tag in call.parties:
        if call.parties[from_tag].subscriber:
            raise ng.NgError(f"from-tag '{from_tag}' is a subscription: it cannot offer")
        return
    if call.dialogue:
        raise ng.NgError(
            f"Call already has its parties: a third party (from-tag '{from_tag}') cannot join "
            "by offer (a supervisor joins with 'subscribe request'; a transfer re-offers with "
            "the call's own tags)")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reconfiguring masking failed", task=task.get_name(),
                  error=repr(task.exception()))


def _session_webrtc_lines(out: SessionDescription, receiver: Party) -> None:
    """Session-level lines for a party spoken to as WebRTC: ``a=ice-lite`` (we never send
    checks) and one BUNDLE group of its WebRTC sections' mids (each has its own port: a
    browser with ``max-bundle`` uses the first; ours are not bundled onto one port yet)."""
    webrtc = [(m, s) for m, s in zip(receiver.medias, out.media, strict=False)
              if m.protocol in WEBRTC_PROTOCOLS and s.port != 0]
    if not webrtc:
        return
    out.order_session_lines()
    extra = []
    if any(m.webrtc.ice for m, _ in webrtc):
        extra.append(("a", "ice-lite"))
    mids = [s.attributes("mid")[0] for _, s in webrtc if s.attributes("mid")]
    if mids:
        extra.append(("a", "group:BUNDLE " + " ".join(mids)))
    out.lines += extra  # session-level a= lines come last (RFC 8866 §5)


def _check_sections(sdp: SessionDescription, cut_codecs: bool) -> None:
    """What would make a media section unusable, said before any stream is touched."""
    for index, section in enumerate(sdp.media):
        proto = section.proto.upper()
        if "TLS" in proto and proto not in WEBRTC_PROTOCOLS:
            raise ng.NgError(f"media {index}: {section.proto} is not supported "
                             f"(DTLS-SRTP over UDP only: {', '.join(WEBRTC_PROTOCOLS)})")
        if section.port == 0:
            continue
        if section.proto.upper() in SAVP:
            offered_keys(section, index)  # SRTP without a key we support: refused up front
        if not section.rtcp_mux and (section.rtcp_port or section.port + 1) > 65535:
            raise ng.NgError(f"media {index}: port {section.port} leaves no port for RTCP "
                             "(use a=rtcp or rtcp-mux)")
        if cut_codecs and section.media.lower() == "audio":
            _inspectable_formats(section, index)


def _inspectable_formats(section: MediaSection, index: int) -> list[str]:
    """The formats of an audio section masking can inspect; an error if no audio is left."""
    codecs = section.codecs()
    keep = [f for f in section.formats if f.isdigit() and codecs.get(int(f)) in INSPECTABLE]
    if not any(codecs.get(int(f)) in ("PCMU", "PCMA") for f in keep):
        raise ng.NgError(f"media {index}: no codec ToneGuard can inspect for DTMF masking "
                         "(offer PCMU or PCMA)")
    return keep


def _keep_inspectable(section: MediaSection, index: int) -> None:
    """Cut an offered audio section down to the codecs masking can inspect."""
    keep = _inspectable_formats(section, index)
    dropped = set(section.formats) - set(keep)
    section.formats = keep
    section.lines = [(t, v) for t, v in section.lines
                     if not (t == "a" and v.partition(":")[0] in ("rtpmap", "fmtp")
                             and v.partition(":")[2].split(" ")[0] in dropped)]
