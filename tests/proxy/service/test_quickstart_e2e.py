"""docs/quickstart.md end to end: the shipped config, kamailio.cfg, sipp scenario and card pcap,
with the real `toneguard` commands as subprocesses, give a tokenised payment.

The same steps as the document, on ports picked free for this test (the document's fixed ports
may be taken by parallel tests): gateway init/serve, agents add, toneguard serve with
config/quickstart.toml, Kamailio, sipp for the contact centre and the customer, then the
supervisor assigns the call and the agent starts the payment over the API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import pick_tcp_port, pick_udp_port
from tests.proxy.control.sip_peers import CARRIER_IP, CENTRE_IP, kamailio, stop, wait_udp_bound

ROOT = Path(__file__).resolve().parents[3]
PAN = "4111111111111111"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def toneguard(workdir: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "proxy", *args], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


async def _spawn(workdir: Path, name: str, *args: str) -> asyncio.subprocess.Process:
    log = (workdir / f"{name}.log").open("wb")
    return await asyncio.create_subprocess_exec(*args, cwd=workdir, env=_env(), stdout=log,
                                                stderr=log, stdin=asyncio.subprocess.DEVNULL)


async def _until(condition, timeout: float, what: str) -> object:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not (value := await condition()):
            await asyncio.sleep(0.2)
    assert value, what
    return value


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in reversed(procs):
        await stop(proc)


async def test_quickstart_gives_a_tokenised_payment_through_kamailio(
    tmp_path: Path, processes: list[asyncio.subprocess.Process], media_ports: tuple[int, int]
) -> None:
    ng, sip, centre, carrier = (pick_udp_port() for _ in range(4))
    api, gateway = pick_tcp_port(), pick_tcp_port()
    media = media_ports[0]
    py = sys.executable

    # 2. The gateway.
    toneguard(tmp_path, "gateway", "init", "--data-dir", "data/gateway")
    processes.append(await _spawn(tmp_path, "gateway", py, "-m", "proxy", "gateway", "serve",
                                  "--data-dir", "data/gateway",
                                  "--listen", f"127.0.0.1:{gateway}"))
    # 3. Agents.
    supervisor = toneguard(tmp_path, "agents", "add", "supervisor", "--role", "supervisor",
                           "--file", "data/agents.json")
    alice = toneguard(tmp_path, "agents", "add", "alice", "--file", "data/agents.json")
    # 4. ToneGuard with the shipped config, its ports moved to this test's.
    config = (ROOT / "config" / "quickstart.toml").read_text()
    for old, new in (("127.0.0.1:2223", f"127.0.0.1:{ng}"), ("127.0.0.1:8080", f"127.0.0.1:{api}"),
                     ("127.0.0.1:8443", f"127.0.0.1:{gateway}"),
                     ("port_min = 30000", f"port_min = {media}"),
                     ("port_max = 30100", f"port_max = {media + 100}")):
        assert old in config
        config = config.replace(old, new)
    (tmp_path / "quickstart.toml").write_text(config)
    processes.append(await _spawn(tmp_path, "toneguard", py, "-m", "proxy", "serve", "-c",
                                  "quickstart.toml"))
    base = f"http://127.0.0.1:{api}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        async def api_up() -> bool:
            try:
                # /v1/me: up, and alice's key (from the agents file) is accepted.
                r = await http.get("/v1/me", headers={"Authorization": f"Bearer {alice}"})
                return r.status_code == 200
            except httpx.TransportError:
                return False

        await _until(api_up, 30, "ToneGuard's API answers")
        await wait_udp_bound("127.0.0.1", ng)
        # 5-7. Kamailio, the contact centre's phone, the customer's phone.
        async with kamailio(tmp_path, sip_port=sip, ng_port=ng, centre_port=centre,
                            carrier_port=carrier):
            processes.append(await _spawn(
                tmp_path, "uas", "sipp", "-sn", "uas", "-i", CENTRE_IP, "-p", str(centre),
                "-mi", CENTRE_IP, "-mp", str(pick_udp_port()), "-m", "1", "-nostdin"))
            await wait_udp_bound(CENTRE_IP, centre)
            for name in ("customer.xml", "card-4111.pcap"):
                shutil.copy(ROOT / "config" / "sipp" / name, tmp_path / name)
            customer = await _spawn(
                tmp_path, "customer", "sipp", f"127.0.0.1:{sip}", "-sf", "customer.xml",
                "-i", CARRIER_IP, "-p", str(carrier), "-mi", CARRIER_IP,
                "-mp", str(pick_udp_port()), "-m", "1", "-d", "3000", "-nostdin")
            processes.append(customer)

            # 8. Assign the call to alice, start the payment as alice, wait for the token.
            as_supervisor = {"Authorization": f"Bearer {supervisor}"}
            as_alice = {"Authorization": f"Bearer {alice}"}

            async def a_call() -> str:
                calls = (await http.get("/v1/calls", headers=as_supervisor)).json()
                return calls[0]["call_id"] if calls else ""

            call_id = await _until(a_call, 15, "the customer's call reaches ToneGuard")
            r = await http.post(f"/v1/calls/{call_id}/assign", json={"agent_id": "alice"},
                                headers=as_supervisor)
            assert r.status_code == 200, r.text
            r = await http.post(f"/v1/calls/{call_id}/payments", json={}, headers=as_alice)
            assert r.status_code == 201, r.text
            sid = r.json()["sid"]

            async def finished() -> dict:
                p = (await http.get(f"/v1/calls/{call_id}/payments/{sid}",
                                    headers=as_alice)).json()
                return p if p["status"] in ("complete", "failed") else {}

            payment = await _until(finished, 40, "the payment finishes")
            assert payment["status"] == "complete", payment
            assert payment["token"].startswith("tok_") and payment["last4"] == "1111"
            assert payment["brand"] == "visa" and payment["error"] == ""
            async with asyncio.timeout(30):
                assert await customer.wait() == 0  # the call ended cleanly (BYE answered)
    for log in tmp_path.glob("*.log"):
        assert PAN not in log.read_text(errors="replace"), log.name
    assert PAN not in (tmp_path / "data" / "audit.jsonl").read_text()
