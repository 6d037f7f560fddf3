"""ng/SDP parity for WebRTC bridging: RTP/AVP or SDES ↔ UDP/TLS/RTP/SAVPF both ways, DTLS roles
(RFC 5763 / 8842), fingerprints, ICE-lite lines, rtcp-mux, mid/BUNDLE, AVPF lines; and what is
refused. Over the real in-process engine (the streams' DTLS/ICE configuration is checked)."""

from __future__ import annotations

import pytest

from proxy.control import ng, sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import SessionDescription, parse
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.dtls import NodeCertificate
from proxy.media.engine import LocalMediaEngine

BROWSER = NodeCertificate.generate()
ICE_LINES = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "end-of-candidates",
             "ice-lite")


def browser_sdp(port: int, *, setup: str = "actpass", fingerprint: str | None = None,
                fingerprint_at_session: bool = True, proto: str = "UDP/TLS/RTP/SAVPF") -> str:
    """What Chrome sends (shape and attribute order), fingerprint at session level as Firefox
    puts it when ``fingerprint_at_session``."""
    fp = fingerprint or f"sha-256 {BROWSER.fingerprint()}"
    session = ["v=0", "o=- 7616097451 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
               "a=group:BUNDLE 0", "a=extmap-allow-mixed", "a=msid-semantic: WMS stream"]
    if fingerprint_at_session:
        session.append(f"a=fingerprint:{fp}")
    media = [f"m=audio {port} {proto} 111 0 8 126", "c=IN IP4 127.0.0.1",
             "a=rtcp:9 IN IP4 0.0.0.0",
             f"a=candidate:842163049 1 udp 1677729535 127.0.0.1 {port} typ srflx "
             f"raddr 0.0.0.0 rport 0 generation 0",
             "a=ice-ufrag:Brws", "a=ice-pwd:browserpasswordbrowserpw", "a=ice-options:trickle"]
    if not fingerprint_at_session:
        media.append(f"a=fingerprint:{fp}")
    media += [f"a=setup:{setup}", "a=mid:0",
              "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendrecv",
              "a=msid:stream track", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
              "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
              "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
              "a=ssrc:1001 cname:browser"]
    return "\r\n".join(session + media) + "\r\n"


def _attrs(sdp: SessionDescription, name: str) -> list[str]:
    return sdp.media[0].attributes(name)


def _session_attrs(sdp: SessionDescription) -> list[str]:
    return [v for t, v in sdp.lines if t == "a"]


@pytest.fixture
def registry(engine: LocalMediaEngine) -> CallRegistry:
    return CallRegistry(engine, address="127.0.0.1",
                        policy=CallPolicy(always_on=False, caller="offerer"))


