"""The API stack is imported in a thread at start-up, so that nothing the API or the gateway
client needs is imported later on the event loop, where every call's media would wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]


def test_the_first_gateway_request_imports_nothing_new_on_the_event_loop() -> None:
    # What an httpx request imports on first use (anyio's asyncio backend, via httpcore) must
    # already be in sys.modules once the node's API stack is imported.
    code = """
import asyncio, sys
from proxy.service.serve import import_api_stack
import_api_stack()
import httpx
client = httpx.AsyncClient()  # the node builds its gateway client at start-up
before = set(sys.modules)

async def first_request() -> None:
    try:
        await client.get("http://127.0.0.1:9/", timeout=2)  # refused: only imports matter
    except httpx.HTTPError:
        pass
    await client.aclose()

asyncio.run(first_request())
print(sorted(m for m in set(sys.modules) - before if m.startswith(("anyio", "httpcore"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]", out.stdout
