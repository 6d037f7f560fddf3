"""The gateway stub served in the test's event loop (mutual TLS, loopback), for any test that
needs a real gateway: the gateway's own tests, the whole-stack fixture, multi-node clusters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.pki import PkiPaths
from gateway.server import build_server
from tests.conftest import pick_tcp_port


@dataclass(frozen=True)
class RunningGateway:
    url: str
    pki: PkiPaths

    def config(self) -> dict[str, str]:
        """A node's [gateway] settings for this stub (its client certificate, the stub's CA)."""
        return {"url": self.url, "ca_file": str(self.pki.ca_cert),
                "cert_file": str(self.pki.client_cert), "key_file": str(self.pki.client_key)}


@asynccontextmanager
async def running_gateway(pki: PkiPaths) -> AsyncIterator[RunningGateway]:
    """The stub with ``pki``'s server certificate on a free loopback port, serving once this
    yields (bounded wait) and stopped when the block ends."""
    port = pick_tcp_port()
    server = build_server(pki, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield RunningGateway(f"https://127.0.0.1:{port}", pki)
    finally:
        server.should_exit = True
        await task
