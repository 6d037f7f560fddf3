"""The ``toneguard`` command run as a user runs it: a subprocess, its exit code and its output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
RUN_SECONDS = 60  # bound on each subprocess (start-up imports NumPy, SciPy, FastAPI)


def toneguard(*args: str, timeout: float = RUN_SECONDS) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` with this tree's code first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize(("args", "complaint"), [
    (("bogus",), "No such command 'bogus'"),
    (("serve", "--bogus"), "No such option: --bogus"),
    (("scan",), "Missing argument"),
    (("serve", "--workers", "abc"), "Invalid value for '--workers'"),
])
def test_usage_error_prints_usage_and_exits_2_without_traceback(args: tuple[str, ...],
                                                                complaint: str) -> None:
    result = toneguard(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert complaint in result.stderr
    assert "Usage: toneguard" in result.stderr and "--help" in result.stderr


def test_bare_command_shows_help_listing_the_subcommands() -> None:
    result = toneguard()
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 2
    shown = result.stdout + result.stderr
    assert "Usage: toneguard [OPTIONS] COMMAND" in shown
    for command in ("serve", "scan", "gateway", "agents", "demo"):
        assert f"  {command} " in shown


@pytest.mark.parametrize("command", [("serve",), ("scan",), ("gateway", "init")])
def test_help_shows_no_type_beside_flags(command: tuple[str, ...]) -> None:
    result = toneguard(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout


def test_serve_help_names_flag_values() -> None:
    out = toneguard("serve", "--help").stdout
    assert "--ng-listen HOST:PORT" in out and "--port-range MIN-MAX" in out


def test_bad_flag_value_is_blamed_on_the_flag_not_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "x.toml"
    config.write_text("[media]\nport_min = 30000\nport_max = 30100\n")
    result = toneguard("serve", "-c", str(config), "--port-range", "31000-30000")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--port-range: media: port_max must be at least port_min + 4" in result.stderr
    assert "x.toml" not in result.stderr


def test_bad_value_in_the_file_is_still_blamed_on_the_file(tmp_path: Path) -> None:
    config = tmp_path / "x.toml"
    config.write_text("[media]\nworkers = 99\n")
    result = toneguard("serve", "-c", str(config), "--port-range", "31000-31100")
    assert result.returncode == 2
    assert "x.toml: media.workers:" in result.stderr


def _config(tmp_path: Path, ng: str, api: str, media: tuple[int, int]) -> Path:
    base = media[0]
    path = tmp_path / "node.toml"
    path.write_text(f'[ng]\nlisten = "{ng}"\n[api]\nlisten = "{api}"\n'
                    f"[media]\nport_min = {base}\nport_max = {base + 20}\n")
    return path


def test_busy_ng_port_names_the_socket_and_exits_1(tmp_path: Path,
                                                   media_ports: tuple[int, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = _config(tmp_path, address, "127.0.0.1:0", media_ports)
        result = toneguard("serve", "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot bind the ng socket {address}: address already in use" in result.stderr


def test_busy_api_port_names_the_socket_and_exits_1(tmp_path: Path,
                                                    media_ports: tuple[int, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = _config(tmp_path, "127.0.0.1:0", address, media_ports)
        result = toneguard("serve", "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot bind the API socket {address}: address already in use" in result.stderr
    assert "Errno" not in result.stderr + result.stdout


@pytest.mark.parametrize(("make", "complaint"), [
    (lambda path: None, "No such file or directory"),
    (lambda path: path.mkdir(), "Is a directory"),
    (lambda path: path.write_text("too short\n"), "under 16 bytes"),
], ids=["missing", "directory", "short"])
def test_a_bad_softphone_secret_file_refuses_before_media_starts_and_exits_2(
        tmp_path: Path, media_ports: tuple[int, int], make: Callable[[Path], None],
        complaint: str) -> None:
    secret = tmp_path / "softphone.secret"
    make(secret)
    config = _config(tmp_path, "127.0.0.1:0", "127.0.0.1:0", media_ports)
    config.write_text(config.read_text().replace(
        "[api]\n", f'[api]\nsoftphone_secret_file = "{secret}"\n'))
    result = toneguard("serve", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "toneguard serve: api.softphone_secret_file: " in result.stderr
    assert complaint in result.stderr
    # Refused with the configuration: no media plane (its DTLS certificate) was ever set up.
    assert "DTLS certificate" not in result.stdout + result.stderr
    assert "node stopped" not in result.stdout + result.stderr
