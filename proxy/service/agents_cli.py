"""`toneguard agents add|list|revoke`: manage agents and their API keys (stored hashed).

A running ``toneguard serve`` re-reads the agents file when it changes (checked on each key
check, one ``stat``), so keys added, rotated or revoked here take effect without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from proxy.api.auth import (
    ROLES,
    AgentDirectory,
    AgentsFileError,
    DuplicateAgentError,
    valid_name,
)

agents_app = typer.Typer(help="Agents and their API keys.", no_args_is_help=True)
FileOption = Annotated[Path, typer.Option("--file", help="The agents file (api.agents_file).")]
NameArgument = Annotated[str, typer.Argument(help="Agent id, e.g. alice ([A-Za-z0-9._-]{1,64})")]


def _fail(command: str, message: str) -> int:
    print(f"toneguard agents {command}: {message}")
    return 2


@agents_app.command("add")
def add_command(name: NameArgument, file: FileOption,
                role: Annotated[str, typer.Option(help="agent | supervisor | admin")] = "agent",
                rotate: Annotated[bool, typer.Option(
                    "--rotate", help="Replace NAME's existing key (the old one stops working).")
                ] = False,
                ) -> int:
    """Create an API key for NAME; it is printed once and only its hash is stored."""
    if role not in ROLES:
        return _fail("add", f"--role must be one of {', '.join(ROLES)}")
    if not valid_name(name):
        return _fail("add", "NAME must be 1-64 characters of A-Z a-z 0-9 . _ -")
    if not file.parent.is_dir():
        return _fail("add", f"{file.parent}: no such folder (create it first)")
    try:
        directory = AgentDirectory.load(file, missing_ok=True)
        key = directory.add(name, role, rotate=rotate)
        directory.save(file)
    except DuplicateAgentError:
        return _fail("add", f"agent {name!r} already has a key; use --rotate to replace it")
    except AgentsFileError as exc:
        return _fail("add", str(exc))
    except OSError as exc:
        return _fail("add", f"{file}: cannot write: {exc.strerror}")
    print(key)
    return 0


@agents_app.command("list")
def list_command(file: FileOption) -> int:
    """List agents and roles (never keys)."""
    try:
        agents = AgentDirectory.load(file).agents()
    except AgentsFileError as exc:
        return _fail("list", str(exc))
    for name, role in agents:
        print(f"{name}\t{role}")
    return 0


@agents_app.command("revoke")
def revoke_command(name: NameArgument, file: FileOption) -> int:
    """Remove NAME's key: a running server refuses it from its next request."""
    try:
        directory = AgentDirectory.load(file)
        if not directory.revoke(name):
            return _fail("revoke", f"no agent {name!r} in {file}")
        directory.save(file)
    except AgentsFileError as exc:
        return _fail("revoke", str(exc))
    except OSError as exc:
        return _fail("revoke", f"{file}: cannot write: {exc.strerror}")
    print(f"revoked {name}")
    return 0