async def _carrier_offer(registry: CallRegistry, call_id: str = "w", **keys: object) -> dict:
    return await registry.handle({
        "command": "offer", "call-id": call_id, "from-tag": "carrier",
        "sdp": audio_sdp("127.0.0.1", 40000), "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "ICE": "force", **keys})


async def test_rtp_offer_becomes_a_webrtc_offer_with_ice_lite_dtls_mid_and_bundle(
        registry: CallRegistry) -> None:
    out = parse((await _carrier_offer(registry, **{"rtcp-mux": ["offer"]}))["sdp"])
    m = out.media[0]
    assert m.proto == "UDP/TLS/RTP/SAVPF"
    assert _attrs(out, "setup") == ["actpass"]  # RFC 5763 §5: the offerer is actpass
    assert _attrs(out, "fingerprint") == [f"sha-256 {registry.certificate.fingerprint()}"]
    assert not _attrs(out, "crypto")
    assert m.has_attribute("rtcp-mux") and _attrs(out, "mid") == ["0"]
    assert "ice-lite" in _session_attrs(out) and "group:BUNDLE 0" in _session_attrs(out)
    ufrag, pwd = _attrs(out, "ice-ufrag")[0], _attrs(out, "ice-pwd")[0]
    assert len(ufrag) >= 4 and len(pwd) >= 22
    assert _attrs(out, "candidate") == [f"1 1 UDP 2130706431 127.0.0.1 {m.port} typ host"]
    assert m.has_attribute("end-of-candidates")
    # The browser-facing stream answers checks already, and is gated (no fingerprint yet).
    media = registry.calls["w"].parties["~"].medias[0]
    assert media.config.ice is not None and media.config.ice.local_ufrag == ufrag
    assert media.config.dtls is not None and media.config.dtls.fingerprints == ()


async def test_dtls_fingerprint_hash_passive_role_and_trickle(registry: CallRegistry) -> None:
    out = parse((await _carrier_offer(registry, **{
        "DTLS-fingerprint": "SHA-384", "DTLS": "passive", "flags": ["trickle ICE"]}))["sdp"])
    assert _attrs(out, "fingerprint") == [f"sha-384 {registry.certificate.fingerprint('sha-384')}"]
    assert _attrs(out, "setup") == ["passive"]
    assert _attrs(out, "ice-options") == ["trickle"]


@pytest.mark.parametrize(("browser_setup", "our_role"), [("active", "server"),
                                                          ("passive", "client")])
async def test_browser_answer_decides_the_dtls_role(
        registry: CallRegistry, browser_setup: str, our_role: str) -> None:
    offer = parse((await _carrier_offer(registry))["sdp"])
    answer = await registry.handle({
        "command": "answer", "call-id": "w", "from-tag": "carrier", "to-tag": "agent",
        "sdp": browser_sdp(41000, setup=browser_setup, fingerprint_at_session=False)})
    toward_carrier = parse(answer["sdp"])
    assert toward_carrier.media[0].proto == "RTP/AVP"
    for name in (*ICE_LINES, "fingerprint", "setup", "rtcp-fb", "crypto"):
        assert not _attrs(toward_carrier, name), name
    assert not any(a.startswith(("group", "ice-", "fingerprint")) for a in
                   _session_attrs(toward_carrier))
    config = registry.calls["w"].parties["agent"].medias[0].config
    assert config.dtls is not None and config.dtls.role == our_role
    assert config.dtls.fingerprints == (("sha-256", BROWSER.fingerprint()),)
    assert config.ice is not None and config.ice.remote_ufrag == "Brws"
    assert config.ice.local_ufrag == _attrs(offer, "ice-ufrag")[0]
    assert config.rtcp_mux and config.srtp_recv is None and config.srtp_send is None


async def test_browser_offer_to_a_plain_carrier_and_back(registry: CallRegistry) -> None:
    offer = await registry.handle({
        "command": "offer", "call-id": "b", "from-tag": "browser", "sdp": browser_sdp(41000),
        "transport-protocol": "RTP/AVP", "ICE": "remove", "rtcp-mux": ["demux"]})
    toward_carrier = parse(offer["sdp"])
    m = toward_carrier.media[0]
    assert m.proto == "RTP/AVP" and not m.has_attribute("rtcp-mux")
    for name in (*ICE_LINES, "fingerprint", "setup", "rtcp-fb"):
        assert not _attrs(toward_carrier, name), name
    assert not any(a.startswith(("group", "ice-", "fingerprint", "msid-semantic"))
                   for a in _session_attrs(toward_carrier))
    answer = await registry.handle({
        "command": "answer", "call-id": "b", "from-tag": "browser", "to-tag": "carrier",
        "sdp": audio_sdp("127.0.0.1", 40000)})
    toward_browser = parse(answer["sdp"])
    assert toward_browser.media[0].proto == "UDP/TLS/RTP/SAVPF"
    assert _attrs(toward_browser, "setup") == ["active"]  # RFC 8842 §5.3
    assert _attrs(toward_browser, "mid") == ["0"] and "group:BUNDLE 0" in \
        _session_attrs(toward_browser)
    assert toward_browser.media[0].has_attribute("rtcp-mux")
    assert _attrs(toward_browser, "ice-ufrag") and "ice-lite" in _session_attrs(toward_browser)
    config = registry.calls["b"].parties["browser"].medias[0].config
    assert config.dtls is not None and config.dtls.role == "client"
    assert config.dtls.fingerprints == (("sha-256", BROWSER.fingerprint()),)


async def test_answer_with_dtls_passive_takes_the_server_role(registry: CallRegistry) -> None:
    await registry.handle({"command": "offer", "call-id": "b", "from-tag": "browser",
                           "sdp": browser_sdp(41000), "transport-protocol": "RTP/AVP"})
    answer = await registry.handle({
        "command": "answer", "call-id": "b", "from-tag": "browser", "to-tag": "carrier",
        "sdp": audio_sdp("127.0.0.1", 40000), "DTLS": "passive"})
    assert _attrs(parse(answer["sdp"]), "setup") == ["passive"]
    config = registry.calls["b"].parties["browser"].medias[0].config
    assert config.dtls is not None and config.dtls.role == "server"


async def test_browser_offer_to_an_sdes_carrier(registry: CallRegistry) -> None:
    offer = await registry.handle({
        "command": "offer", "call-id": "s", "from-tag": "browser", "sdp": browser_sdp(41000),
        "transport-protocol": "RTP/SAVP", "ICE": "remove"})
    toward_carrier = parse(offer["sdp"])
    assert toward_carrier.media[0].proto == "RTP/SAVP"
    offered = sdes.offered(_attrs(toward_carrier, "crypto"))
    assert offered and not _attrs(toward_carrier, "fingerprint")
    key = sdes.generate(offered[0].suite, offered[0].tag)
    answer = await registry.handle({
        "command": "answer", "call-id": "s", "from-tag": "browser", "to-tag": "carrier",
        "sdp": audio_sdp("127.0.0.1", 40000, proto="RTP/SAVP", crypto=[key])})
    assert parse(answer["sdp"]).media[0].proto == "UDP/TLS/RTP/SAVPF"
    carrier = registry.calls["s"].parties["carrier"].medias[0].config
    assert carrier.srtp_recv == key.params and carrier.dtls is None


async def test_reoffer_keeps_ice_credentials_and_the_dtls_association(
        registry: CallRegistry) -> None:
    first = parse((await _carrier_offer(registry))["sdp"])
    await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                           "to-tag": "agent", "sdp": browser_sdp(41000, setup="active")})
    before = registry.calls["w"].parties["agent"].medias[0].config
    again = parse((await _carrier_offer(registry, **{"to-tag": "agent"}))["sdp"])
    assert _attrs(again, "ice-ufrag") == _attrs(first, "ice-ufrag")
    assert _attrs(again, "ice-pwd") == _attrs(first, "ice-pwd")
    assert registry.calls["w"].parties["agent"].medias[0].config.dtls == before.dtls
    await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                           "to-tag": "agent", "sdp": browser_sdp(41000, setup="active")})
    assert registry.calls["w"].parties["agent"].medias[0].config.dtls == before.dtls


