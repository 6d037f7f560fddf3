"""Two `toneguard serve` nodes (media on 127.0.0.2 and 127.0.0.3) behind the real Kamailio
rtpengine module with a set of both, sharing Redis: sipp calls spread over both; the API of
either node lists every call and acts on a call of the other (forwarded to its owner); one
node stopped → Kamailio disables it and new calls go to the other, whose calls go on."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest
import websockets

from proxy.api.app import WS_SUBPROTOCOL
from proxy.control.ng_client import NgClient
from tests.conftest import pick_udp_port
from tests.proxy.control.sip_peers import CARRIER_IP, KAMAILIO_CFG, stop
from tests.proxy.store.conftest import RedisServer
from tests.proxy.store.nodes import NodeProcess, cluster
from tests.proxy.store.test_restart import _until

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sip-tester (sipp)"),
]

FIRST, SECOND = 12, 6  # calls before and after a node stops


async def _calls(node: NodeProcess) -> set[str]:
    async with await NgClient.connect(node.ng) as ng:
        return set((await ng.request({"command": "list"}))["calls"])


async def _kamailio(workdir: Path, sip_port: int, nodes: list[NodeProcess], uas_port: int, *,
                    weights: list[int] | None = None, timeout_ms: int = 500
                    ) -> asyncio.subprocess.Process:
    """Kamailio with an rtpengine set of ``nodes`` (weighted as ``weights``, if given); a dead
    node costs one ``timeout_ms`` timeout (no retry), then the module disables it and uses
    another."""
    sockets = " ".join(f"udp:{h}:{p}" + (f"={weights[i]}" if weights else "")
                       for i, (h, p) in enumerate(n.ng for n in nodes))
    cfg = KAMAILIO_CFG.read_text().replace(
        "SIP_LISTEN udp:127.0.0.1:5060", f"SIP_LISTEN udp:127.0.0.1:{sip_port}").replace(
        '"udp:127.0.0.1:2223"', f'"{sockets}"').replace(
        '"sip:127.0.0.1:5080"', f'"sip:127.0.0.1:{uas_port}"')
    cfg = cfg.replace('modparam("rtpengine", "rtpengine_sock", TONEGUARD_NG)',
                      'modparam("rtpengine", "rtpengine_sock", TONEGUARD_NG)\n'
                      f'modparam("rtpengine", "rtpengine_tout_ms", {timeout_ms})\n'
                      'modparam("rtpengine", "rtpengine_retr", 1)')
    assert sockets in cfg and "rtpengine_tout_ms" in cfg
    (workdir / "kamailio.cfg").write_text(cfg)
    log = (workdir / "kamailio.log").open("wb")
    return await asyncio.create_subprocess_exec(
        "kamailio", "-f", str(workdir / "kamailio.cfg"), "-DD", "-E", "-w", str(workdir),
        "-P", str(workdir / "kamailio.pid"), stdout=log, stderr=log)


async def _uac(workdir: Path, sip_port: int, calls: int, hold_ms: int
               ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uac", f"127.0.0.1:{sip_port}", "-i", CARRIER_IP,
        "-p", str(pick_udp_port(CARRIER_IP)), "-mi", CARRIER_IP,
        "-mp", str(pick_udp_port(CARRIER_IP)), "-m", str(calls), "-r", str(calls),
        "-l", str(calls), "-d", str(hold_ms), "-timeout", "90", "-timeout_error", "-nostdin",
        cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def test_two_nodes_behind_kamailio_share_calls_and_survive_one_stopping(
        tmp_path: Path, redis_server: RedisServer, store_key: Path,
        media_ports: tuple[int, int]) -> None:
    low, high = media_ports
    mid = low + (high - low) // 2 // 2 * 2
    procs: list[asyncio.subprocess.Process] = []
    async with cluster(tmp_path, store_key) as c:
        a = c.node("node-a", store_url=redis_server.url, media_ports=(low, mid - 1),
                   media_address="127.0.0.2")
        b = c.node("node-b", store_url=redis_server.url, media_ports=(mid, high),
                   media_address="127.0.0.3")
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.ready(), b.ready())
        sip_port, uas_port = pick_udp_port(), pick_udp_port()
        try:
            procs.append(await asyncio.create_subprocess_exec(
                "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                "-mi", "127.0.0.1", "-mp", str(pick_udp_port()), "-m", str(FIRST + SECOND),
                "-nostdin", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL))
            procs.append(await _kamailio(tmp_path, sip_port, [a, b], uas_port))
            await asyncio.sleep(0.5)  # kamailio binds; a lost first INVITE is retransmitted
            procs.append(await _uac(tmp_path, sip_port, FIRST, 40_000))

            async def all_up() -> tuple[set[str], set[str]]:
                on_a, on_b = await _calls(a), await _calls(b)
                return (on_a, on_b) if len(on_a | on_b) == FIRST else ()  # type: ignore[return-value]
            on_a, on_b = await _until(all_up, 30, f"{FIRST} calls set up through kamailio")
            print(f"\ncalls spread: node-a {len(on_a)}, node-b {len(on_b)}")
            assert on_a and on_b and not on_a & on_b  # spread, each call on one node

            supervisor = {"Authorization": f"Bearer {c.keys['supervisor']}"}
            alice = {"Authorization": f"Bearer {c.keys['alice']}"}
            remote = sorted(on_b)[0]
            ws_url = a.api.replace("http", "ws") + "/v1/events"
            async with httpx.AsyncClient(timeout=10) as http, websockets.connect(
                    ws_url, subprotocols=[WS_SUBPROTOCOL, c.keys["alice"]]) as events:
                # Either node's API lists the calls of both.
                for node in (a, b):
                    listed = (await http.get(f"{node.api}/v1/calls", headers=supervisor)).json()
                    assert {x["call_id"] for x in listed} == on_a | on_b
                # An action on node-b's call, sent to node-a, happens on node-b.
                r = await http.post(f"{a.api}/v1/calls/{remote}/assign",
                                    json={"agent_id": "alice"}, headers=supervisor)
                assert r.status_code == 200, r.text
                r = await http.post(f"{a.api}/v1/calls/{remote}/payments", json={},
                                    headers=alice)
                assert r.status_code == 201, r.text
                sid = r.json()["sid"]
                r = await http.get(f"{b.api}/v1/calls/{remote}/payments/{sid}", headers=alice)
                assert r.status_code == 200 and r.json()["status"] == "capturing"
                # The payment's events reach alice's WebSocket on node-a (Redis pub/sub).
                async with asyncio.timeout(10):
                    event = json.loads(await events.recv())
                assert (event["type"], event["call_id"], event["sid"]) == (
                    "started", remote, sid)
                mine = (await http.get(f"{a.api}/v1/calls", headers=alice)).json()
                assert [x["call_id"] for x in mine] == [remote]  # alice sees hers, any node
                assert mine[0]["payment_sid"] == sid
                r = await http.post(f"{a.api}/v1/calls/{remote}/payments/{sid}",
                                    json={"Status": "cancel"}, headers=alice)
                assert r.status_code == 200 and r.json()["status"] == "cancelled"

            # node-a stops: new calls all go to node-b; node-b's calls go on.
            await a.stop()
            procs.append(await _uac(tmp_path, sip_port, SECOND, 5_000))

            async def moved() -> set[str]:
                now = await _calls(b)
                return now if len(now - on_b) == SECOND else set()
            now_b = await _until(moved, 30, f"{SECOND} new calls on node-b")
            assert on_b <= now_b  # the survivor's calls go on
            assert len(now_b - on_b) == SECOND
            async with asyncio.timeout(60):
                rc = await procs[-1].wait()
            errors = (await procs[-1].stderr.read()).decode() if procs[-1].stderr else ""
            assert rc == 0, errors[-2000:]  # every call of the second batch completed
        finally:
            for proc in reversed(procs):
                await stop(proc)
