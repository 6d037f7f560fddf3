"""DTLS-SRTP sessions (proxy.media.dtls) against each other and against aiortc's DTLS context:
keys agree, and every way a handshake can go wrong ends in FAILED with a reason, no keys."""

from __future__ import annotations

import contextlib
import time

import pytest
from OpenSSL import SSL

from proxy.media import dtls
from proxy.media.dtls import DtlsError, DtlsSession, DtlsState, NodeCertificate
from proxy.media.srtp import SrtpReceiver, SrtpSender
from proxy.media.types import DtlsParams

A, B = NodeCertificate.generate(), NodeCertificate.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _params(role: str, ours: NodeCertificate, theirs: NodeCertificate,
            algorithm: str = "sha-256") -> DtlsParams:
    return DtlsParams(role, ((algorithm, theirs.fingerprint(algorithm)),),  # type: ignore[arg-type]
                      ours.certificate, ours.private_key)


def _run(client: DtlsSession, server: DtlsSession, *, drop_first: bool = False) -> int:
    """Shuttle flights until both are quiet; returns the number of flights."""
    server.start()
    flights = client.start()
    side, count = server, 0
    if drop_first:
        flights = []
    while flights and count < 20:
        replies: list[bytes] = []
        for record in flights:
            replies += side.receive(record)
        flights, side, count = replies, (client if side is server else server), count + 1
    return count


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-1", "sha-512"])
def test_handshake_exports_matching_srtp_keys(algorithm: str) -> None:
    client = DtlsSession(_params("client", A, B, algorithm), time.monotonic)
    server = DtlsSession(_params("server", B, A, algorithm), time.monotonic)
    _run(client, server)
    assert client.state is server.state is DtlsState.CONNECTED
    assert client.profile == server.profile == "AEAD_AES_128_GCM"
    assert client.send_key == server.recv_key and client.recv_key == server.send_key
    assert client.send_key != client.recv_key
    # The keys drive the existing libsrtp contexts: protected by one, read by the other.
    assert client.send_key is not None and server.recv_key is not None
    rtp = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7]) + b"\xff" * 160
    assert SrtpReceiver(server.recv_key).unprotect(SrtpSender(client.send_key).protect(rtp)) \
        == rtp


def test_key_material_is_hidden_in_reprs() -> None:
    params = _params("client", A, B)
    assert b"PRIVATE" in params.private_key
    assert "PRIVATE" not in repr(params) and "hidden" in repr(params)
    assert "PRIVATE" not in repr(A)


def test_wrong_fingerprint_fails_the_leg_without_keys() -> None:
    other = NodeCertificate.generate()
    client = DtlsSession(_params("client", A, other), time.monotonic)  # expects another cert
    server = DtlsSession(_params("server", B, A), time.monotonic)
    _run(client, server)
    assert client.state is DtlsState.FAILED
    assert "does not match its SDP fingerprint" in client.reason
    assert client.send_key is None and client.recv_key is None


def test_server_checks_the_client_fingerprint_too() -> None:
    client = DtlsSession(_params("client", A, B), time.monotonic)
    server = DtlsSession(_params("server", B, NodeCertificate.generate()), time.monotonic)
    _run(client, server)
    assert server.state is DtlsState.FAILED and server.recv_key is None
    assert "does not match" in server.reason


def test_fingerprint_with_unsupported_hash_only_fails() -> None:
    params = DtlsParams("client", (("md5", "AA:BB"),), A.certificate, A.private_key)
    client = DtlsSession(params, time.monotonic)
    server = DtlsSession(_params("server", B, A), time.monotonic)
    _run(client, server)
    assert client.state is DtlsState.FAILED and "supported hash" in client.reason


def test_peer_without_a_common_srtp_profile_fails() -> None:
    """A peer offering only SRTP_AES128_CM_SHA1_32 (which we do not offer for DTLS)."""
    server = DtlsSession(_params("server", B, A), time.monotonic)
    ctx = SSL.Context(SSL.DTLS_METHOD)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    ctx.use_certificate(x509.load_pem_x509_certificate(A.certificate))
    ctx.use_privatekey(serialization.load_pem_private_key(A.private_key, None))  # type: ignore[arg-type]
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_32")
    peer = SSL.Connection(ctx)
    peer.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        peer.do_handshake()
    server.start()
    for _ in range(10):
        hello = peer.bio_read(65536)
        replies = server.receive(hello)
        if server.done or not replies:
            break
        for r in replies:
            peer.bio_write(r)
        try:
            peer.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            break
    assert server.state is DtlsState.FAILED
    assert server.recv_key is None and server.send_key is None


