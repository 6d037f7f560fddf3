"""`toneguard agents`: keys printed once, stored only as hashes, file private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.api.auth import AgentDirectory
from proxy.service.cli import main
from tests.conftest import pick_udp_port


def test_add_prints_a_working_key_and_stores_only_its_hash(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "agents.json"
    assert main(["agents", "add", "alice", "--file", str(path), "--role", "supervisor"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("tg_") and key.split("_", 2)[2] not in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    who = AgentDirectory.load(path).authenticate(key)
    assert who is not None and (who.agent_id, who.role) == ("alice", "supervisor")
    assert AgentDirectory.load(path).authenticate(key[:-2] + "xx") is None
    assert main(["agents", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out == "alice\tsupervisor\n"
    assert main(["agents", "add", "bob", "--file", str(path), "--role", "root"]) == 2


def test_adding_an_agent_twice_is_refused_unless_rotated(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "agents.json"
    assert main(["agents", "add", "alice", "--file", str(path)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["agents", "add", "alice", "--file", str(path)]) == 2
    assert "already has a key" in capsys.readouterr().out
    assert main(["agents", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out == "alice\tagent\n"
    assert AgentDirectory.load(path).authenticate(first) is not None  # untouched

    assert main(["agents", "add", "alice", "--file", str(path), "--rotate",
                 "--role", "supervisor"]) == 0
    second = capsys.readouterr().out.strip()
    assert second.startswith("tg_") and second != first
    directory = AgentDirectory.load(path)
    assert directory.authenticate(first) is None
    who = directory.authenticate(second)
    assert who is not None and who.role == "supervisor"
    assert directory.agents() == [("alice", "supervisor")]


def test_revoke_removes_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "agents.json"
    main(["agents", "add", "alice", "--file", str(path)])
    main(["agents", "add", "bob", "--file", str(path)])
    alice, bob = capsys.readouterr().out.split()
    assert main(["agents", "revoke", "alice", "--file", str(path)]) == 0
    assert capsys.readouterr().out == "revoked alice\n"
    directory = AgentDirectory.load(path)
    assert directory.authenticate(alice) is None and directory.authenticate(bob) is not None
    assert main(["agents", "revoke", "alice", "--file", str(path)]) == 2
    assert "no agent 'alice'" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_missing_files_folders_and_bad_names_are_clear_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.json"
    assert main(["agents", "list", "--file", str(missing)]) == 2
    out = capsys.readouterr().out
    assert "no such agents file" in out and "Traceback" not in out
    assert main(["agents", "revoke", "x", "--file", str(missing)]) == 2
    capsys.readouterr()
    assert main(["agents", "add", "alice", "--file", str(tmp_path / "no" / "a.json")]) == 2
    out = capsys.readouterr().out
    assert "no such folder" in out and "Traceback" not in out
    path = tmp_path / "agents.json"
    for bad in ("", "a b", "a/b", "x" * 65, "alice\n", "ålice", "../x", "a;b"):
        assert main(["agents", "add", bad, "--file", str(path)]) == 2, bad
        assert "NAME must be" in capsys.readouterr().out
    assert not path.exists()
    for good in ("a", "alice.smith_2-x", "x" * 64):
        assert main(["agents", "add", good, "--file", str(path)]) == 0
    capsys.readouterr()
    path.write_text("{not json")
    assert main(["agents", "list", "--file", str(path)]) == 2
    assert "not an agents file" in capsys.readouterr().out


def test_serve_refuses_a_configured_but_missing_agents_file(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "toneguard.toml"
    config.write_text(f'[api]\nagents_file = "{tmp_path / "missing.json"}"\n'
                      f'[ng]\nlisten = "127.0.0.1:{pick_udp_port()}"\n')
    assert main(["serve", "-c", str(config)]) == 2
    err = capsys.readouterr().err  # errors go to stderr
    assert "api.agents_file" in err and "no such agents file" in err
