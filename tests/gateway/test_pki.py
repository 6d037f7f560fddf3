"""The gateway's server certificate names the hosts ToneGuard reaches it by (`--host`)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki import PkiError, PkiPaths, init_pki

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


@contextmanager
def tls_server(paths: PkiPaths, host: str) -> Iterator[int]:
    """A loopback TLS server with the gateway's certificate, requiring a client certificate
    from the deployment CA (as ``gateway serve`` does); answers each handshake with b"ok"."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(paths.ca_cert))
    context.load_cert_chain(paths.server_cert, paths.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server((host, 0))
    listener.settimeout(TIMEOUT)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    continue  # the client refused us: its side of the test reports why

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close does not)
        listener.close()
        thread.join(TIMEOUT)


def handshake(paths: PkiPaths, address: str, port: int, name: str) -> bytes:
    """Connect to ``address`` as ToneGuard does, verifying the certificate against ``name``."""
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    context.load_cert_chain(paths.client_cert, paths.client_key)
    with socket.create_connection((address, port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.recv(2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("gw"),
                    hosts=("gateway.pay.example.test", "gw", "127.0.0.2", "fd00::2"))


@pytest.mark.parametrize(("address", "name"), [
    ("127.0.0.1", "gateway.pay.example.test"),  # a DNS name (what the client verifies)
    ("127.0.0.1", "gw"),  # a short name, e.g. the compose service name
    ("127.0.0.2", "127.0.0.2"),  # an IP address, matched against an IP entry
    ("127.0.0.1", "localhost"),  # loopback names are always there
    ("127.0.0.1", "127.0.0.1"),
])
def test_tls_connection_by_a_named_host_is_accepted(pki: PkiPaths, address: str,
                                                     name: str) -> None:
    with tls_server(pki, address) as port:
        assert handshake(pki, address, port, name) == b"ok"


def test_tls_connection_by_an_unnamed_host_is_refused(pki: PkiPaths) -> None:
    with tls_server(pki, "127.0.0.1") as port:
        assert handshake(pki, "127.0.0.1", port, "gateway.pay.example.test") == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            handshake(pki, "127.0.0.1", port, "other.example.test")


def test_san_holds_dns_names_and_ip_addresses_apart(pki: PkiPaths) -> None:
    import ipaddress

    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gateway.pay.example.test",
                                                     "gw"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "127.0.0.2", "fd00::2")]


@pytest.mark.parametrize("bad", ["", "under_score.example", "-lead.example", "a..b", "1.2.3"])
def test_malformed_host_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PkiError, match="not an IP address or a DNS name"):
        init_pki(tmp_path / "gw", hosts=(bad,))
    assert not (tmp_path / "gw").exists()


def test_cli_host_flag_repeats_into_the_certificate(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "gateway", "init", "--data-dir", str(tmp_path / "gw"),
         "--host", "gateway.internal", "--host", "10.0.0.5"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "gw" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gateway.internal" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)][-1] == "10.0.0.5"
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "gateway", "init", "--data-dir", str(tmp_path / "x"),
         "--host", "bad_name"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
    assert "host 'bad_name' is not an IP address" in bad.stdout + bad.stderr
