"""``toneguard serve`` spawns its media workers before its own imports: how many it expects,
read cheaply from the command line and the config file (0: media in process, or unknown)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.media.prespawn import expected_workers


@pytest.fixture(autouse=True)
def _forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the host had a core to spare (the count alone is under test here)."""
    monkeypatch.setenv("TONEGUARD_PRESPAWN", "1")


@pytest.mark.parametrize(("toml", "argv", "count"), [
    ("[media]\nworkers = 2\n", [], 2),
    ("[media]\nworkers = 1\n", [], 0),  # in process
    ("[media]\nport_min = 30000\n", [], 0),  # the default: in process
    ("[media]\nworkers = 1\n", ["--workers", "3"], 3),  # the flag wins
    ("[media]\nworkers = 4\n", ["--workers=1"], 0),
    ("[media]\nworkers = 0\n", [], os.cpu_count() if (os.cpu_count() or 1) > 1 else 0),
    ("not toml [", [], 0),  # the node reports the error; nothing spawned early
    ("[media]\nworkers = 99\n", [], 0),  # refused by the config: nothing spawned early
])
def test_the_expected_worker_count_comes_from_the_flag_or_the_file(
        tmp_path: Path, toml: str, argv: list[str], count: int) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml)
    assert expected_workers(["-c", str(config), *argv]) == count
    assert expected_workers([f"--config={config}", *argv]) == count


def test_no_config_and_no_flag_means_in_process() -> None:
    assert expected_workers([]) == 0
    assert expected_workers(["-c", "/nonexistent/node.toml"]) == 0
    assert expected_workers(["--workers"]) == 0  # a usage error the CLI reports


def test_the_environment_can_turn_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[media]\nworkers = 2\n")
    monkeypatch.setenv("TONEGUARD_PRESPAWN", "0")
    assert expected_workers(["-c", str(config)]) == 0


def test_without_a_core_to_spare_nothing_is_spawned_early(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[media]\nworkers = 2\n")
    monkeypatch.delenv("TONEGUARD_PRESPAWN")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert expected_workers(["-c", str(config)]) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert expected_workers(["-c", str(config)]) == 2