async def test_rtcp_mux_require_advertises_no_separate_rtcp_port(
        registry: CallRegistry) -> None:
    out = parse((await _carrier_offer(registry, **{"rtcp-mux": ["require"]}))["sdp"])
    assert out.media[0].rtcp_port == out.media[0].port and out.media[0].has_attribute("rtcp-mux")


async def test_generate_mid_on_a_plain_call(registry: CallRegistry) -> None:
    out = await registry.handle({"command": "offer", "call-id": "p", "from-tag": "a",
                                 "sdp": audio_sdp("127.0.0.1", 40000),
                                 "flags": ["generate mid"]})
    assert parse(out["sdp"]).media[0].attributes("mid") == ["0"]
    plain = await registry.handle({"command": "offer", "call-id": "q", "from-tag": "a",
                                   "sdp": audio_sdp("127.0.0.1", 40000)})
    assert "a=mid" not in plain["sdp"] and "ice" not in plain["sdp"]


@pytest.mark.parametrize(("setup", "fingerprint", "reason"), [
    ("actpass", None, "must not say a=setup:actpass"),
    ("holdconn", None, "not usable"),
    ("active", "md5 AA:BB", "without an a=fingerprint"),
])
async def test_unusable_browser_answers_are_refused(
        registry: CallRegistry, setup: str, fingerprint: str | None, reason: str) -> None:
    await _carrier_offer(registry)
    with pytest.raises(ng.NgError, match=reason):
        await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                               "to-tag": "agent",
                               "sdp": browser_sdp(41000, setup=setup, fingerprint=fingerprint)})


