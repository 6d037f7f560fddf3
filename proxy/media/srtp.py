"""SRTP/SRTCP contexts for one direction of one stream, from SDES key material (pylibsrtp).

A context also says where its packet index stands (:meth:`SrtpReceiver.index`: the last RTP
packet's SSRC and sequence number, and libsrtp's rollover counter for that SSRC) and can be
told to continue from a stored one (:meth:`SrtpReceiver.resume`): a node restarted after
65 536 packets of a call would otherwise start at ROC 0 and neither decrypt what the phone sends
nor encrypt what it can decrypt (RFC 3711 §3.3.1: the ROC is part of the index, never sent).
"""

from __future__ import annotations

import ctypes

import pylibsrtp
from pylibsrtp import _binding
from pylibsrtp._binding import ffi, lib

from proxy.media.types import SrtpIndex, SrtpParams

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


_protect, _unprotect = lib.srtp_protect, lib.srtp_unprotect
_protect_rtcp, _unprotect_rtcp = lib.srtp_protect_rtcp, lib.srtp_unprotect_rtcp

# The rollover counter's getter and setter are exported by the libsrtp that pylibsrtp bundles
# (2.7) but not declared in its cffi module: reached through ctypes on the same shared object
# (dlopen of a loaded path returns the loaded copy, so it is the same libsrtp, same sessions).
_LIBSRTP = ctypes.CDLL(_binding.__file__)
_set_stream_roc = _LIBSRTP.srtp_set_stream_roc
_set_stream_roc.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
_set_stream_roc.restype = ctypes.c_int
_get_stream_roc = _LIBSRTP.srtp_get_stream_roc
_get_stream_roc.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))
_get_stream_roc.restype = ctypes.c_int
_BAD_PARAM = 2  # srtp_err_status_bad_param: no stream for that SSRC in the session
# How far a packet after a restart may be *behind* the stored index and still count as of the
# stored ROC (reordering, the stored packet being a little ahead): anything further behind is
# taken as the next ROC (the phone wrapped while the node was down).
RESUME_BEHIND = 1024


def resumed_roc(stored: SrtpIndex, seq: int) -> int:
    """The rollover counter of a packet with sequence number ``seq`` from ``stored``'s SSRC.

    ``stored`` is a *recent lower bound* of the index (written when the index passes each
    quarter of the sequence space, so it trails the real one by at most 16 384 packets plus
    the restart): the packet is at ``stored.roc`` if its sequence number is at or above the
    stored one (less :data:`RESUME_BEHIND`), else one rollover further.
    """
    ahead = (seq - stored.seq) % 65536
    if ahead >= 65536 - RESUME_BEHIND:  # a little behind the stored packet
        return stored.roc if seq <= stored.seq else max(stored.roc - 1, 0)
    return stored.roc if seq >= stored.seq else stored.roc + 1


class SrtpError(Exception):
    """Authentication, replay or key failure (the packet is dropped and counted)."""


