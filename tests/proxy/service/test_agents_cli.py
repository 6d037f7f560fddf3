"""`toneguard agents`: keys printed once, stored only as hashes, file private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.api.auth import AgentDirectory
from proxy.service.cli import main


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