async def test_both_ends_passive_is_refused(registry: CallRegistry) -> None:
    await _carrier_offer(registry, DTLS="passive")
    with pytest.raises(ng.NgError, match="both ends"):
        await registry.handle({"command": "answer", "call-id": "w", "from-tag": "carrier",
                               "to-tag": "agent", "sdp": browser_sdp(41000, setup="passive")})


@pytest.mark.parametrize(("keys", "sdp_proto", "reason"), [
    ({"DTLS": "off", "transport-protocol": "UDP/TLS/RTP/SAVPF"}, "RTP/AVP", "DTLS=off"),
    ({"DTLS": "sometimes"}, "RTP/AVP", "Invalid DTLS option"),
    ({"DTLS-fingerprint": "md5"}, "RTP/AVP", "Invalid DTLS-fingerprint"),
    ({"transport-protocol": "RTP/XYZ"}, "RTP/AVP", "Invalid transport-protocol"),
    ({}, "TCP/TLS/RTP/SAVPF", "not supported"),
])
async def test_bad_webrtc_options_are_refused_and_leave_nothing(
        registry: CallRegistry, keys: dict, sdp_proto: str, reason: str) -> None:
    sdp = (browser_sdp(41000, proto=sdp_proto) if "TLS" in sdp_proto
           else audio_sdp("127.0.0.1", 40000))
    with pytest.raises(ng.NgError, match=reason):
        await registry.handle({"command": "offer", "call-id": "x", "from-tag": "a",
                               "sdp": sdp, **keys})
    assert "x" not in registry.calls


async def test_browser_offer_without_ice_gets_no_ice_back(registry: CallRegistry) -> None:
    sdp = "\r\n".join(line for line in browser_sdp(41000).split("\r\n")
                      if not line.startswith(("a=ice-", "a=candidate")))
    await registry.handle({"command": "offer", "call-id": "n", "from-tag": "browser",
                           "sdp": sdp, "transport-protocol": "RTP/AVP"})
    answer = await registry.handle({"command": "answer", "call-id": "n", "from-tag": "browser",
                                    "to-tag": "carrier", "sdp": audio_sdp("127.0.0.1", 40000)})
    out = parse(answer["sdp"])
    assert not _attrs(out, "ice-ufrag") and "ice-lite" not in _session_attrs(out)
    assert _attrs(out, "fingerprint")
    assert registry.calls["n"].parties["browser"].medias[0].config.ice is None


async def test_session_lines_toward_a_browser_are_in_rfc_order(registry: CallRegistry) -> None:
    """The carrier put c= after t= (phones accept it); Chrome refuses it: reordered."""
    out = parse((await _carrier_offer(registry))["sdp"])
    types = "".join(t for t, _ in out.lines)
    assert types.index("c") < types.index("t") < types.index("a")
    plain = await registry.handle({"command": "offer", "call-id": "p", "from-tag": "a",
                                   "sdp": audio_sdp("127.0.0.1", 40000)})
    assert plain["sdp"].index("t=0 0") < plain["sdp"].index("c=IN")  # untouched otherwise
