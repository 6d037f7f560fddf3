"""API keys: roles ordered agent < supervisor < admin, keys checked against salted scrypt hashes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from proxy.api.auth import ROLES, AgentDirectory, AgentsFileError, DuplicateAgentError, Principal

# A key written by hand, hashed here with the documented scrypt parameters (not auth's helper), so
# a file written by an earlier release keeps authenticating. The secret holds "_" on purpose: the
# key splits into three parts only, the secret may contain the separator.
KEY_ID, SECRET, SALT = "0a1b2c3d", "s3cr_et_with_underscores", bytes(range(16))
HASH = hashlib.scrypt(SECRET.encode(), salt=SALT, n=2**14, r=8, p=1, dklen=32)


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({KEY_ID: {"agent_id": "alice", "role": "supervisor",
                                         "salt": SALT.hex(), "hash": HASH.hex()}}))
    return path


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("needed", ROLES)
def test_a_role_is_at_least_itself_and_every_lower_role(role: str, needed: str) -> None:
    assert Principal("a", role).at_least(needed) == (ROLES.index(role) >= ROLES.index(needed))


def test_roles_are_ordered_agent_supervisor_admin() -> None:
    assert ROLES == ("agent", "supervisor", "admin")
    assert not Principal("a", "agent").at_least("supervisor")
    assert Principal("s", "supervisor").at_least("supervisor")
    assert not Principal("s", "supervisor").at_least("admin")


def test_a_stored_key_authenticates_as_its_agent_and_role(stored: Path) -> None:
    who = AgentDirectory.load(stored).authenticate(f"tg_{KEY_ID}_{SECRET}")
    assert who == Principal("alice", "supervisor")


@pytest.mark.parametrize("key", [
    f"tg_{KEY_ID}_{SECRET}x",          # wrong secret
    f"tg_{KEY_ID}_{SECRET[:-1]}",      # truncated secret
    f"tg_ffffffff_{SECRET}",           # unknown key id
    f"xx_{KEY_ID}_{SECRET}",           # wrong prefix
    f"tg_{KEY_ID}",                    # no secret
    f"tg{KEY_ID}{SECRET}",             # no separators
    "",
])
def test_anything_but_the_exact_key_is_refused(stored: Path, key: str) -> None:
    assert AgentDirectory.load(stored).authenticate(key) is None


def test_a_missing_file_is_refused_naming_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(AgentsFileError, match=r"no such agents file.*toneguard agents add"):
        AgentDirectory.load(tmp_path / "absent.json")


def test_add_returns_a_key_that_works_and_stores_only_a_salted_hash(tmp_path: Path) -> None:
    directory = AgentDirectory()
    key = directory.add("bob", "agent")
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "tg" and len(key_id) == 8 and int(key_id, 16) >= 0
    assert len(secret) == 43  # 32 random bytes, URL-safe base64 without padding
    assert directory.authenticate(key) == Principal("bob", "agent")
    path = tmp_path / "agents.json"
    directory.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    entry = json.loads(text)[key_id]
    assert set(entry) == {"agent_id", "role", "salt", "hash"}
    assert (entry["agent_id"], entry["role"]) == ("bob", "agent")
    assert len(bytes.fromhex(entry["salt"])) == 16
    assert entry["hash"] == hashlib.scrypt(secret.encode(), salt=bytes.fromhex(entry["salt"]),
                                           n=2**14, r=8, p=1, dklen=32).hex()
    assert AgentDirectory.load(path).authenticate(key) == Principal("bob", "agent")


def test_two_agents_keys_get_different_salts_and_a_name_has_one_key() -> None:
    directory = AgentDirectory()
    first, second = directory.add("bob", "agent"), directory.add("bea", "agent")
    assert first != second
    salts = {e["salt"] for e in directory._entries.values()}
    assert len(salts) == 2
    with pytest.raises(DuplicateAgentError):
        directory.add("bob", "agent")
    assert directory.agents() == [("bea", "agent"), ("bob", "agent")]


def test_save_replaces_the_file_rather_than_appending(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text("x" * 10_000)
    directory = AgentDirectory()
    directory.add("carol", "admin")
    directory.save(path)
    assert AgentDirectory.load(path).agents() == [("carol", "admin")]


def test_agents_lists_each_agent_and_role_once_sorted() -> None:
    directory = AgentDirectory()
    for agent, role in (("zed", "agent"), ("amy", "admin"), ("bo", "agent")):
        directory.add(agent, role)
    assert directory.agents() == [("amy", "admin"), ("bo", "agent"), ("zed", "agent")]


@pytest.mark.parametrize("role", ["root", "Agent", "", "supervisors"])
def test_an_unknown_role_is_refused_and_nothing_is_stored(role: str) -> None:
    directory = AgentDirectory()
    with pytest.raises(ValueError, match="role must be one of agent, supervisor, admin"):
        directory.add("eve", role)
    assert directory.agents() == []
