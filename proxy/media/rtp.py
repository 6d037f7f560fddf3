"""RTP packets (RFC 3550 §5.1): parse and serialise, header extensions and CSRCs kept.

A packet is a dataclass with :meth:`RtpPacket.parse` and ``bytes(packet)``. Parsing checks only
what a relay must trust (version, lengths, padding); everything else is carried verbatim.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
RTP_SEQ_MOD = 1 << 16
RTP_TS_MOD = 1 << 32

# Payload types 64-95 collide with RTCP packet types 192-223 under rtcp-mux (RFC 5761 §4).
RTCP_PT_MIN = 192
RTCP_PT_MAX = 223


class RtpParseError(ValueError):
    """A datagram is not a well-formed RTP packet."""


def is_rtcp(data: bytes) -> bool:
    """True if a datagram on an rtcp-mux port is RTCP (RFC 5761 §4), judged by byte 1.

    Only the demultiplexing decision: whether it really is RTCP is :func:`valid_rtcp`'s call.
    """
    return len(data) >= 2 and RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX


def valid_rtcp_header(data: bytes) -> bool:
    """The first RTCP header looks right: version 2, packet type 192-223, at least header and
    SSRC (8 bytes). All an SRTCP packet shows in clear before it is authenticated."""
    return len(data) >= 8 and data[0] >> 6 == RTP_VERSION and \
        RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX


def valid_rtcp(data: bytes) -> bool:
    """A whole (compound) RTCP datagram (RFC 3550 §6.1 / A.2, RFC 5761 §4).

    Every packet in it has version 2 and a packet type in 192-223 (marker bit set, PT 64-95:
    the range RTP may not use under rtcp-mux), and the length fields add up exactly to the
    datagram. Why so strict: what an RTCP port relays must be something no receiver would
    play as audio; plain RTP sent to an RTCP port fails on byte 1 or on the lengths.
    """
    end = len(data)
    if end < 8:
        return False
    pos = 0
    while pos < end:
        if end - pos < 4 or data[pos] >> 6 != RTP_VERSION or \
                not RTCP_PT_MIN <= data[pos + 1] <= RTCP_PT_MAX:
            return False
        pos += ((data[pos + 2] << 8 | data[pos + 3]) + 1) * 4
    return pos == end


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. ``payload`` excludes padding; ``extension`` is the raw profile data."""

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raise :class:`RtpParseError` saying what is wrong."""
        if len(data) < RTP_HEADER_LENGTH:
            raise RtpParseError(
                f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes ({len(data)})"
            )
        first, second, seq, ts, ssrc = struct.unpack_from("!BBHLL", data, 0)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpParseError(f"RTP packet has invalid version {version}")
        cc = first & 0x0F
        pos = RTP_HEADER_LENGTH + 4 * cc
        if len(data) < pos:
            raise RtpParseError(f"RTP packet truncated in CSRC list ({len(data)} < {pos})")
        csrc = list(struct.unpack_from(f"!{cc}L", data, RTP_HEADER_LENGTH)) if cc else []
        ext_profile: int | None = None
        extension = b""
        if first & 0x10:
            if len(data) < pos + 4:
                raise RtpParseError("RTP packet truncated in extension header")
            ext_profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            end = pos + 4 * words
            if len(data) < end:
                raise RtpParseError("RTP packet truncated in extension data")
            extension = data[pos:end]
            pos = end
        padding = 0
        end = len(data)
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or pos + padding > len(data):
                raise RtpParseError(f"RTP packet padding length is invalid ({padding})")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=bool(second & 0x80),
            csrc=csrc,
            extension_profile=ext_profile,
            extension=extension,
            payload=data[pos:end],
            padding_size=padding,
        )

    def __bytes__(self) -> bytes:
        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        parts = [
            struct.pack(
                "!BBHLL",
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}L", *self.csrc))
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise ValueError("RTP extension data must be a multiple of 4 bytes")
            parts.append(struct.pack("!HH", self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(b"\x00" * (self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


def seq_after(a: int, b: int) -> bool:
    """True if sequence number ``a`` comes after ``b`` (RFC 3550 modular comparison)."""
    return a != b and ((a - b) % RTP_SEQ_MOD) < RTP_SEQ_MOD // 2
