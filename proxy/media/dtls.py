"""DTLS-SRTP (RFC 5764) for one stream, sans-IO: datagrams in, datagrams out, keys at the end.

The handshake runs in pyOpenSSL over memory BIOs: the engine feeds it the DTLS records that
arrive on the stream's port (demultiplexed by first byte, RFC 7983) and sends what it returns.
Retransmissions (RFC 6347 §4.2.4: 1 s doubling to 60 s) and the overall handshake timeout are
driven by :meth:`DtlsSession.poll`, which the engine calls from its tick, never per packet.

When the handshake completes, the peer's certificate is checked against the fingerprint(s)
from its SDP (RFC 8122), the negotiated ``use_srtp`` profile is mapped to a libsrtp suite and
the keying material is exported (RFC 5764 §4.2) into two :class:`SrtpParams`: the existing
libsrtp contexts (:mod:`proxy.media.srtp`) then protect and unprotect, so a relayed packet
costs exactly what an SDES one does. Any failure (fingerprint mismatch, timeout, alert, no
common profile) moves the session to FAILED with a reason, and the engine keeps the leg's
media blocked: nothing was relayed before, nothing is after.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from proxy.media.types import DtlsError as DtlsError  # defined there: see types.py
from proxy.media.types import DtlsParams, SrtpParams
from proxy.media.types import DtlsState as DtlsState

# (OpenSSL profile name, libsrtp suite as in SDES, key bytes, salt bytes): RFC 5764 §4.1.2,
# RFC 7714 §14.2. Order = our preference (GCM first: one pass, and a shorter tag).
SRTP_PROFILES: tuple[tuple[bytes, str, int, int], ...] = (
    (b"SRTP_AEAD_AES_128_GCM", "AEAD_AES_128_GCM", 16, 12),
    (b"SRTP_AES128_CM_SHA1_80", "AES_CM_128_HMAC_SHA1_80", 16, 14),
)
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"  # RFC 5764 §4.2
HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha-1": hashes.SHA1(), "sha-224": hashes.SHA224(), "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(), "sha-512": hashes.SHA512()}
# Module-level so tests can shorten them. RFC 6347 §4.2.4.1 suggests 60 s as the upper limit
# of one retransmission; a media leg that has not keyed after 30 s has failed for any caller.
HANDSHAKE_TIMEOUT = 30.0
MAX_RECORD = 1500  # a DTLS datagram larger than a path MTU is nobody's handshake: dropped
_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
            b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA")


# The one transition table (STYLE: lifecycle states are enums with one table).
_TRANSITIONS: dict[DtlsState, frozenset[DtlsState]] = {
    DtlsState.NEW: frozenset({DtlsState.CONNECTING, DtlsState.FAILED}),
    DtlsState.CONNECTING: frozenset({DtlsState.CONNECTED, DtlsState.FAILED}),
    DtlsState.CONNECTED: frozenset({DtlsState.CLOSED, DtlsState.FAILED}),
    DtlsState.FAILED: frozenset(),
    DtlsState.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class NodeCertificate:
    """The node's DTLS certificate (self-signed ECDSA P-256, as browsers generate theirs)."""

    certificate: bytes  # PEM
    private_key: bytes  # PEM

    def __repr__(self) -> str:
        return f"NodeCertificate(sha-256={self.fingerprint('sha-256')})"

    @classmethod
    def generate(cls, days: int = 365) -> NodeCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                             f"toneguard-{secrets.token_hex(8)}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=days))
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM),
                   key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))

    @classmethod
    def load(cls, certificate: bytes, private_key: bytes) -> NodeCertificate:
        """A configured certificate; raises DtlsError if it is not ECDSA/RSA PEM with its key."""
        try:
            cert = x509.load_pem_x509_certificate(certificate)
            key = serialization.load_pem_private_key(private_key, password=None)
        except ValueError as exc:
            raise DtlsError(f"DTLS certificate or key is not PEM: {exc}") from exc
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise DtlsError("DTLS certificate and private key do not match")
        return cls(certificate, private_key)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        return fingerprint(x509.load_pem_x509_certificate(self.certificate), algorithm)


