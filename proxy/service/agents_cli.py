"""`toneguard agents add|list`: manage agents and their API keys (stored hashed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from proxy.api.auth import ROLES, AgentDirectory

agents_app = typer.Typer(help="Agents and their API keys.", no_args_is_help=True)
FileOption = Annotated[Path, typer.Option("--file", help="The agents file (api.agents_file).")]


@agents_app.command("add")
def add_command(name: Annotated[str, typer.Argument(help="Agent id, e.g. alice")],
                file: FileOption,
                role: Annotated[str, typer.Option(help="agent | supervisor | admin")] = "agent",
                ) -> int:
    """Create an API key for NAME; it is printed once and only its hash is stored."""
    if role not in ROLES:
        print(f"toneguard agents add: --role must be one of {', '.join(ROLES)}")
        return 2
    directory = AgentDirectory.load(file)
    key = directory.add(name, role)
    directory.save(file)
    print(key)
    return 0


@agents_app.command("list")
def list_command(file: FileOption) -> int:
    """List agents and roles (never keys)."""
    for name, role in AgentDirectory.load(file).agents():
        print(f"{name}\t{role}")
    return 0
