"""``toneguard serve`` as a real subprocess, as the drain, restart and multi-node tests run it:
this tree's code first on the path, its output (JSON log lines) appended to a file."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]


def node_toml(*, ng_port: int, api_port: int, media_ports: tuple[int, int], api: str = "",
              extra: str = "") -> str:
    """A node's configuration: ng and the API on loopback, media in ``media_ports``, JSON
    logs; ``api`` is more lines of the [api] section, ``extra`` more sections after those."""
    return f"""
[ng]
listen = "127.0.0.1:{ng_port}"
[media]
port_min = {media_ports[0]}
port_max = {media_ports[1]}
[api]
listen = "127.0.0.1:{api_port}"
{api}
[logging]
format = "json"
{extra}"""


async def spawn_serve(config: Path, log: Path, *python_flags: str) -> asyncio.subprocess.Process:
    """``python PYTHON_FLAGS -m proxy serve -c CONFIG`` in the config's folder, stdout and stderr
    appended to ``log``, no stdin."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *python_flags, "-m", "proxy", "serve", "-c", str(config),
            cwd=config.parent, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL)


async def wait_ready(api: str, proc: asyncio.subprocess.Process, log: Path,
                     timeout: float = 60.0) -> dict:
    """Until the node's ``/readyz`` answers 200 (bounded; start-up imports NumPy and FastAPI on
    a shared machine); its JSON. The process exiting first raises with the end of its log."""
    async with httpx.AsyncClient(base_url=api, timeout=2) as http, asyncio.timeout(timeout):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the node exited {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                r = await http.get("/readyz")
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
