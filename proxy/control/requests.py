"""ng messages parsed once into typed requests, one class per command.

As rtpengine turns every message into one flags struct before any handler runs
(``call_flags.h``), handlers here never read the raw dictionary: :func:`parse_request` does,
once, and raises :class:`~proxy.control.ng.NgError` with rtpengine's error reasons for what is
missing or malformed. Keys arrive already folded by :func:`proxy.control.ng.normalise`; flags
are compared in lower case. Unknown keys and flags are ignored, as rtpengine does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from proxy.control import ng
from proxy.control.sdp import SdpError, SessionDescription
from proxy.control.sdp import parse as parse_sdp
from proxy.media.policy import DtmfSecurityMode
from proxy.media.types import Address

CallerChoice = Literal["offerer", "answerer", "both", "none"]
CALLER_CHOICES: tuple[CallerChoice, ...] = ("offerer", "answerer", "both", "none")
ICE_OPTIONS = ("", "remove", "default", "optional", "force", "force-relay")
# rtpengine 10.5's DTLS values (``no``/``disable`` = ``off``) and DTLS-fingerprint hashes.
DTLS_OPTIONS = {"": "", "off": "off", "no": "off", "disable": "off", "passive": "passive",
                "active": "active"}
DTLS_HASHES = ("sha-1", "sha-224", "sha-256", "sha-384", "sha-512")
TRANSPORTS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVP",
              "UDP/TLS/RTP/SAVPF")
RTCP_MUX_OPTIONS = frozenset({"offer", "require", "demux", "accept", "reject"})
DTMF_DIGITS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class PingRequest:
    pass


@dataclass(frozen=True, slots=True)
class NegotiateRequest:
    """``offer`` (``to_tag`` empty or the callee's on a re-INVITE) or ``answer``."""

    command: Literal["offer", "answer"]
    call_id: str
    from_tag: str
    to_tag: str
    sdp: SessionDescription
    flags: frozenset[str]
    transport_protocol: str | None = None
    sdes: frozenset[str] = frozenset()  # SDES options: ``off``, ``no-<suite>`` (lower case)
    ice: str = ""
    dtls: str = ""  # "", "off", "passive", "active" (rtpengine's synonyms folded)
    dtls_fingerprint: str = "sha-256"  # the hash our a=fingerprint uses
    rtcp_mux: frozenset[str] = frozenset()
    replace: frozenset[str] = frozenset()
    received_from: str | None = None  # the SIP source address (``received-from`` [family, addr])
    label: str | None = None
    from_label: str | None = None
    to_label: str | None = None
    metadata: str | None = None
    caller: CallerChoice | None = None  # ToneGuard's ``caller-*`` flag: whose DTMF is masked
    recording_tap: Address | None = None
    # What the client understands in a reply (``supports``): Kamailio's rtpengine module sends
    # ``load limit`` and then takes that result as "try the next node of the set".
    supports: frozenset[str] = frozenset()
    sip_code: int | None = None  # ``SIP code``: the response that carried an answer (200, 183)

    @property
    def final(self) -> bool:
        """An answer from a final response (``SIP code`` >= 200, and not flagged
        ``provisional``): as in rtpengine, its to-tag may no longer change."""
        return (self.sip_code is not None and self.sip_code >= 200
                and "provisional" not in self.flags)

    @property
    def trust_address(self) -> bool:
        return "trust-address" in self.flags

    @property
    def symmetric(self) -> bool:
        return "asymmetric" not in self.flags

    @property
    def learn_any_source(self) -> bool:
        """ToneGuard's flag: any source may latch within the learning window (NAT)."""
        return "learn-any-source" in self.flags

    @property
    def media_handover(self) -> bool:
        return "media-handover" in self.flags

    @property
    def peer_address_override(self) -> str | None:
        """Where to expect media from instead of the SDP's address (``SIP-source-address``)."""
        if self.trust_address or "sip-source-address" not in self.flags:
            return None
        return self.received_from

    @property
    def demux_rtcp(self) -> bool:
        return "demux" in self.rtcp_mux

    @property
    def generate_mid(self) -> bool:
        return "generate-mid" in self.flags


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    call_id: str
    fatal: bool = False
    from_tag: str = ""  # "" = the whole call (as in rtpengine)
    to_tag: str = ""


@dataclass(frozen=True, slots=True)
class QueryRequest:
    call_id: str


@dataclass(frozen=True, slots=True)
class ListRequest:
    limit: int = 32


@dataclass(frozen=True, slots=True)
class StatisticsRequest:
    pass


@dataclass(frozen=True, slots=True)
class PartySelector:
    """Which parties ``block DTMF``/``unblock DTMF`` act on (rtpengine's order of precedence);
    all fields empty = the whole call."""

    all: bool = False
    label: str | None = None
    address: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None


@dataclass(frozen=True, slots=True)
class DtmfRequest:
    """``block DTMF`` (``block`` True) or ``unblock DTMF``."""

    call_id: str
    block: bool
    select: PartySelector
    mode: DtmfSecurityMode | None = None
    frequency_hz: float | None = None
    volume_dbm0: float | None = None
    digit: str | None = None
    secure_pay: bool = False  # ToneGuard's ``secure-pay=start``: also open a payment


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """``subscribe request``: a new party (``to_tag``, generated when empty) receives a copy of
    the selected parties' media — what their linked streams get, masked the same way.

    Sources: ``from-tags`` (a list, or ``from-tags-<tag>`` flags), the ``all`` flag (every
    party of the offer/answer dialogue), else one party chosen as for ``block DTMF``."""

    call_id: str
    select: PartySelector
    from_tags: tuple[str, ...] = ()
    to_tag: str = ""
    label: str | None = None  # ``set-label`` (or ``to-label``) for the new party
    flags: frozenset[str] = frozenset()
    transport_protocol: str | None = None
    sdes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SubscribeAnswerRequest:
    """``subscribe answer``: the subscriber's answer SDP; media flows to it from now on."""

    call_id: str
    to_tag: str
    sdp: SessionDescription
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """``unsubscribe``: the subscription ``to_tag`` ends (its streams are released)."""

    call_id: str
    to_tag: str


Request = (PingRequest | NegotiateRequest | DeleteRequest | QueryRequest | ListRequest
           | StatisticsRequest | DtmfRequest | SubscribeRequest | SubscribeAnswerRequest
           | UnsubscribeRequest)
# The commands that change a call's state (what the shared store must write again); the
# others only read it.
STATE_CHANGING = (NegotiateRequest, DeleteRequest, DtmfRequest, SubscribeRequest,
                  SubscribeAnswerRequest, UnsubscribeRequest)


def parse_request(body: dict[str, Any]) -> Request:
    """Type one ng message (``body`` as :func:`ng.normalise` returns it)."""
    command = body.get("command")
    if not isinstance(command, str) or not command:
        raise ng.NgError('Dictionary contains no key "command"')
    parser = _PARSERS.get(command.lower())
    if parser is None:
        raise ng.NgError("Unrecognized command")
    return parser(body)


def _flag_words(body: dict[str, Any], key: str) -> frozenset[str]:
    return frozenset(word.lower() for word in body.get(key, []))


def _negotiate(command: Literal["offer", "answer"], body: dict[str, Any]) -> NegotiateRequest:
    call_id = ng.require_str(body, "call-id")
    from_tag = ng.require_str(body, "from-tag")
    to_tag = ng.require_str(body, "to-tag") if command == "answer" else (
        ng.get_str(body, "to-tag") or "")
    flags = ng.flags(body)
    caller: CallerChoice | None = None
    for flag in flags:
        if flag.startswith("caller-"):
            choice = flag.removeprefix("caller-")
            if choice not in CALLER_CHOICES:
                raise ng.NgError(f"Invalid flag '{flag}'")
            caller = choice  # checked against CALLER_CHOICES just above
    ice = (ng.get_str(body, "ice") or "").lower()
    if ice not in ICE_OPTIONS:
        raise ng.NgError(f"Invalid ICE option '{ice}'")
    received = body.get("received-from")
    dtls_text = (ng.get_str(body, "dtls") or "").lower()
    if dtls_text not in DTLS_OPTIONS:
        raise ng.NgError(f"Invalid DTLS option '{dtls_text[:20]}'")
    hash_name = (ng.get_str(body, "dtls-fingerprint") or "sha-256").lower()
    if hash_name not in DTLS_HASHES:
        raise ng.NgError(f"Invalid DTLS-fingerprint '{hash_name[:20]}'")
    transport = ng.get_str(body, "transport-protocol")
    if transport is not None:
        transport = transport.upper()
        if transport not in (*TRANSPORTS, "ACCEPT"):
            raise ng.NgError(f"Invalid transport-protocol '{transport[:30]}'")
    # Unknown rtcp-mux words are ignored (rtpengine warns and goes on); unknown DTLS and
    # transport values are refused: they decide how the leg is secured.
    rtcp_mux = _flag_words(body, "rtcp-mux") & RTCP_MUX_OPTIONS
    return NegotiateRequest(
        command=command, call_id=call_id, from_tag=from_tag, to_tag=to_tag,
        sdp=_sdp(body), flags=frozenset(flags),
        transport_protocol=transport,
        sdes=_flag_words(body, "sdes") | {f[len("sdes-"):] for f in flags
                                           if f.startswith("sdes-")},
        ice=ice, dtls=DTLS_OPTIONS[dtls_text], dtls_fingerprint=hash_name,
        rtcp_mux=rtcp_mux, replace=_flag_words(body, "replace"),
        received_from=str(received[1]) if isinstance(received, list) and len(received) == 2
        else None,
        label=ng.get_str(body, "label"), from_label=ng.get_str(body, "from-label"),
        to_label=ng.get_str(body, "to-label"),
        metadata=body["metadata"] if isinstance(body.get("metadata"), str) else None,
        caller=caller, recording_tap=_hostport(ng.get_str(body, "recording-tap")),
        supports=_flag_words(body, "supports"),
        sip_code=ng.get_int(body, "sip-code", None),
    )


def _subscribe(body: dict[str, Any]) -> SubscribeRequest:
    flags = ng.flags(body)
    listed = body.get("from-tags", [])
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise ng.NgError("Invalid value for key 'from-tags': expected a list of strings")
    # Tags are case-sensitive: taken from the raw flags, not the lower-cased set.
    raw = [f for f in body.get("flags", []) if f.lower().startswith("from-tags-")]
    from_tags = tuple(dict.fromkeys([*listed, *(f[len("from-tags-"):] for f in raw)]))
    select = PartySelector(
        all="all" in flags, label=ng.get_str(body, "label") or None,
        address=ng.get_str(body, "address") or None,
        from_tag=ng.get_str(body, "from-tag") or None)
    if not (from_tags or select.all or select.label or select.address or select.from_tag):
        raise ng.NgError("No call participant selected (from-tag, from-tags, label, "
                         "address or all)")
    return SubscribeRequest(
        call_id=ng.require_str(body, "call-id"), select=select, from_tags=from_tags,
        to_tag=ng.get_str(body, "to-tag") or "",
        label=ng.get_str(body, "set-label") or ng.get_str(body, "to-label"),
        flags=frozenset(flags), transport_protocol=ng.get_str(body, "transport-protocol"),
        sdes=_flag_words(body, "sdes") | {f[len("sdes-"):] for f in flags
                                           if f.startswith("sdes-")})


def _sdp(body: dict[str, Any]) -> SessionDescription:
    text = ng.get_str(body, "sdp")
    if not text:
        raise ng.NgError("No SDP body in message")
    try:
        return parse_sdp(text)
    except SdpError as exc:
        raise ng.NgError(f"Failed to parse SDP: {exc}") from exc


def _hostport(text: str | None) -> Address | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ng.NgError("Invalid recording-tap: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _dtmf(block: bool, body: dict[str, Any]) -> DtmfRequest:
    call_id = ng.require_str(body, "call-id")
    mode_text = ng.get_str(body, "dtmf-security")
    try:
        mode = DtmfSecurityMode.parse(mode_text) if mode_text else None
    except ValueError as exc:
        raise ng.NgError(str(exc)) from exc
    frequency = ng.get_float(body, "frequency")
    if frequency is not None and not 50 <= frequency <= 3900:
        raise ng.NgError("Invalid frequency: must be 50-3900 Hz")
    digit = ng.get_str(body, "digit") or ng.get_str(body, "code")
    if digit is not None and (len(digit) != 1 or digit not in DTMF_DIGITS):
        raise ng.NgError(f"Invalid digit '{digit}'")
    volume = ng.get_float(body, "volume")
    select = PartySelector(
        all="all" in ng.flags(body), label=ng.get_str(body, "label") or None,
        address=ng.get_str(body, "address") or None,
        from_tag=ng.get_str(body, "from-tag") or None, to_tag=ng.get_str(body, "to-tag") or None)
    return DtmfRequest(
        call_id=call_id, block=block, select=select, mode=mode, frequency_hz=frequency,
        volume_dbm0=-abs(volume) if volume is not None else None, digit=digit,
        secure_pay=block and (ng.get_str(body, "secure-pay") or "").lower() in (
            "start", "yes", "on"))


_PARSERS: dict[str, Any] = {
    "ping": lambda body: PingRequest(),
    "offer": lambda body: _negotiate("offer", body),
    "answer": lambda body: _negotiate("answer", body),
    "delete": lambda body: DeleteRequest(ng.require_str(body, "call-id"),
                                         fatal="fatal" in ng.flags(body),
                                         from_tag=ng.get_str(body, "from-tag") or "",
                                         to_tag=ng.get_str(body, "to-tag") or ""),
    "query": lambda body: QueryRequest(ng.require_str(body, "call-id")),
    "list": lambda body: ListRequest(ng.get_int(body, "limit", 32) or 32),
    "statistics": lambda body: StatisticsRequest(),
    "block dtmf": lambda body: _dtmf(True, body),
    "unblock dtmf": lambda body: _dtmf(False, body),
    "subscribe request": _subscribe,
    "subscribe answer": lambda body: SubscribeAnswerRequest(
        ng.require_str(body, "call-id"), ng.require_str(body, "to-tag"), _sdp(body),
        frozenset(ng.flags(body))),
    "unsubscribe": lambda body: UnsubscribeRequest(ng.require_str(body, "call-id"),
                                                   ng.require_str(body, "to-tag")),
}
