"""A restarted node relays its restored calls before it imports the API stack.

Why: after ``kill -9`` the node's live calls are silent until it relays again, and FastAPI,
pydantic's API models and uvicorn were about half of the start-up imports. Checked without any
timing: ``python -X importtime`` writes a line to stderr as each module finishes importing, the
node logs to the same stderr, so the order of the lines is the order of the events.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
from pathlib import Path

import pytest

from proxy.control.ng_client import NgClient
from proxy.demo.sdp_builder import audio_sdp
from proxy.service.cli import main
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.proxy.service.serve_process import node_toml, spawn_serve, wait_ready
from tests.proxy.store.conftest import RedisServer

API_STACK = ("fastapi", "starlette", "uvicorn", "proxy.api.app", "prometheus_client")
NOT_FOR_SERVE = ("proxy.service.scan", "gateway.cli", "proxy.demo.command",
                 "proxy.service.agents_cli", "scipy")


def _imported(line: str) -> str | None:
    """The module an ``-X importtime`` line reports, else None."""
    if not line.startswith("import time:"):
        return None
    return line.rsplit("|", 1)[-1].strip()


async def test_restart_restores_and_relays_before_importing_the_api_stack(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    ng_port, api_port = pick_udp_port(), pick_tcp_port()
    api = f"http://127.0.0.1:{api_port}"
    config = tmp_path / "node.toml"
    config.write_text(node_toml(ng_port=ng_port, api_port=api_port, media_ports=media_ports,
                                extra=f"""[store]
url = "{redis_server.url}"
key_file = "{store_key}"
node_id = "startup"
"""))
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    proc = await spawn_serve(config, first, "-X", "importtime")
    ng = await NgClient.connect(("127.0.0.1", ng_port))
    try:
        await wait_ready(api, proc, first)
        await ng.request({"command": "offer", "call-id": "startup-1",
                          "from-tag": "ft", "label": "customer",
                          "sdp": audio_sdp("127.0.0.1", 40000)})
        await ng.request({"command": "answer", "call-id": "startup-1",
                          "from-tag": "ft", "to-tag": "tt", "label": "agent",
                          "sdp": audio_sdp("127.0.0.1", 40002)})
        client = redis_server.client()
        try:
            async with asyncio.timeout(10):  # the writer's batch reached Redis
                while not await client.exists("toneguard:call:startup-1"):
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        proc.kill()
        await proc.wait()

        proc = await spawn_serve(config, second, "-X", "importtime")
        await wait_ready(api, proc, second)  # the API did start, after the restore
        listed = await ng.request({"command": "list"})
        assert "startup-1" in listed["calls"]
    finally:
        ng.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(20):
                await proc.wait()

    lines = second.read_text(errors="replace").splitlines()
    events = {json.loads(line).get("event"): i for i, line in enumerate(lines)
              if line.startswith("{")}
    restored = next(i for i, line in enumerate(lines)
                    if line.startswith("{") and json.loads(line).get("event")
                    == "calls restored from the store")
    assert json.loads(lines[restored])["calls"] == 1
    modules = [(i, name) for i, line in enumerate(lines) if (name := _imported(line))]
    api_lines = [i for i, name in modules if name.split(".")[0] in API_STACK
                 or name in API_STACK]
    assert api_lines, "the API stack was imported at all (the API answered /readyz)"
    assert restored < min(api_lines), [name for i, name in modules if i in api_lines][:5]
    # Nothing of the other subcommands is imported by `serve`.
    assert not [name for _, name in modules
                if any(name == m or name.startswith(m + ".") for m in NOT_FOR_SERVE)]
    assert "toneguard node started" in events
    # The node says where its start went: each milestone after the one before it.
    timings = json.loads(lines[events["start-up timings"]])["seconds_since_process_start"]
    order = ["configured", "media", "ng", "api_imported", "started"]
    assert list(timings) == order
    assert [timings[k] for k in order] == sorted(timings.values()) and timings["configured"] > 0


def test_serve_turns_the_collector_back_on_when_it_does_not_start(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`serve` starts with the garbage collector off; a refused start must not leave it off."""
    assert gc.isenabled()
    assert main(["serve", "--store", "redis://127.0.0.1:1/0"]) == 2  # no key_file: refused
    assert "key_file" in capsys.readouterr().err
    assert gc.isenabled()
