"""ng messages parsed once into typed requests, with rtpengine's error reasons."""

from __future__ import annotations

import pytest

from proxy.control import ng
from proxy.control.requests import (
    DeleteRequest,
    DtmfRequest,
    ListRequest,
    NegotiateRequest,
    PingRequest,
    parse_request,
)
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.policy import DtmfSecurityMode

SDP = audio_sdp("127.0.0.1", 4000)


def _parse(body: dict[str, object]) -> object:
    return parse_request(ng.normalise(body))


def test_an_offer_in_kamailios_spellings_becomes_one_typed_request() -> None:
    req = _parse({"command": "offer", "call-id": "c", "From-Tag": "f", "sdp": SDP,
                  "flags": ["trust address", "SIP-source-address", "caller-answerer"],
                  "replace": ["origin", "SDP-version"], "rtcp-mux": ["demux"],
                  "SDES": ["no-AEAD_AES_256_GCM"], "ICE": "remove",
                  "received-from": ["IP4", "192.0.2.9"], "recording-tap": "[::1]:7000",
                  "from-label": "customer", "metadata": "agent=alice", "unknown-key": 1})
    assert isinstance(req, NegotiateRequest)
    assert (req.command, req.call_id, req.from_tag, req.to_tag) == ("offer", "c", "f", "")
    assert req.trust_address and req.symmetric and req.demux_rtcp
    assert req.caller == "answerer" and req.recording_tap == ("::1", 7000)
    assert req.replace == {"origin", "sdp-version"} and req.sdes == {"no-aead_aes_256_gcm"}
    assert req.peer_address_override is None  # trust-address wins over SIP-source-address
    assert req.from_label == "customer" and req.metadata == "agent=alice"
    assert req.sdp.media[0].port == 4000


def test_sip_source_address_overrides_the_sdp_address_unless_trusted() -> None:
    req = _parse({"command": "answer", "call-id": "c", "from-tag": "f", "to-tag": "t",
                  "sdp": SDP, "flags": ["SIP source address"],
                  "received-from": ["IP4", "192.0.2.9"]})
    assert isinstance(req, NegotiateRequest) and req.peer_address_override == "192.0.2.9"


@pytest.mark.parametrize(("body", "reason"), [
    ({}, 'no key "command"'),
    ({"command": "dance"}, "Unrecognized command"),
    ({"command": "offer", "call-id": "c", "sdp": SDP}, 'no key "from-tag"'),
    ({"command": "offer", "call-id": "c", "from-tag": "f"}, "No SDP body"),
    ({"command": "offer", "call-id": "c", "from-tag": "f", "sdp": "nonsense"},
     "Failed to parse SDP"),
    ({"command": "answer", "call-id": "c", "from-tag": "f", "sdp": SDP}, 'no key "to-tag"'),
    ({"command": "offer", "call-id": "c", "from-tag": "f", "sdp": SDP,
      "flags": ["caller-agent"]}, "Invalid flag 'caller-agent'"),
    ({"command": "offer", "call-id": "c", "from-tag": "f", "sdp": SDP, "ICE": "maybe"},
     "Invalid ICE option"),
    ({"command": "offer", "call-id": "c", "from-tag": "f", "sdp": SDP,
      "recording-tap": "nowhere"}, "Invalid recording-tap"),
    ({"command": "block DTMF", "call-id": "c", "DTMF-security": "shout"},
     "unknown DTMF-security mode"),
    ({"command": "block DTMF", "call-id": "c", "frequency": "20000"}, "Invalid frequency"),
    ({"command": "block DTMF", "call-id": "c", "digit": "12"}, "Invalid digit"),
    ({"command": "list", "limit": "many"}, "expected an integer"),
    ({"command": "delete", "call-id": ["c"]}, "expected a string"),
])
def test_bad_messages_get_a_reason_naming_the_problem(body: dict[str, object],
                                                      reason: str) -> None:
    with pytest.raises(ng.NgError, match=reason):
        _parse(body)


def test_dtmf_requests_carry_mode_selector_and_secure_pay() -> None:
    req = _parse({"command": "block DTMF", "call-id": "c", "label": "customer",
                  "DTMF-security": "dtmf", "digit": "#", "volume": 12, "secure-pay": "start"})
    assert isinstance(req, DtmfRequest) and req.block and req.secure_pay
    assert req.mode is DtmfSecurityMode.DTMF and req.digit == "#" and req.volume_dbm0 == -12
    assert req.select.label == "customer" and not req.select.all
    unblock = _parse({"command": "unblock DTMF", "call-id": "c", "flags": ["all"],
                      "secure-pay": "start"})
    assert isinstance(unblock, DtmfRequest) and unblock.select.all and not unblock.secure_pay


def test_the_small_commands() -> None:
    assert isinstance(_parse({"command": "PING"}), PingRequest)
    assert _parse({"command": "delete", "call-id": "c", "flags": ["fatal"]}) == DeleteRequest(
        "c", fatal=True)
    assert _parse({"command": "list", "limit": "5"}) == ListRequest(5)
