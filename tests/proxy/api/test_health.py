"""/healthz answers while the process lives; /readyz says whether the node can take calls and,
if not, why — without a key (load balancers ask) and without any call data."""

from __future__ import annotations

import asyncio

import httpx

from tests.proxy.conftest import Stack


async def test_liveness_and_readiness(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        async with asyncio.timeout(10):  # ready once the media engine has answered
            while (ready := await http.get("/readyz")).status_code != 200:
                assert ready.status_code == 503
                assert ready.json()["problems"] == ["media engines answering: 0 of 1"]
                await asyncio.sleep(0.1)
        assert ready.json() == {"status": "ready", "problems": []}
        stack.node.ng.transport.close()  # the ng socket is gone: Kamailio cannot reach us
        await asyncio.sleep(0)
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["problems"] == ["ng socket not open"]
