"""DTLS-SRTP and ICE keying of one leg facing a WebRTC party (beside :mod:`keying` = SDES).

What the SDP says and what the media plane needs, per stream:

- DTLS roles (RFC 5763 §5, RFC 8842 §5): our offer says ``a=setup:actpass`` (or ``passive`` /
  ``active`` when ng ``DTLS`` asks), and the answerer's ``active``/``passive`` decides who sends
  the ClientHello; answering an ``actpass`` offer we take ``active`` (RFC 8842 §5.3, as
  rtpengine does by default) unless ng ``DTLS=passive``. An answer that says ``actpass`` or
  contradicts our own ``active``/``passive`` is refused.
- The peer's certificate fingerprint(s) (RFC 8122; media level, else session level) are what
  the handshake is checked against; without one a DTLS leg is refused.
- ICE-lite: our ufrag/password are per leg and stable across re-negotiation (a browser keeps
  its ICE session on a re-offer); one host candidate on the media address.

Until the peer's answer names its fingerprint and our role is known the leg's
:class:`~proxy.media.types.DtlsParams` have no fingerprints: the media plane keeps it gated
(nothing relayed, no handshake), which is the fail-closed default.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from proxy.control import ng
from proxy.control.sdp import MediaSection, SessionDescription
from proxy.media.dtls import HASHES, NodeCertificate
from proxy.media.types import DtlsParams, DtlsRole, IceParams, LocalEndpoint

WEBRTC_PROTOCOLS = ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP")
SETUPS = ("actpass", "active", "passive")
DTLS_MODES = ("", "passive", "active", "off", "no", "disable")
FINGERPRINT_HASHES = tuple(HASHES)  # sha-1 ... sha-512, as ng DTLS-fingerprint names them
# RFC 8445 §5.1.2.1: type preference 126 (host), local preference 65535, component 1.
HOST_PRIORITY = (126 << 24) | (65535 << 8) | (256 - 1)


def _level(section: MediaSection, session: SessionDescription, name: str) -> list[str]:
    """``a=name`` values of the media section, else of the session (RFC 8839 §5.4, 8122 §5)."""
    found = section.attributes(name)
    if found:
        return found
    out = []
    for t, v in session.lines:
        if t == "a":
            key, _, rest = v.partition(":")
            if key == name:
                out.append(rest)
    return out


def has_ice(section: MediaSection, session: SessionDescription) -> bool:
    return bool(_level(section, session, "ice-ufrag"))


@dataclass
class DtlsLeg:
    """One stream's WebRTC state toward the party it faces."""

    ufrag: str = field(default_factory=lambda: secrets.token_hex(4))  # ice-chars: hex is
    pwd: str = field(default_factory=lambda: secrets.token_hex(12))  # 24 >= 22 chars (§5.4)
    their_ufrag: str = ""
    their_fingerprints: tuple[tuple[str, str], ...] = ()
    their_setup: str = ""
    their_mid: str = ""
    our_setup: str = ""  # what we last advertised
    role: DtlsRole | None = None  # ours, once both setups are known
    ice: bool = False  # ICE toward this party

    def __repr__(self) -> str:  # the password never reaches a log
        return f"DtlsLeg(ufrag={self.ufrag!r}, role={self.role!r}, ice={self.ice})"

    def accept(self, section: MediaSection, session: SessionDescription, *, offer: bool,
               index: int) -> None:
        """Read the party's DTLS/ICE attributes from its offer or its answer."""
        fingerprints = []
        for value in _level(section, session, "fingerprint"):
            algorithm, _, digest = value.strip().partition(" ")
            if algorithm.lower() in HASHES and digest.strip():
                fingerprints.append((algorithm.lower(), digest.strip().upper()))
        if not fingerprints:
            raise ng.NgError(f"media {index}: {section.proto} without an a=fingerprint "
                             f"ToneGuard can check ({', '.join(FINGERPRINT_HASHES)})")
        setups = _level(section, session, "setup")
        setup = setups[0].strip().lower() if setups else ("actpass" if offer else "active")
        if setup not in SETUPS:
            raise ng.NgError(f"media {index}: a=setup:{setup[:20]} is not usable for DTLS-SRTP")
        if not offer:
            if setup == "actpass":
                raise ng.NgError(f"media {index}: an answer must not say a=setup:actpass "
                                 "(RFC 5763 §5)")
            if self.our_setup in ("active", "passive") and setup == self.our_setup:
                raise ng.NgError(f"media {index}: both ends say a=setup:{setup}")
            self.role = "server" if setup == "active" else "client"
        self.their_setup = setup
        self.their_fingerprints = tuple(fingerprints)
        ufrags = _level(section, session, "ice-ufrag")
        self.their_ufrag = ufrags[0].strip() if ufrags else ""
        mids = section.attributes("mid")
        self.their_mid = mids[0].strip() if mids else self.their_mid

    def advertise(self, out: MediaSection, *, offer: bool, mode: str, ice: bool,
                  local: LocalEndpoint, address: str, certificate: NodeCertificate,
                  hash_name: str) -> None:
        """Our ``a=setup``, ``a=fingerprint`` and (with ``ice``) ICE-lite lines in ``out``."""
        if offer:
            setup = mode if mode in ("active", "passive") else "actpass"
            if setup != "actpass":
                self.role = "client" if setup == "active" else "server"
            # actpass: the answer decides; a re-offer keeps the role (and the association)
            # until an answer changes it (RFC 5763 §6.6 / RFC 8842 §5.5)
        else:
            if self.their_setup == "active":
                setup = "passive"
            elif self.their_setup == "passive":
                setup = "active"
            else:  # actpass: RFC 8842 §5.3 — the answerer SHOULD be active
                setup = "passive" if mode == "passive" else "active"
            self.role = "client" if setup == "active" else "server"
        self.our_setup = setup
        self.ice = ice
        out.add_attribute("setup", setup)
        out.add_attribute("fingerprint", f"{hash_name} {certificate.fingerprint(hash_name)}")
        if ice:
            out.add_attribute("ice-ufrag", self.ufrag)
            out.add_attribute("ice-pwd", self.pwd)
            out.add_attribute("candidate", f"1 1 UDP {HOST_PRIORITY} {address} "
                                           f"{local.rtp_port} typ host")
            out.add_attribute("end-of-candidates")

    def dtls_params(self, certificate: NodeCertificate) -> DtlsParams:
        """What the media plane runs; no fingerprints (= gated, no handshake) until both
        setups are known."""
        known = self.role is not None and bool(self.their_fingerprints)
        return DtlsParams(self.role or "server", self.their_fingerprints if known else (),
                          certificate.certificate, certificate.private_key)

    def ice_params(self) -> IceParams | None:
        return IceParams(self.ufrag, self.pwd, self.their_ufrag) if self.ice else None
