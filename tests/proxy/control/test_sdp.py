"""SDP parse / rewrite / serialise keeps what we do not touch."""

from __future__ import annotations

import pytest

from proxy.control import sdp

OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=rtcp:4005\r\na=sendrecv\r\n"
)


def test_parse_reads_codecs_rtcp_and_connection_in_order() -> None:
    d = sdp.parse(OFFER)
    m = d.media[0]
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 4000, "RTP/AVP", ["8", "0", "101"])
    assert list(m.codecs().items()) == [(8, "PCMA"), (0, "PCMU"), (101, "telephone-event")]
    assert m.rtcp_port == 4005 and not m.rtcp_mux and m.direction == "sendrecv"
    assert d.media_connection(0) == "10.0.0.1"
    assert sdp.parse(d.serialise()).serialise() == d.serialise()


def test_rewriting_connection_and_origin_keeps_everything_else() -> None:
    d = sdp.parse(OFFER)
    d.set_connection("127.0.0.1")
    d.replace_origin("127.0.0.1")
    text = d.serialise()
    assert "c=IN IP4 127.0.0.1" in text and "o=alice 1 1 IN IP4 127.0.0.1" in text
    assert "10.0.0.1" not in text and "a=fmtp:101 0-16" in text


def test_garbage_is_refused_with_a_named_error() -> None:
    with pytest.raises(sdp.SdpError):
        sdp.parse("v=0\r\nm=audio notaport RTP/AVP 0\r\n")
