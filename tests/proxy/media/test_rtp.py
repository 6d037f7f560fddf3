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


BYE_NO_SOURCES = bytes([0x80, 203, 0, 0])  # a header alone: 4 bytes, length 0


@pytest.mark.parametrize("data", [
    RR + BYE_NO_SOURCES,  # the last packet 4 bytes long
    bytes([0x80, 192, 0, 1]) + bytes(4) + bytes([0x80, 223, 0, 1]) + bytes(4),  # both ends
    bytes([0x80, 204, 1, 0]) + bytes(1024),  # APP, 1 028 bytes: length 256 (high byte 1)
    RR + bytes([0x80, 204, 1, 0]) + bytes(1024),  # the same after another packet
], ids=["last-4-bytes", "pt-192-and-223", "length-256", "length-256-second"])
def test_valid_rtcp_walks_every_length_and_packet_type_range(data: bytes) -> None:
    assert valid_rtcp(data)


@pytest.mark.parametrize("tail", [1, 2, 3])
def test_a_compound_with_a_few_bytes_left_over_is_not_rtcp(tail: int) -> None:
    assert not valid_rtcp(RR + bytes([0x80, 200, 0])[:tail])


@pytest.mark.parametrize(("data", "valid"), [
    (bytes([0x80, 192, 0, 1]) + bytes(4), True),  # the range's ends
    (bytes([0x80, 223, 0, 1]) + bytes(4), True),
    (bytes([0x80, 191, 0, 1]) + bytes(4), False),
    (bytes([0x80, 224, 0, 1]) + bytes(4), False),
    (bytes([0x80, 200, 0, 6]) + bytes(3), False),  # 7 bytes: no room for the SSRC
    (bytes([0x00, 200, 0, 1]) + bytes(4), False),  # version 0
    (bytes([0xC0, 200, 0, 1]) + bytes(4), False),  # version 3
], ids=["pt-192", "pt-223", "pt-191", "pt-224", "short", "version-0", "version-3"])
def test_an_srtcp_header_is_judged_by_version_type_and_length(data: bytes, valid: bool) -> None:
    # Only the clear part of SRTCP: its lengths cannot be walked before it is authenticated.
    assert valid_rtcp_header(data) is valid


def test_an_rtp_packet_shaped_exactly_like_rtcp_passes_and_is_rtcp_to_every_receiver() -> None:
    """The limit of the check: marker + PT 72 with seq 42 and 168 bytes after the header is,
    byte for byte, an RTCP SR; a receiver demuxes it as RTCP (RFC 5761 §4), never plays it."""
    assert valid_rtcp(bytes([0x80, 200, 0, 42]) + bytes(168))


def header(first: int, second: int = 0) -> bytes:
    """A 12-byte fixed header with the given first two bytes (seq 1, ts 2, ssrc 3)."""
    return bytes([first, second]) + bytes.fromhex("0001" "00000002" "00000003")


def test_a_bare_header_is_a_packet_with_nothing_else():
    p = RtpPacket.parse(header(0x80))
    assert p == RtpPacket(payload_type=0, sequence_number=1, timestamp=2, ssrc=3, marker=False)
    assert (p.csrc, p.extension_profile, p.extension, p.payload, p.padding_size) == (
        [], None, b"", b"", 0)
    assert bytes(p) == header(0x80)


def test_csrcs_may_end_the_packet_and_an_odd_count_is_not_an_extension_or_padding():
    data = header(0x83) + bytes.fromhex("00000001" "00000002" "00000003")  # CC=3, no X, no P
    p = RtpPacket.parse(data)
    assert p.csrc == [1, 2, 3] and p.extension_profile is None and p.padding_size == 0
    assert p.payload == b"" and bytes(p) == data
    p = RtpPacket.parse(header(0x81) + bytes.fromhex("00000007") + b"\xaa")  # CC=1
    assert (p.csrc, p.extension, p.padding_size, p.payload) == ([7], b"", 0, b"\xaa")


def test_a_truncated_csrc_list_is_refused_with_both_lengths():
    with pytest.raises(RtpParseError, match=r"^RTP packet truncated in CSRC list \(19 < 20\)$"):
        RtpPacket.parse(header(0x82) + bytes(7))


def test_an_empty_extension_may_end_the_packet():
    data = header(0x90) + bytes.fromhex("bede0000")
    p = RtpPacket.parse(data)
    assert (p.extension_profile, p.extension, p.payload, p.csrc) == (0xBEDE, b"", b"", [])
    assert bytes(p) == data


def test_extension_data_may_end_the_packet():
    data = header(0x90) + bytes.fromhex("bede0002" "11223344" "55667788")
    p = RtpPacket.parse(data)
    assert p.extension == bytes.fromhex("1122334455667788") and p.payload == b""
    assert bytes(p) == data


def test_truncated_extensions_are_refused_saying_where():
    with pytest.raises(RtpParseError, match=r"^RTP packet truncated in extension header$"):
        RtpPacket.parse(header(0x90) + bytes.fromhex("bede00"))
    with pytest.raises(RtpParseError, match=r"^RTP packet truncated in extension data$"):
        RtpPacket.parse(header(0x90) + bytes.fromhex("bede0002" "11223344" "556677"))


def test_padding_may_take_every_byte_after_the_header():
    p = RtpPacket.parse(header(0xA0) + bytes.fromhex("00000004"))
    assert p.payload == b"" and p.padding_size == 4
    p = RtpPacket.parse(header(0xA0) + b"\xaa\x01")  # one byte of padding: the count itself
    assert p.payload == b"\xaa" and p.padding_size == 1
    assert bytes(p) == header(0xA0) + b"\xaa\x01"


@pytest.mark.parametrize("tail", [b"\x00", b"\xaa\x00", bytes.fromhex("00000005")])
def test_a_zero_or_overlong_padding_count_is_refused(tail):
    with pytest.raises(RtpParseError, match=r"^RTP packet padding length is invalid \(\d+\)$"):
        RtpPacket.parse(header(0xA0) + tail)


def test_serialising_sets_each_flag_bit_alone():
    assert bytes(RtpPacket(extension_profile=0xBEDE))[0] == 0x90
    assert bytes(RtpPacket(padding_size=4))[0] == 0xA0
    assert bytes(RtpPacket(padding_size=4))[-4:] == bytes.fromhex("00000004")
    assert bytes(RtpPacket(payload_type=0, marker=False))[1] == 0x00
    assert bytes(RtpPacket(payload_type=8, marker=True))[1] == 0x88


def test_extension_data_not_a_whole_number_of_words_cannot_be_serialised():
    with pytest.raises(ValueError, match=r"^RTP extension data must be a multiple of 4 bytes$"):
        bytes(RtpPacket(extension_profile=0xBEDE, extension=b"\x01\x02\x03"))


@pytest.mark.parametrize(("pt", "rtcp"), [(191, False), (192, True), (200, True), (223, True),
                                          (224, False), (0x80 | 0, False), (0x80 | 96, False)])
def test_rtcp_is_packet_types_192_to_223(pt, rtcp):
    assert is_rtcp(bytes([0x80, pt])) is rtcp
    assert is_rtcp(bytes([0x80, pt]) + bytes(10)) is rtcp


def test_one_byte_is_not_rtcp():
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")


def test_sequence_numbers_less_than_half_the_space_ahead_come_after():
    assert seq_after(32767, 0) and not seq_after(32768, 0)
    assert seq_after(100, 65535 - 32666) and not seq_after(100, 65535 - 32667)
