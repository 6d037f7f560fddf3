"""SRTP/SRTCP contexts for one direction of one stream, from SDES key material (pylibsrtp)."""

from __future__ import annotations

import pylibsrtp

from proxy.media.types import SrtpParams

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


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


class SrtpReceiver:
    """Unprotects what a peer sends us with the key from its ``a=crypto``."""

    def __init__(self, params: SrtpParams) -> None:
        self._session = _session(params, inbound=True)

    def unprotect(self, packet: bytes) -> bytes:
        try:
            return self._session.unprotect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP unprotect failed: {exc}") from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._session.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP unprotect failed: {exc}") from None


class SrtpSender:
    """Protects what we send a peer with the key we advertised to it."""

    def __init__(self, params: SrtpParams) -> None:
        self._session = _session(params, inbound=False)

    def protect(self, packet: bytes) -> bytes:
        try:
            return self._session.protect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._session.protect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None
