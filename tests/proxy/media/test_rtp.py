"""RTP parse / serialise: fields, byte-exact round trip, truncation at every length."""

import pytest

from proxy.media.rtp import (
    RtpPacket,
    RtpParseError,
    is_rtcp,
    seq_after,
    valid_rtcp,
    valid_rtcp_header,
)

# V=2, M=1, PT=0, seq=0x1234, ts=0xdeadbeef, ssrc=0x01020304, 4 payload bytes.
SIMPLE = bytes.fromhex("80801234deadbeef01020304") + b"\xff\xfe\xfd\xfc"
# V=2, X=1, CC=1, PT=101, one CSRC, extension profile 0xBEDE with one word, padding 4.
FULL = (
    bytes.fromhex("b1651234000003e8cafebabe")
    + bytes.fromhex("11223344")
    + bytes.fromhex("bede0001")
    + bytes.fromhex("10aa0000")
    + bytes.fromhex("050a00a0")
    + bytes.fromhex("00000004")
)


def test_simple_packet_fields_and_round_trip():
    p = RtpPacket.parse(SIMPLE)
    assert (p.payload_type, p.sequence_number, p.timestamp, p.ssrc, p.marker) == (
        0, 0x1234, 0xDEADBEEF, 0x01020304, True
    )
    assert p.payload == b"\xff\xfe\xfd\xfc"
    assert bytes(p) == SIMPLE


def test_full_packet_fields_and_round_trip():
    p = RtpPacket.parse(FULL)
    assert p.payload_type == 101 and not p.marker
    assert p.csrc == [0x11223344]
    assert p.extension_profile == 0xBEDE and p.extension == bytes.fromhex("10aa0000")
    assert p.payload == bytes.fromhex("050a00a0") and p.padding_size == 4
    assert bytes(p) == FULL


def _full_prefix_error(n: int) -> str:
    """What a prefix of FULL (12 header, 4 CSRC, 4 + 4 extension, 4 payload, 4 padding) lacks."""
    if n < 12:
        return r"less than 12 bytes"
    if n < 16:
        return r"truncated in CSRC list"
    if n < 20:
        return r"truncated in extension header"
    if n < 24:
        return r"truncated in extension data"
    return r"padding length is invalid"  # the last byte is no longer a valid padding count


@pytest.mark.parametrize("n", range(len(FULL)))
def test_every_truncation_of_a_full_packet_is_refused_saying_where(n: int) -> None:
    with pytest.raises(RtpParseError, match=_full_prefix_error(n)):
        RtpPacket.parse(FULL[:n])


def test_a_simple_packet_cut_in_its_payload_keeps_what_arrived() -> None:
    for n in range(len(SIMPLE)):
        if n < 12:
            with pytest.raises(RtpParseError, match=rf"less than 12 bytes \({n}\)"):
                RtpPacket.parse(SIMPLE[:n])
        else:  # RTP has no payload length: a shorter payload is all a relay can know
            assert RtpPacket.parse(SIMPLE[:n]).payload == SIMPLE[12:n]


def test_an_extension_longer_than_the_packet_is_refused() -> None:
    data = bytearray(FULL)
    data[18:20] = (200).to_bytes(2, "big")  # 200 words of extension claimed, 4 bytes present
    with pytest.raises(RtpParseError, match="truncated in extension data"):
        RtpPacket.parse(bytes(data))


def test_short_packet_error_message():
    with pytest.raises(RtpParseError, match=r"less than 12 bytes \(3\)"):
        RtpPacket.parse(b"\x80\x00\x00")


def test_wrong_version_error_message():
    with pytest.raises(RtpParseError, match="invalid version 1"):
        RtpPacket.parse(b"\x40" + SIMPLE[1:])


def test_bad_padding_is_refused():
    data = bytearray(SIMPLE)
    data[0] |= 0x20
    data[-1] = 200
    with pytest.raises(RtpParseError, match="padding length is invalid"):
        RtpPacket.parse(bytes(data))


def test_rtcp_demux_by_packet_type():
    assert is_rtcp(bytes([0x80, 200]))  # SR
    assert not is_rtcp(SIMPLE)


def test_sequence_comparison_wraps():
    assert seq_after(1, 0) and seq_after(0, 65535) and not seq_after(65535, 0)
    assert not seq_after(5, 5)


RR = bytes([0x80, 201, 0, 1]) + bytes(4)  # receiver report, no blocks
SDES = bytes([0x81, 202, 0, 2]) + bytes(4) + bytes([1, 0, 0, 0])


def test_valid_rtcp_accepts_single_and_compound_packets() -> None:
    assert valid_rtcp(RR) and valid_rtcp(RR + SDES)
    assert valid_rtcp_header(RR)


@pytest.mark.parametrize("data", [
    SIMPLE,  # plain RTP: byte 1 is not 192-223
    bytes([0x80, 191, 0, 1]) + bytes(4),  # PT just below the range
    bytes([0x80, 224, 0, 1]) + bytes(4),  # just above
    bytes([0x40, 201, 0, 1]) + bytes(4),  # version 1
    RR + b"\x00",  # lengths do not add up to the datagram
    RR[:-1],  # truncated
    RR + bytes([0x80, 0, 0, 1]) + bytes(4),  # an RTP-looking packet after a valid one
    bytes([0x80, 200, 0, 42]) + bytes(160),  # RTP, PT 72: seq 42 read as a length misfits
], ids=["rtp", "pt-191", "pt-224", "version-1", "trailing", "truncated", "rtp-after",
        "rtp-pt72"])
def test_valid_rtcp_rejects_what_is_not_rtcp(data: bytes) -> None:
    assert not valid_rtcp(data)


def test_an_rtp_packet_shaped_exactly_like_rtcp_passes_and_is_rtcp_to_every_receiver() -> None:
    """The limit of the check: marker + PT 72 with seq 42 and 168 bytes after the header is,
    byte for byte, an RTCP SR; a receiver demuxes it as RTCP (RFC 5761 §4), never plays it."""
    assert valid_rtcp(bytes([0x80, 200, 0, 42]) + bytes(168))
