"""What is written about a call, and back: one JSON record per call.

Written: the call's restorable state (parties, streams, local ports, SDP endpoints, codecs,
masking policy and ``block DTMF`` decisions, SRTP keys *sealed*, the to-tags of forked
branches it no longer follows), its agent assignment, and its
payments' metadata (status, the field being keyed, the masked values the agent is shown,
brand, token). Never written: a digit being keyed, a card number, a security code — a
:class:`~proxy.securepay.session.PaymentSession`'s buffers are not read here at all, only
``masked()``, which is what the agent sees anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from proxy.control.calls import Call, Media, Party
from proxy.control.dtls_leg import DtlsLeg
from proxy.control.keying import SdesLeg
from proxy.control.sdes import CryptoAttribute
from proxy.control.sdp import DTLS_ATTRIBUTES, ICE_ATTRIBUTES, MediaSection
from proxy.control.sdp import parse as parse_sdp
from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.types import (
    DtlsParams,
    IceParams,
    LocalEndpoint,
    SrtpIndex,
    SrtpParams,
    StreamConfig,
)
from proxy.securepay.session import PaymentSession
from proxy.store.sealing import Sealer, SealError

VERSION = 1


class RecordError(ValueError):
    """A record this version cannot read (says which call, never a key)."""


@dataclass
class PaymentRecord:
    """A payment as the store keeps it: no digits."""

    sid: str
    agent_id: str
    status: str
    current: str  # the field being keyed ("" = none)
    fields: list[str]  # the fields this payment asks for, in order
    masked: dict[str, str] = field(default_factory=dict)
    brand: str = ""
    token: str = ""
    error: str = ""

    @classmethod
    def of(cls, session: PaymentSession) -> PaymentRecord:
        return cls(session.sid, session.agent_id, session.status.value, session.current or "",
                   list(session.fields), session.masked(),
                   session.brand or session.final_brand, session.token, session.error)


@dataclass
class CallRecord:
    call: Call
    node: str
    agent_id: str = ""
    payments: list[PaymentRecord] = field(default_factory=list)


def encode(record: CallRecord, sealer: Sealer) -> bytes:
    call = record.call
    body = {
        "v": VERSION, "node": record.node, "agent_id": record.agent_id,
        "payments": [vars(p) for p in record.payments],
        "call": {
            "call_id": call.call_id, "created": call.created, "last_signal": call.last_signal,
            "metadata": call.metadata, "caller": call.caller,
            "recording": list(call.recording) if call.recording else None,
            # Forked branches a later branch's answer replaced: a restart mid-ring keeps
            # knowing them, so a delete for such a dialog (its CANCEL, its BYE) leaves the
            # followed branch's media alone instead of ending the call.
            "branches": sorted(call.branches),
            "parties": [_party(p, call.call_id, sealer) for p in call.parties.values()],
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes, sealer: Sealer) -> CallRecord:
    try:
        body = json.loads(data)
        if body.get("v") != VERSION:
            raise RecordError(f"record version {body.get('v')!r}, expected {VERSION}")
        c = body["call"]
        call = Call(c["call_id"], c["created"], c["last_signal"], metadata=c["metadata"],
                    caller=c["caller"],
                    recording=_address(c["recording"]),
                    branches={str(t) for t in c.get("branches") or ()})  # older: none
        for p in c["parties"]:
            party = _unparty(p, call.call_id, sealer)
            call.parties[party.tag] = party
        return CallRecord(call, body["node"], body["agent_id"],
                          [PaymentRecord(**p) for p in body["payments"]])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RecordError | SealError):  # already says what it is
            raise
        raise RecordError(f"unreadable call record: {type(exc).__name__}") from exc


# --- parts -----------------------------------------------------------------------------------

def _party(p: Party, call_id: str, sealer: Sealer) -> dict[str, Any]:
    return {"tag": p.tag, "role": p.role, "created": p.created, "label": p.label,
            "source_address": p.source_address, "subscriber": p.subscriber, "final": p.final,
            "dtmf": _policy(p.dtmf), "medias": [_media(m, call_id, sealer) for m in p.medias]}


def _unparty(d: dict[str, Any], call_id: str, sealer: Sealer) -> Party:
    # .get: a record written before a field existed (a restart into a newer version) reads
    # as that field's default.
    return Party(d["tag"], d["role"], d["created"], label=d["label"],
                 source_address=d["source_address"], dtmf=_unpolicy(d["dtmf"]),
                 subscriber=bool(d.get("subscriber", False)), final=bool(d.get("final", False)),
                 medias=[_unmedia(m, call_id, sealer) for m in d["medias"]])


def _media(m: Media, call_id: str, sealer: Sealer) -> dict[str, Any]:
    c = m.config
    return {
        "index": m.index, "stream_id": m.stream_id, "kind": m.kind, "protocol": m.protocol,
        "sdp_address": m.sdp_address, "source": m.source, "mux_required": m.mux_required,
        "remote": list(m.remote) if m.remote else None, "section": _section(m.section),
        "srtp_index": {"recv": _index(m.recv_index), "send": _index(m.send_index)},
        "webrtc": _webrtc(m, call_id, sealer),
        "latched": list(m.latched) if m.latched else None,  # a WebRTC leg's: in "webrtc" too
        "local": [m.local.address, m.local.rtp_port, m.local.rtcp_port],
        "keys": {"suite": m.keys.suite,
                 "ours": [{"tag": a.tag, "params": _seal(a.params, call_id, sealer)}
                          for a in m.keys.ours.values()]},
        "config": {
            "peer": list(c.peer) if c.peer else None,
            "rtcp_peer": list(c.rtcp_peer) if c.rtcp_peer else None,
            "rtcp_mux": c.rtcp_mux, "symmetric": c.symmetric, "strict_source": c.strict_source,
            "learn_any_source": c.learn_any_source, "media_handover": c.media_handover,
            "learning_window": c.learning_window,
            "srtp_recv": _seal(c.srtp_recv, call_id, sealer),
            "srtp_send": _seal(c.srtp_send, call_id, sealer),
            "codecs": {str(pt): name for pt, name in c.codecs.items()},
            "masking": _policy(c.masking),
            "recording": list(c.recording) if c.recording else None,
            "label": c.label,
            # DTLS: whether the stream runs it (its parameters are rebuilt from the leg and
            # the node's certificate at restore); ICE: the credentials, the password sealed.
            "dtls": c.dtls is not None,
            "ice": None if c.ice is None else {
                "local_ufrag": c.ice.local_ufrag, "remote_ufrag": c.ice.remote_ufrag,
                "local_pwd": sealer.seal(c.ice.local_pwd.encode(), call_id)},
        },
    }


def _unmedia(d: dict[str, Any], call_id: str, sealer: Sealer) -> Media:
    c = d["config"]
    config = StreamConfig(
        peer=_address(c["peer"]), rtcp_peer=_address(c["rtcp_peer"]), rtcp_mux=c["rtcp_mux"],
        symmetric=c["symmetric"], strict_source=c["strict_source"],
        learn_any_source=c["learn_any_source"], media_handover=c["media_handover"],
        learning_window=c["learning_window"],
        srtp_recv=_unseal(c["srtp_recv"], call_id, sealer),
        srtp_send=_unseal(c["srtp_send"], call_id, sealer),
        codecs={int(pt): name for pt, name in c["codecs"].items()},
        masking=_unpolicy(c["masking"]), recording=_address(c["recording"]), label=c["label"],
        # A placeholder until adopt() puts this node's certificate in (never stored).
        dtls=DtlsParams("server", (), b"", b"") if c.get("dtls") else None,
        ice=None if not c.get("ice") else IceParams(
            c["ice"]["local_ufrag"], sealer.open(c["ice"]["local_pwd"], call_id).decode(),
            c["ice"]["remote_ufrag"]))
    keys = SdesLeg(suite=d["keys"]["suite"])
    for a in d["keys"]["ours"]:
        params = _unseal(a["params"], call_id, sealer)
        assert params is not None
        keys.ours[params.suite] = CryptoAttribute(a["tag"], params.suite, params)
    address, rtp, rtcp = d["local"]
    index = d.get("srtp_index") or {}
    media = Media(d["index"], d["stream_id"], LocalEndpoint(address, rtp, rtcp), kind=d["kind"],
                  protocol=d["protocol"], config=config, keys=keys,
                  sdp_address=d["sdp_address"], source=d.get("source", ""),
                  mux_required=bool(d.get("mux_required", False)),
                  remote=_address(d.get("remote")), section=_unsection(d.get("section")),
                  recv_index=_unindex(index.get("recv")), send_index=_unindex(index.get("send")))
    media.latched = _address(d.get("latched"))
    if d.get("webrtc"):
        _unwebrtc(media, d["webrtc"], call_id, sealer)
    return media


def _webrtc(m: Media, call_id: str, sealer: Sealer) -> dict[str, Any] | None:
    """A WebRTC leg: its DTLS/ICE state toward the party, the ICE password and the keys its
    verified handshake exported sealed (a restart resumes the leg from them)."""
    leg = m.webrtc
    if m.config.dtls is None and m.config.ice is None and m.dtls_keys is None:
        return None
    return {"ufrag": leg.ufrag, "pwd": sealer.seal(leg.pwd.encode(), call_id),
            "their_ufrag": leg.their_ufrag,
            "their_fingerprints": [list(f) for f in leg.their_fingerprints],
            "their_setup": leg.their_setup, "their_mid": leg.their_mid,
            "our_setup": leg.our_setup, "role": leg.role, "ice": leg.ice,
            "keys": None if m.dtls_keys is None else [_seal(k, call_id, sealer)
                                                      for k in m.dtls_keys],
            "latched": list(m.latched) if m.latched else None}


def _unwebrtc(media: Media, d: dict[str, Any], call_id: str, sealer: Sealer) -> None:
    media.webrtc = DtlsLeg(
        ufrag=d["ufrag"], pwd=sealer.open(d["pwd"], call_id).decode(),
        their_ufrag=d["their_ufrag"],
        their_fingerprints=tuple((str(a), str(v)) for a, v in d["their_fingerprints"]),
        their_setup=d["their_setup"], their_mid=d["their_mid"], our_setup=d["our_setup"],
        role=d["role"], ice=bool(d["ice"]))
    if d.get("keys"):
        recv, send = (_unseal(k, call_id, sealer) for k in d["keys"])
        assert recv is not None and send is not None
        media.dtls_keys = (recv, send)
    media.latched = _address(d.get("latched"))


def _index(index: SrtpIndex | None) -> list[int] | None:
    return [index.ssrc, index.roc, index.seq] if index is not None else None


def _unindex(value: list[Any] | None) -> SrtpIndex | None:
    return SrtpIndex(int(value[0]), int(value[1]), int(value[2])) if value else None


# What of a party's last media section is kept (so a supervisor can subscribe after a
# restart: it mirrors the codecs): never its keys (a=crypto, k=) nor ICE/DTLS credentials.
_SECRET_ATTRIBUTES = frozenset({"crypto", *ICE_ATTRIBUTES, *DTLS_ATTRIBUTES})
_SESSION_HEAD = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"


def _section(section: MediaSection | None) -> list[str] | None:
    if section is None:
        return None
    lines = section.serialise()
    return lines[:1] + [line for line in lines[1:] if not line.startswith("k=") and not (
        line.startswith("a=") and line[2:].partition(":")[0] in _SECRET_ATTRIBUTES)]


def _unsection(lines: list[str] | None) -> MediaSection | None:
    if not lines:
        return None
    return parse_sdp(_SESSION_HEAD + "\r\n".join(lines) + "\r\n").media[0]


def _address(value: list[Any] | None) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if value else None


def _seal(params: SrtpParams | None, call_id: str, sealer: Sealer) -> dict[str, str] | None:
    if params is None:
        return None
    return {"suite": params.suite, "sealed": sealer.seal(params.key_salt, call_id)}


def _unseal(d: dict[str, str] | None, call_id: str, sealer: Sealer) -> SrtpParams | None:
    if d is None:
        return None
    return SrtpParams(d["suite"], sealer.open(d["sealed"], call_id))


def _policy(p: MaskingPolicy | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"masked": p.masked, "mode": p.mode.value, "tone_frequency_hz": p.tone_frequency_hz,
            "volume_dbm0": p.volume_dbm0, "digit": p.digit, "detect": p.detect}


def _unpolicy(d: dict[str, Any] | None) -> MaskingPolicy | None:
    if d is None:
        return None
    return MaskingPolicy(masked=d["masked"], mode=DtmfSecurityMode.parse(d["mode"]),
                         tone_frequency_hz=d["tone_frequency_hz"],
                         volume_dbm0=d["volume_dbm0"], digit=d["digit"], detect=d["detect"])
