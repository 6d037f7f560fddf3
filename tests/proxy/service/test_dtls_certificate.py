"""The node's DTLS certificate from config: configured PEM files, or generated at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.media.dtls import NodeCertificate
from proxy.service.config import ConfigError, load_config
from proxy.service.serve import dtls_certificate


def _files(tmp_path: Path, cert: NodeCertificate, key: NodeCertificate) -> dict[str, str]:
    (tmp_path / "c.pem").write_bytes(cert.certificate)
    (tmp_path / "k.pem").write_bytes(key.private_key)
    return {"dtls_certificate": str(tmp_path / "c.pem"),
            "dtls_private_key": str(tmp_path / "k.pem")}


def test_configured_certificate_is_used(tmp_path: Path) -> None:
    mine = NodeCertificate.generate()
    config = load_config(overrides={"media": _files(tmp_path, mine, mine)})
    assert dtls_certificate(config).fingerprint() == mine.fingerprint()


def test_without_configuration_a_new_one_is_generated() -> None:
    first, second = dtls_certificate(load_config()), dtls_certificate(load_config())
    assert first.fingerprint() != second.fingerprint()


def test_certificate_and_key_that_do_not_match_name_the_settings(tmp_path: Path) -> None:
    config = load_config(overrides={"media": _files(
        tmp_path, NodeCertificate.generate(), NodeCertificate.generate())})
    with pytest.raises(ConfigError, match=r"media\.dtls_certificate"):
        dtls_certificate(config)


def test_certificate_without_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_config(overrides={"media": {"dtls_certificate": str(tmp_path / "c.pem")}})
