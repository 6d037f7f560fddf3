"""SRTP/SRTCP contexts for one direction of one stream, from SDES key material (pylibsrtp)."""

from __future__ import annotations

import pylibsrtp
from pylibsrtp._binding import ffi, lib

from proxy.media.types import SrtpParams

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


_protect, _unprotect = lib.srtp_protect, lib.srtp_unprotect
_protect_rtcp, _unprotect_rtcp = lib.srtp_protect_rtcp, lib.srtp_unprotect_rtcp


class SrtpError(Exception):
    """Authentication, replay or key failure (the packet is dropped and counted)."""


def _session(params: SrtpParams, inbound: bool) -> pylibsrtp.Session:
    profile = _PROFILES.get(params.suite)
    if profile is None:
        raise SrtpError(f"unsupported SRTP suite {params.suite}")
    policy = pylibsrtp.Policy(
        key=params.key_salt,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else
        pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile,
    )
    # Reordered packets are normal on a relay's inbound side; allow a generous window.
    policy.window_size = 1024
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


# libsrtp's srtp_err_status_t values a relay meets (others are reported by number).
_STATUS = {1: "failure", 2: "bad parameter", 7: "authentication failed",
           9: "replayed packet", 10: "packet too old for the replay window",
           25: "bad MKI", 26: "packet index too old", 27: "packet index too far ahead"}
MAX_PACKET = 1500  # larger datagrams are refused, not truncated
_BUFFER = MAX_PACKET + 256  # room for the longest SRTP/SRTCP trailer (tag, MKI, index)


class _Context:
    """One libsrtp session, called through cffi directly on a buffer of its own.

    Why not ``pylibsrtp.Session.protect``: per packet it allocates a length cell and goes
    through two wrapper layers, which cost about half as much again as the cipher and MAC
    themselves (0.6 µs of 1.8 µs per protect here). The session itself still comes from
    pylibsrtp, which owns and frees it.
    """

    def __init__(self, params: SrtpParams, inbound: bool) -> None:
        self._session = _session(params, inbound=inbound)
        # The srtp_t; pylibsrtp 1.0 (pinned) keeps a pointer to it. Unpacked, not indexed: an
        # index past the one cell reads another object's memory, a count of two fails here.
        (self._srtp,) = ffi.unpack(self._session._srtp, 1)
        self._buffer = ffi.new("char[]", _BUFFER)
        self._view = ffi.buffer(self._buffer)
        self._length = ffi.new("int *")

    def run(self, function: object, packet: bytes, what: str) -> bytes:
        size = len(packet)
        if size > MAX_PACKET:
            raise SrtpError(f"{what}: {size}-byte packet is longer than {MAX_PACKET}")
        self._view[0:size] = packet
        self._length[0] = size
        status = function(self._srtp, self._buffer, self._length)  # type: ignore[operator]
        if status:
            raise SrtpError(f"{what} failed: {_STATUS.get(status, f'status {status}')}")
        return self._view[0:self._length[0]]


class SrtpReceiver:
    """Unprotects what a peer sends us with the key from its ``a=crypto``."""

    def __init__(self, params: SrtpParams) -> None:
        self._context = _Context(params, inbound=True)

    def unprotect(self, packet: bytes) -> bytes:
        return self._context.run(_unprotect, packet, "SRTP unprotect")

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._context.run(_unprotect_rtcp, packet, "SRTCP unprotect")


class SrtpSender:
    """Protects what we send a peer with the key we advertised to it."""

    def __init__(self, params: SrtpParams) -> None:
        self._context = _Context(params, inbound=False)

    def protect(self, packet: bytes) -> bytes:
        return self._context.run(_protect, packet, "SRTP protect")

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._context.run(_protect_rtcp, packet, "SRTCP protect")
