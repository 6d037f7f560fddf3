"""SRTP contexts: our direct libsrtp path against pylibsrtp's public API, and its failures."""

from __future__ import annotations

import struct

import pylibsrtp
import pytest

from proxy.control import sdes
from proxy.media.srtp import MAX_PACKET, SrtpError, SrtpReceiver, SrtpSender, _Context
from proxy.media.types import SrtpParams

SUITES = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4,
          "AEAD_AES_128_GCM": 16, "AEAD_AES_256_GCM": 16}


def rtp(seq: int, payload: bytes = bytes(range(160)), ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def rtcp_sender_report(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(("suite", "tag_length"), SUITES.items())
def test_round_trip_and_interoperates_with_pylibsrtp(suite: str, tag_length: int) -> None:
    params = sdes.generate(suite, 1).params
    sender, receiver = SrtpSender(params), SrtpReceiver(params)
    library_receiver = pylibsrtp.Session(_policy(params, inbound=True))
    library_sender = pylibsrtp.Session(_policy(params, inbound=False))
    for seq in range(5):
        plain = rtp(seq)
        wire = sender.protect(plain)
        assert len(wire) == len(plain) + tag_length
        assert wire[12:172] != plain[12:]  # the payload is encrypted
        assert library_receiver.unprotect(wire) == plain
        assert receiver.unprotect(library_sender.protect(rtp(100 + seq))) == rtp(100 + seq)
    report = rtcp_sender_report()
    assert receiver.unprotect_rtcp(sender.protect_rtcp(report)) == report


def _policy(params: SrtpParams, inbound: bool) -> pylibsrtp.Policy:
    """The policy proxy.media.srtp builds, rebuilt through pylibsrtp's public API alone."""
    profiles = {
        "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
        "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
        "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    }
    return pylibsrtp.Policy(
        key=params.key_salt, srtp_profile=profiles[params.suite],
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else
        pylibsrtp.Policy.SSRC_ANY_OUTBOUND)


def test_tampered_replayed_wrong_key_and_oversized_packets_raise() -> None:
    params = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params
    sender, receiver = SrtpSender(params), SrtpReceiver(params)
    wire = sender.protect(rtp(7))
    tampered = bytearray(wire)
    tampered[20] ^= 1
    with pytest.raises(SrtpError, match="authentication failed"):
        receiver.unprotect(bytes(tampered))
    assert receiver.unprotect(wire) == rtp(7)  # the tampered copy did not spend the index
    with pytest.raises(SrtpError, match="replayed"):
        receiver.unprotect(wire)
    other = SrtpReceiver(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params)
    with pytest.raises(SrtpError, match="authentication failed"):
        other.unprotect(sender.protect(rtp(8)))
    with pytest.raises(SrtpError, match="longer than"):
        sender.protect(rtp(9, bytes(MAX_PACKET)))
    with pytest.raises(SrtpError):
        receiver.unprotect(b"\x80\x00")  # shorter than a header: refused, not a crash


def test_contexts_do_not_share_buffers() -> None:
    """Each context writes into its own buffer: a result stays valid after another call."""
    a = SrtpSender(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params)
    b = SrtpSender(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params)
    first = a.protect(rtp(1))
    kept = bytes(first)
    a.protect(rtp(2))
    b.protect(rtp(3))
    assert first == kept


def test_reordering_within_1024_packets_is_accepted_and_older_is_refused() -> None:
    params = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params
    sender = SrtpSender(params)
    wires = [sender.protect(rtp(seq)) for seq in range(1101)]
    receiver = SrtpReceiver(params)
    assert receiver.unprotect(wires[1100]) == rtp(1100)
    assert receiver.unprotect(wires[1100 - 1023]) == rtp(1100 - 1023)
    with pytest.raises(SrtpError, match=r"^SRTP unprotect failed: packet too old for the replay"):
        receiver.unprotect(wires[1100 - 1024])


def test_the_same_packet_may_be_protected_again() -> None:
    """A relay forwards what the peer repeats (retransmissions, duplicates): no replay error."""
    sender = SrtpSender(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params)
    assert sender.protect(rtp(7)) == sender.protect(rtp(7))


def test_a_packet_of_exactly_the_maximum_size_is_protected() -> None:
    params = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params
    largest = rtp(1, bytes(MAX_PACKET - 12))
    assert len(SrtpSender(params).protect(largest)) == MAX_PACKET + 10  # tag beyond the limit
    fits = rtp(2, bytes(MAX_PACKET - 12 - 10))  # arrives as exactly MAX_PACKET bytes
    assert SrtpReceiver(params).unprotect(SrtpSender(params).protect(fits)) == fits
    with pytest.raises(SrtpError, match=f"^SRTP protect: {MAX_PACKET + 1}-byte packet is longer "
                                        f"than {MAX_PACKET}$"):
        SrtpSender(params).protect(largest + b"x")


def test_each_operation_names_itself_in_its_errors() -> None:
    params = sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params
    sender, receiver = SrtpSender(params), SrtpReceiver(params)
    for operation, name in ((sender.protect, "SRTP protect"),
                            (sender.protect_rtcp, "SRTCP protect"),
                            (receiver.unprotect, "SRTP unprotect"),
                            (receiver.unprotect_rtcp, "SRTCP unprotect")):
        with pytest.raises(SrtpError, match=f"^{name} failed: bad parameter$"):
            operation(b"")
        with pytest.raises(SrtpError, match=f"^{name}: 1501-byte packet is longer than 1500$"):
            operation(bytes(MAX_PACKET + 1))


def test_a_status_without_a_name_is_reported_by_number() -> None:
    context = _Context(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1).params, inbound=True)
    with pytest.raises(SrtpError, match=r"^probe failed: status 99$"):
        context.run(lambda srtp, buffer, length: 99, b"\x80" * 12, "probe")


def test_an_unsupported_suite_is_refused_by_name() -> None:
    params = SrtpParams("NULL_HMAC_SHA1_80", bytes(30))
    with pytest.raises(SrtpError, match=r"^unsupported SRTP suite NULL_HMAC_SHA1_80$"):
        SrtpSender(params)