def fingerprint(cert: x509.Certificate, algorithm: str) -> str:
    """RFC 8122 §5 form: upper-case hex pairs joined by colons."""
    digest = cert.fingerprint(HASHES[algorithm]).hex().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


_contexts: dict[tuple[bytes, bytes], SSL.Context] = {}


def _context(params: DtlsParams) -> SSL.Context:
    """One SSL context per certificate (reused by every leg: building one parses the key)."""
    key = (params.certificate, params.private_key)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        # The peer's certificate is self-signed: what authenticates it is the fingerprint
        # from the signalling, checked after the handshake (below); a certificate must come.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
        ctx.use_certificate(x509.load_pem_x509_certificate(params.certificate))
        ctx.use_privatekey(serialization.load_pem_private_key(params.private_key, None))  # type: ignore[arg-type]
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(p[0] for p in SRTP_PROFILES))
        _contexts[key] = ctx
    return ctx


class DtlsSession:
    """One stream's DTLS association: feed records in, send what comes out, read the keys."""

    def __init__(self, params: DtlsParams, clock: Callable[[], float]) -> None:
        self.params = params
        self._clock = clock
        self.state = DtlsState.NEW
        self.reason = ""  # why FAILED / CLOSED (a log line)
        self.profile = ""  # the negotiated SRTP suite
        self.recv_key: SrtpParams | None = None  # what the peer protects with
        self.send_key: SrtpParams | None = None  # what we protect with
        self._ssl = SSL.Connection(_context(params))
        if params.role == "server":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._deadline = 0.0  # handshake must finish by then (set when it starts)
        self.resumed = False  # keyed from a stored handshake (a restart), not by this one

    @classmethod
    def resumed_with(cls, params: DtlsParams, clock: Callable[[], float],
                     recv_key: SrtpParams, send_key: SrtpParams) -> DtlsSession:
        """A leg whose handshake verified the peer before this node restarted: connected with
        the keys that handshake exported (read from the sealed store, never from the wire).
        Its DTLS records are discarded: the association's state died with the process, and a
        browser does not re-handshake for a relay's restart (it keeps its SRTP keys)."""
        session = cls(params, clock)
        session._move(DtlsState.CONNECTING)
        session.recv_key, session.send_key = recv_key, send_key
        session.profile = recv_key.suite
        session.resumed = True
        session._move(DtlsState.CONNECTED, "resumed from the store after a restart")
        return session

    @property
    def done(self) -> bool:
        """No more timers: connected (verified), failed or closed."""
        return self.state not in (DtlsState.NEW, DtlsState.CONNECTING)

    def _move(self, state: DtlsState, reason: str = "") -> None:
        if state not in _TRANSITIONS[self.state]:
            raise DtlsError(f"DTLS state {self.state.value} cannot become {state.value}")
        self.state = state
        if reason:
            self.reason = reason

    def _fail(self, reason: str) -> list[bytes]:
        if not self.done or self.state is DtlsState.CONNECTED:
            self._move(DtlsState.FAILED, reason)
            self.recv_key = self.send_key = None
        return self._outgoing()  # e.g. the alert OpenSSL queued

    def start(self) -> list[bytes]:
        """Begin: a client's first flight (ClientHello); nothing for a server."""
        if self.state is not DtlsState.NEW:
            return []
        self._move(DtlsState.CONNECTING)
        self._deadline = self._clock() + HANDSHAKE_TIMEOUT
        if self.params.role == "server":
            return []
        return self._step()

    def receive(self, record: bytes) -> list[bytes]:
        """A DTLS datagram from the (verified-address) peer → datagrams to send back."""
        if self.resumed or (self.done and self.state is not DtlsState.CONNECTED):
            return []
        if len(record) > MAX_RECORD:
            raise DtlsError(f"{len(record)}-byte DTLS datagram is longer than {MAX_RECORD}")
        _check_records(record)
        if self.state is DtlsState.NEW:
            self.start()
        self._ssl.bio_write(record)
        if self.state is DtlsState.CONNECTED:
            return self._after_handshake()
        return self._step()

    def poll(self) -> list[bytes]:
        """Called from the engine tick: retransmit a lost flight, or fail on the deadline."""
        if self.state is not DtlsState.CONNECTING:
            return []
        if self._clock() >= self._deadline:
            return self._fail(f"handshake did not finish within {HANDSHAKE_TIMEOUT:g} s")
        timeout = self._ssl.DTLSv1_get_timeout()
        if timeout is not None and timeout <= 0:
            try:
                self._ssl.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                return self._fail(f"handshake retransmission failed: {_reason(exc)}")
            return self._outgoing()
        return []

    def _step(self) -> list[bytes]:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return self._outgoing()
        except SSL.Error as exc:
            return self._fail(f"handshake failed: {_reason(exc)}")
        out = self._outgoing()
        self._verify()
        return out

    def _verify(self) -> None:
        """The handshake finished: check the peer and export keys (or fail)."""
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None:
            self._fail("peer sent no certificate")
            return
        checked = [(a, v) for a, v in self.params.fingerprints if a in HASHES]
        if not checked:
            self._fail("no fingerprint with a supported hash in the peer's SDP")
            return
        for algorithm, value in checked:
            if fingerprint(cert, algorithm) != value.upper():
                self._fail(f"peer certificate does not match its SDP fingerprint ({algorithm})")
                return
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p[0] == selected), None)
        if profile is None:
            self._fail(f"no common SRTP profile (peer chose {selected.decode() or 'none'})")
            return
        _name, suite, key_len, salt_len = profile
        material = self._ssl.export_keying_material(EXPORTER_LABEL, 2 * (key_len + salt_len))
        # RFC 5764 §4.2: client key, server key, client salt, server salt.
        client = material[:key_len] + material[2 * key_len:2 * key_len + salt_len]
        server = (material[key_len:2 * key_len]
                  + material[2 * key_len + salt_len:2 * (key_len + salt_len)])
        ours, theirs = (client, server) if self.params.role == "client" else (server, client)
        self.send_key = SrtpParams(suite, ours)
        self.recv_key = SrtpParams(suite, theirs)
        self.profile = suite
        self._move(DtlsState.CONNECTED)

    def _after_handshake(self) -> list[bytes]:
        """Records after the keys: a retransmitted last flight (answered by OpenSSL), an alert
        or close_notify (the leg ends). WebRTC media never travels in DTLS application data
        here (no data channels): any is read and discarded."""
        try:
            self._ssl.recv(MAX_RECORD)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self._move(DtlsState.CLOSED, "peer closed the DTLS association (close_notify)")
            self.recv_key = self.send_key = None
        except SSL.Error as exc:
            return self._fail(f"alert after handshake: {_reason(exc)}")
        return self._outgoing()

    def _outgoing(self) -> list[bytes]:
        out = []
        while True:
            try:
                data = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            if not data:
                break
            out.append(data)
        return out