def test_handshake_that_never_finishes_times_out_on_poll() -> None:
    clock = Clock()
    server = DtlsSession(_params("server", B, A), clock)
    client = DtlsSession(_params("client", A, B), clock)
    server.start()
    server.receive(client.start()[0])  # a ClientHello, then the client goes silent
    assert server.state is DtlsState.CONNECTING
    clock.now += dtls.HANDSHAKE_TIMEOUT - 1
    server.poll()
    assert server.state is DtlsState.CONNECTING
    clock.now += 2
    server.poll()
    assert server.state is DtlsState.FAILED and "did not finish within" in server.reason


def test_lost_flight_is_retransmitted_from_poll() -> None:
    """OpenSSL's DTLS timer (1 s, RFC 6347) fires only through poll(): the engine's tick."""
    client = DtlsSession(_params("client", A, B), time.monotonic)
    first = client.start()
    assert first and client.poll() == []  # not yet due
    deadline = time.monotonic() + 5
    again: list[bytes] = []
    while not again and time.monotonic() < deadline:
        time.sleep(0.05)  # OpenSSL's own timer reads the wall clock; bounded wait
        again = client.poll()
    assert again, "no retransmission within 5 s"
    server = DtlsSession(_params("server", B, A), time.monotonic)
    flights = again
    side = server
    for _ in range(10):
        replies: list[bytes] = []
        for record in flights:
            replies += side.receive(record)
        if not replies:
            break
        flights, side = replies, (client if side is server else server)
    assert client.state is server.state is DtlsState.CONNECTED


@pytest.mark.parametrize("garbage", [b"\x16\xfe\xfd" + b"\x00" * 10, b"\x17" * 40,
                                     bytes(range(20, 64)) * 3])
def test_garbage_records_do_not_connect_or_key(garbage: bytes) -> None:
    server = DtlsSession(_params("server", B, A), time.monotonic)
    server.start()
    with contextlib.suppress(DtlsError):  # refused (the engine drops and counts it)
        server.receive(garbage)
    assert server.state is not DtlsState.CONNECTED
    assert server.recv_key is None


def test_oversized_record_is_refused() -> None:
    server = DtlsSession(_params("server", B, A), time.monotonic)
    with pytest.raises(DtlsError, match="longer than"):
        server.receive(b"\x16" + b"\x00" * dtls.MAX_RECORD)


def test_close_notify_after_handshake_closes_the_leg() -> None:
    client = DtlsSession(_params("client", A, B), time.monotonic)
    server = DtlsSession(_params("server", B, A), time.monotonic)
    _run(client, server)
    client._ssl.shutdown()
    for record in client._outgoing():
        server.receive(record)
    assert server.state is DtlsState.CLOSED and server.send_key is None


def test_configured_certificate_must_match_its_key() -> None:
    assert NodeCertificate.load(A.certificate, A.private_key).fingerprint() == A.fingerprint()
    with pytest.raises(DtlsError, match="do not match"):
        NodeCertificate.load(A.certificate, B.private_key)
    with pytest.raises(DtlsError, match="not PEM"):
        NodeCertificate.load(b"nope", A.private_key)


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"\x17\xfe\xfd" + b"\x00" * 8 + b"\x00\x05junk!", "application data before"),
    (b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x40\x00short", "longer than its datagram"),
    (b"\x16\xfe\xfd\x00", "truncated"),
    (b"\x18\xfe\xfd" + b"\x00" * 10, "not a DTLS record"),
    (b"\x16\x03\x03" + b"\x00" * 10, "not a DTLS record"),
])
def test_malformed_records_are_refused_before_openssl(datagram: bytes, reason: str) -> None:
    server = DtlsSession(_params("server", B, A), time.monotonic)
    server.start()
    with pytest.raises(DtlsError, match=reason):
        server.receive(datagram)
    assert server.state is DtlsState.CONNECTING  # not failed: dropped, the peer may go on
