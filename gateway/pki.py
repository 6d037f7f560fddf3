"""A private PKI for ToneGuard ↔ gateway mutual TLS: a CA, a server and a client certificate.

``toneguard gateway init`` writes them into a data directory with the AES key the gateway
encrypts stored card numbers with. Private keys are created 0600.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY_DAYS = 825
# The server certificate always names the loopback host, whatever else ``--host`` adds: the
# single-host quickstart and the compose file reach the gateway on 127.0.0.1.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PkiError(RuntimeError):
    """The data directory is missing something or would be overwritten."""


@dataclass(frozen=True)
class PkiPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def aes_key(self) -> Path:
        return self.root / "card-key.b64"

    @property
    def database(self) -> Path:
        return self.root / "tokens.sqlite3"

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key, self.client_cert,
                self.client_key, self.aes_key]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ToneGuard"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS)))


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *,
          server: bool, hosts: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey,
                                                                x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(_name(common_name), ca_cert.subject, key)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [subject_name(h) for h in dict.fromkeys(hosts)]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def subject_name(host: str) -> x509.GeneralName:
    """``host`` as a SAN entry: an IP address (v4 or v6) or a DNS name. Raises PkiError.

    TLS clients match an IP literal only against IP entries and a name only against DNS
    entries, so the two must not be confused; a malformed name would make a certificate no
    client ever accepts, so it is refused here rather than found out at the first payment.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        raise PkiError(f"host {host!r} is not an IP address or a DNS name "
                       "(letters, digits and '-' in dot-separated labels)")
    return x509.DNSName(name)


def create_ca(common_name: str = "ToneGuard deployment CA"
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(common_name), _name(common_name), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def init_pki(root: Path, *, force: bool = False, hosts: tuple[str, ...] = ()) -> PkiPaths:
    """Write a new PKI into ``root``; the server certificate names ``LOCAL_HOSTS`` + ``hosts``.

    Raises PkiError if a host is malformed (before anything is written) or if ``root``
    already holds PKI files and ``force`` is not set.
    """
    all_hosts = tuple(dict.fromkeys((*LOCAL_HOSTS, *hosts)))
    for host in all_hosts:
        subject_name(host)
    paths = PkiPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    existing = [p for p in paths.all() if p.exists()]
    if existing and not force:
        raise PkiError(f"{root} already holds {', '.join(p.name for p in existing)}; "
                       "use --force to replace them (existing tokens become undecryptable)")
    ca_key, ca_cert = create_ca()
    server_key, server_cert = issue(ca_key, ca_cert, "toneguard-gateway", server=True,
                                    hosts=all_hosts)
    client_key, client_cert = issue(ca_key, ca_cert, "toneguard-proxy", server=False)
    pem = serialization.Encoding.PEM
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    _write_private(paths.ca_key, _key_pem(ca_key))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(paths.server_key, _key_pem(server_key))
    paths.client_cert.write_bytes(client_cert.public_bytes(pem))
    _write_private(paths.client_key, _key_pem(client_key))
    _write_private(paths.aes_key, base64.b64encode(secrets.token_bytes(32)) + b"\n")
    return paths


def check(paths: PkiPaths) -> None:
    missing = [p.name for p in paths.all() if not p.exists()]
    if missing:
        raise PkiError(f"{paths.root}: missing {', '.join(missing)}: run "
                       f"`toneguard gateway init --data-dir {paths.root}`")