def _policy(params: SrtpParams, inbound: bool, ssrc: int | None = None) -> pylibsrtp.Policy:
    """The session's template (any SSRC of the direction), or one SSRC's own stream."""
    profile = _PROFILES.get(params.suite)
    if profile is None:
        raise SrtpError(f"unsupported SRTP suite {params.suite}")
    if ssrc is not None:
        ssrc_type = pylibsrtp.Policy.SSRC_SPECIFIC
    else:
        ssrc_type = (pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound
                     else pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy = pylibsrtp.Policy(key=params.key_salt, ssrc_type=ssrc_type,
                              ssrc_value=ssrc or 0, srtp_profile=profile)
    # Reordered packets are normal on a relay's inbound side; allow a generous window.
    policy.window_size = 1024
    policy.allow_repeat_tx = True
    return policy


def _session(params: SrtpParams, inbound: bool) -> pylibsrtp.Session:
    return pylibsrtp.Session(_policy(params, inbound))


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
        self._params = params
        self._inbound = inbound
        self._handle = int(ffi.cast("uintptr_t", self._srtp))  # for the ctypes calls
        self._roc = ctypes.c_uint32()
        self.pending: SrtpIndex | None = None  # a stored index not yet applied (see resume)

    def index(self, last: bytes | None) -> SrtpIndex | None:
        """``last`` (the last RTP packet through it)'s SSRC and sequence number, and the
        session's ROC for that SSRC."""
        if last is None or len(last) < 12:
            return None
        ssrc = int.from_bytes(last[8:12])
        if _get_stream_roc(self._handle, ssrc, ctypes.byref(self._roc)):
            return None  # no stream for it (cannot happen once a packet went through)
        return SrtpIndex(ssrc, self._roc.value, int.from_bytes(last[2:4]))

    def apply(self, packet: bytes) -> None:
        """Before ``packet`` goes through a resumed context: when it is from the stored SSRC,
        give libsrtp the rollover counter it must be at (another SSRC starts at ROC 0, as any
        new SSRC does)."""
        stored = self.pending
        if stored is None or len(packet) < 12 or int.from_bytes(packet[8:12]) != stored.ssrc:
            return
        roc = resumed_roc(stored, int.from_bytes(packet[2:4]))
        status = _set_stream_roc(self._handle, stored.ssrc, roc)
        if status == _BAD_PARAM:  # no stream for it yet: one of its own, same key
            self._session.add_stream(_policy(self._params, self._inbound, stored.ssrc))
            status = _set_stream_roc(self._handle, stored.ssrc, roc)
        if status:
            raise SrtpError(f"setting the rollover counter failed: "
                            f"{_STATUS.get(status, f'status {status}')}")

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


class _Resumable:
    """What both directions share: the index report and the resume after a restart.

    A resumed context runs its first packets through ``_resuming`` (set as an instance
    attribute over the class's fast method, and deleted once done), so the packet path of
    every other context has no extra test.
    """

    _context: _Context
    _name: str
    last: bytes | None = None  # the last RTP packet through it (its header is in clear)

    def index(self) -> SrtpIndex | None:
        return self._context.index(self.last)

    def quarter(self) -> tuple[bytes, int] | None:
        """The last packet's SSRC and quarter of the sequence space, without asking libsrtp
        (cheap: the engine compares it every second and reads :meth:`index` only when it
        moved; the ROC cannot change without it moving)."""
        last = self.last
        return None if last is None or len(last) < 12 else (last[8:12], last[2] >> 6)

    def resume(self, stored: SrtpIndex | None) -> None:
        """Continue from ``stored`` (None: nothing stored, ROC 0 as for a new call)."""
        self._context.pending = stored
        if stored is not None:
            setattr(self, self._name, self._resuming)

    def _resuming(self, packet: bytes) -> bytes:
        self._context.apply(packet)
        # Raises on failure (a stranger's packet, one estimated wrongly): the next packet is
        # estimated afresh. Once one went through, libsrtp tracks the index itself.
        out: bytes = type(self).__dict__[self._name](self, packet)
        self._context.pending = None
        delattr(self, self._name)
        return out


class SrtpReceiver(_Resumable):
    """Unprotects what a peer sends us with the key from its ``a=crypto``."""

    _name = "unprotect"

    def __init__(self, params: SrtpParams) -> None:
        self._context = _Context(params, inbound=True)

    def unprotect(self, packet: bytes) -> bytes:
        out = self._context.run(_unprotect, packet, "SRTP unprotect")
        self.last = packet  # only once it authenticated: a stranger's never counts
        return out

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._context.run(_unprotect_rtcp, packet, "SRTCP unprotect")


class SrtpSender(_Resumable):
    """Protects what we send a peer with the key we advertised to it."""

    _name = "protect"

    def __init__(self, params: SrtpParams) -> None:
        self._context = _Context(params, inbound=False)

    def protect(self, packet: bytes) -> bytes:
        out = self._context.run(_protect, packet, "SRTP protect")
        self.last = packet
        return out

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._context.run(_protect_rtcp, packet, "SRTCP protect")