_CONTENT_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, data


def _check_records(datagram: bytes) -> None:
    """Refuse what is not a sequence of well-formed DTLS records (RFC 6347 §4.1) before
    OpenSSL sees it: RFC 6347 §4.1.2.7 says invalid records are discarded silently, whereas
    OpenSSL fails the association on some (application data in epoch 0) — which would let
    one forged datagram from the peer's address kill a call's agent leg."""
    pos = 0
    while pos < len(datagram):
        if len(datagram) - pos < 13:
            raise DtlsError("truncated DTLS record header")
        kind, major = datagram[pos], datagram[pos + 1]
        epoch = int.from_bytes(datagram[pos + 3:pos + 5], "big")
        length = int.from_bytes(datagram[pos + 11:pos + 13], "big")
        if kind not in _CONTENT_TYPES or major != 0xFE:
            raise DtlsError(f"not a DTLS record (type {kind}, version {major:#x})")
        if kind == 23 and epoch == 0:
            raise DtlsError("application data before the handshake")
        pos += 13 + length
        if pos > len(datagram):
            raise DtlsError("DTLS record longer than its datagram")


def _reason(exc: SSL.Error) -> str:
    """OpenSSL's reason strings (alerts, 'no shared cipher', ...), without addresses."""
    parts = []
    for err in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(err, tuple) and len(err) == 3:
            parts.append(str(err[2]))
    return ", ".join(parts) or type(exc).__name__
