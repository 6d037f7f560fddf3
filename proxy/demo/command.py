"""`toneguard demo`: ToneGuard, the gateway stub and a simulated call, all on loopback.

1. creates a throw-away PKI and card key, starts the gateway stub (its own process, mutual TLS);
2. starts a ToneGuard node (ng, media, API, panel) wired to it, with two demo API keys;
3. runs the call simulator (its own process: it holds the test card, as a caller's phone
   would), which keys a card in-band while "the agent" watches masked progress;
4. prints the agent's view, the token and a leak check of the agent's audio, and keeps the
   panel up until Ctrl-C (or exits with ``--once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from gateway.pki import init_pki
from proxy.api.auth import AgentDirectory
from proxy.service.config import load_config
from proxy.service.logging import configure_logging
from proxy.service.serve import Node


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _wait_tcp(port: int, proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if proc.returncode is not None:
                raise RuntimeError("the gateway stub exited during start-up")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)


async def run_demo(once: bool, api_port: int) -> int:
    with tempfile.TemporaryDirectory(prefix="toneguard-demo-") as tmp:
        pki = init_pki(Path(tmp) / "gateway")
        gateway_port = _free_port(socket.SOCK_STREAM)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "gateway", "serve", "--data-dir",
            str(pki.root), "--listen", f"127.0.0.1:{gateway_port}")
        node = None
        try:
            await _wait_tcp(gateway_port, gateway)
            agents = AgentDirectory()
            admin_key = agents.add("supervisor-demo", "admin")
            agent_key = agents.add("agent-demo", "agent")
            media = 20000 + (_free_port(socket.SOCK_DGRAM) % 9000) // 2 * 2
            config = load_config(overrides={
                "ng": {"listen": f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"},
                "media": {"port_min": media, "port_max": media + 100},
                "api": {"listen": f"127.0.0.1:{api_port}"},
                "gateway": {"url": f"https://127.0.0.1:{gateway_port}",
                            "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
                            "key_file": str(pki.client_key)},
            })
            node = await Node.start(config, agents=agents)
            assert node.api_address is not None
            api = f"http://127.0.0.1:{node.api_address[1]}"
            print(f"\nToneGuard is up: ng 127.0.0.1:{node.ng_address[1]}, agent panel {api}/panel")
            print(f"  agent API key (paste into the panel): {agent_key}\n")
            simulator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.demo.simulate", "--ng",
                f"127.0.0.1:{node.ng_address[1]}", "--api", api,
                *([] if once else ["--keep-call"]),
                env={**os.environ, "TONEGUARD_ADMIN_KEY": admin_key,
                     "TONEGUARD_AGENT_KEY": agent_key})
            code = await simulator.wait()
            if not once:
                print(f"\nPanel: {api}/panel (key above). Ctrl-C to stop.")
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
            return code
        finally:
            if node is not None:
                await node.stop()
            if gateway.returncode is None:
                gateway.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await gateway.wait()
                if gateway.returncode is None:
                    gateway.kill()
                    await gateway.wait()


def demo_command(
    once: Annotated[bool, typer.Option(help="Exit after the simulated call.")] = False,
    api_port: Annotated[int, typer.Option(help="Port of the API and panel (0 = any).")] = 8080,
) -> int:
    """Run ToneGuard, the gateway stub and a simulated card payment call on loopback."""
    configure_logging("console", "warning")
    if api_port and not _port_free(api_port):
        print(f"port {api_port} is busy; using a free one (--api-port to choose)")
        api_port = 0
    try:
        return asyncio.run(run_demo(once, api_port))
    except KeyboardInterrupt:
        return 130
