"""docker/: what can be checked without a container runtime.

The compose file is parsed, the secrets each service can see are read off its mounts, the
image's mount points are checked to be owned by the user the services run as, the container
configuration is loaded by the real config loader, and gateway-init's script is run twice
against scratch folders with the real ``toneguard`` command (the second run must succeed and
keep the PKI).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxy.service.config import load_config, parse_hostport

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
GATEWAY_DIR = "/var/lib/toneguard-gateway"
CLIENT_DIR = "/etc/toneguard/gateway-client"
GATEWAY_SECRETS = {"ca.key", "server.key", "card-key.b64", "tokens.sqlite3"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target path -> (volume, read-only)."""
    out = {}
    for spec in service.get("volumes", []):
        volume, target, *mode = spec.split(":")
        out[target] = (volume, mode == ["ro"])
    return out


def test_toneguard_cannot_see_the_gateways_keys(compose: dict) -> None:
    services = compose["services"]
    gateway_volumes = {v for v, _ in _mounts(services["gateway"]).values()}
    toneguard = _mounts(services["toneguard"])
    assert not gateway_volumes & {v for v, _ in toneguard.values()}
    assert toneguard[CLIENT_DIR] == ("gateway-client", True)


def test_every_service_has_an_image_name_and_a_restart_policy(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert service["image"] == "toneguard:0.1.0", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert service["restart"] == ("no" if name == "gateway-init" else "unless-stopped")
    assert compose["services"]["gateway"]["healthcheck"]["test"][0] == "CMD"


def test_media_address_is_required_from_the_environment_not_baked_in(compose: dict) -> None:
    command = compose["services"]["toneguard"]["command"]
    value = command[command.index("--media-address") + 1]
    assert value.startswith("${TONEGUARD_MEDIA_ADDRESS:?")
    assert "media" not in tomllib.loads((DOCKER / "toneguard.toml").read_text())


def test_container_config_loads_listens_on_loopback_and_reads_only_client_credentials(
) -> None:
    config = load_config(DOCKER / "toneguard.toml")
    assert parse_hostport(config.ng.listen)[0] == "127.0.0.1"
    assert parse_hostport(config.api.listen)[0] == "127.0.0.1"
    g = config.gateway
    assert {Path(f).parent for f in (g.ca_file, g.cert_file, g.key_file)} == {Path(CLIENT_DIR)}
    assert config.api.agents_file.startswith("/var/lib/toneguard/")


def test_volume_mount_points_are_made_in_the_image_for_the_service_user(
    compose: dict, dockerfile: str
) -> None:
    # An empty named volume takes its mount point's owner from the image; a folder the image
    # does not have would be created root-owned, and the services do not run as root.
    made = re.search(r"install -d -o toneguard -g toneguard -m 0700 ([^&]+)&?", dockerfile,
                     re.S)
    assert made is not None
    owned = set(made.group(1).replace("\\", " ").split())
    for service in compose["services"].values():
        for target in _mounts(service):
            assert target in owned, target
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    assert "apt-get" not in dockerfile  # no compiler, no system libraries: wheels only


def test_dockerignore_keeps_the_venv_and_secrets_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", "**/*.key", "**/card-key.b64", "tests"):
        assert pattern in ignored


def test_gateway_init_is_idempotent_and_copies_only_client_credentials(
    compose: dict, tmp_path: Path
) -> None:
    service = compose["services"]["gateway-init"]
    assert service["entrypoint"] == ["/bin/sh", "-ec"]
    gateway_dir, client_dir, bin_dir = (tmp_path / p for p in ("gateway", "client", "bin"))
    for d in (client_dir, bin_dir):
        d.mkdir()
    script = service["command"][0].replace(GATEWAY_DIR, str(gateway_dir)).replace(
        CLIENT_DIR, str(client_dir))
    shim = bin_dir / "toneguard"  # the console script, as the image has it on PATH
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m proxy "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def up() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True,
                              timeout=60, env=env)

    first = up()
    assert first.returncode == 0, first.stderr
    ca_key = (gateway_dir / "ca.key").read_bytes()
    second = up()  # the second `docker compose up`
    assert second.returncode == 0, second.stderr
    assert "already" in second.stdout
    assert (gateway_dir / "ca.key").read_bytes() == ca_key  # the PKI was kept
    assert {p.name for p in client_dir.iterdir()} == {"ca.pem", "client.pem", "client.key"}
    assert not GATEWAY_SECRETS & {p.name for p in client_dir.iterdir()}
    assert stat.S_IMODE((client_dir / "client.key").stat().st_mode) == 0o600
    assert (client_dir / "client.pem").read_bytes() == (gateway_dir / "client.pem").read_bytes()


def test_gateway_init_fails_loudly_on_a_half_made_pki(compose: dict, tmp_path: Path) -> None:
    gateway_dir, client_dir = tmp_path / "gateway", tmp_path / "client"
    gateway_dir.mkdir()
    client_dir.mkdir()
    (gateway_dir / "ca.pem").write_text("left over\n")
    script = compose["services"]["gateway-init"]["command"][0].replace(
        GATEWAY_DIR, str(gateway_dir)).replace(CLIENT_DIR, str(client_dir))
    result = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert not (client_dir / "client.key").exists()
