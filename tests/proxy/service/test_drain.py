"""Drain: ``toneguard serve`` as a subprocess gets SIGTERM with a live call. The call keeps
relaying (packets counted at the agent), its re-offers and ping are still answered, an offer
for a new call is refused the way Kamailio's rtpengine module moves on to another node, and
the node exits 0 once the last call is deleted — or at ``service.drain_seconds`` with the
call still up; a second signal stops it at once. Loopback only, every wait bounded."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from dsp import tones
from proxy.control.ng_client import NgClient, NgErrorReply
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.service.config import load_config
from proxy.service.logging import configure_logging
from proxy.service.serve import Node
from tests.conftest import pick_tcp_port, pick_udp_port
from tests.proxy.service.serve_process import node_toml, spawn_serve

START_SECONDS = 60  # start-up imports NumPy, SciPy, FastAPI on a shared, busy machine


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    log: Path
    ng: tuple[str, int]
    api: str

    def lines(self) -> list[dict[str, object]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines()]

    async def wait_logged(self, event: str, timeout: float = 20) -> dict[str, object]:
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines() if line.get("event") == event]
                if found:
                    return found[0]
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                await asyncio.sleep(0.05)

    async def exited(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


@dataclass
class Ng:
    client: NgClient

    async def __call__(self, **body: object) -> dict:
        return await self.client.request(dict(body))


async def _serve(tmp_path: Path, media_ports: tuple[int, int], drain_seconds: float
                 ) -> ServeProcess:
    ng_port, api_port = pick_udp_port(), pick_tcp_port()
    config = tmp_path / "site.toml"
    config.write_text(node_toml(ng_port=ng_port, api_port=api_port, media_ports=media_ports,
                                api="public_metrics = true",
                                extra=f"[service]\ndrain_seconds = {drain_seconds}"))
    log = tmp_path / "serve.log"
    proc = await spawn_serve(config, log)
    serving = ServeProcess(proc, log, ("127.0.0.1", ng_port), f"http://127.0.0.1:{api_port}")
    await serving.wait_logged("toneguard node started", timeout=START_SECONDS)
    return serving


@pytest.fixture
async def ng_factory() -> AsyncIterator[list[NgClient]]:
    clients: list[NgClient] = []
    yield clients
    for client in clients:
        client.close()


async def _ng(address: tuple[str, int], clients: list[NgClient]) -> Ng:
    client = await NgClient.connect(address)
    clients.append(client)
    return Ng(client)


async def _kill(serving: ServeProcess | None) -> None:
    if serving is not None and serving.proc.returncode is None:
        serving.proc.kill()
        await serving.proc.wait()


async def _call(ng: Ng, call_id: str, caller: RtpPeer, agent: RtpPeer
                ) -> tuple[tuple[str, int], tuple[str, int]]:
    """Offer and answer as Kamailio does; where the caller and the agent must send to."""
    offer = await ng(command="offer", **{"call-id": call_id, "from-tag": "c",
                                         "supports": ["load limit"],
                                         "sdp": audio_sdp("127.0.0.1", caller.port)})
    answer = await ng(command="answer", **{"call-id": call_id, "from-tag": "c", "to-tag": "a",
                                           "supports": ["load limit"],
                                           "sdp": audio_sdp("127.0.0.1", agent.port)})
    return media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])


def _speech(seconds: float, seed: int) -> np.ndarray:
    return tones.white_noise(int(8000 * seconds), -20.0, np.random.default_rng(seed))


async def test_sigterm_keeps_the_live_call_refuses_new_ones_and_exits_after_the_delete(
        tmp_path: Path, media_ports: tuple[int, int],
        ng_factory: list[NgClient]) -> None:
    serving = None
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    try:
        serving = await _serve(tmp_path, media_ports, drain_seconds=600)
        ng = await _ng(serving.ng, ng_factory)
        assert (await ng(command="ping"))["result"] == "pong"
        to_node, _ = await _call(ng, "live-1", caller, agent)
        sent = await caller.play(_speech(0.4, 1), to_node)
        await agent.wait_for(sent, timeout=10)  # relaying before the drain

        serving.proc.send_signal(signal.SIGTERM)
        started = await serving.wait_logged("drain started: new offers refused, live calls kept")
        assert started["calls"] == 1 and started["limit_seconds"] == 600

        # A new call: refused with "load limit" (Kamailio's rtpengine module then queries the
        # next node of its set), or "Parallel session limit reached" for a client that does not
        # say it supports that (the error Kamailio 5.6 also fails over on).
        refused = await ng(command="offer", **{"call-id": "new-1", "from-tag": "x",
                                               "supports": ["load limit"],
                                               "sdp": audio_sdp("127.0.0.1", 40000)})
        assert refused == {"result": "load limit",
                           "message": "draining: this node takes no new calls"}
        with pytest.raises(NgErrorReply, match="Parallel session limit reached"):
            await ng(command="offer", **{"call-id": "new-2", "from-tag": "x",
                                         "sdp": audio_sdp("127.0.0.1", 40002)})

        # The live call goes on: a re-offer (hold/resume, transfer) and ping are answered, and
        # its audio is still relayed, packet for packet.
        assert (await ng(command="ping"))["result"] == "pong"
        reoffer = await ng(command="offer", **{"call-id": "live-1", "from-tag": "c",
                                               "to-tag": "a", "supports": ["load limit"],
                                               "sdp": audio_sdp("127.0.0.1", caller.port)})
        reanswer = await ng(command="answer", **{"call-id": "live-1", "from-tag": "c",
                                                 "to-tag": "a", "supports": ["load limit"],
                                                 "sdp": audio_sdp("127.0.0.1", agent.port)})
        assert reoffer["result"] == reanswer["result"] == "ok"
        assert media_endpoint(reanswer["sdp"]) == to_node  # same ports: the call stays here
        before = len(agent.received.packets)
        sent = await caller.play(_speech(1.0, 2), to_node)
        assert sent == 50
        await agent.wait_for(before + sent, timeout=10)
        assert len(agent.received.packets) - before == sent
        listed = await ng(command="list")
        assert listed["calls"] == ["live-1"]  # the refused offers left nothing behind

        async with httpx.AsyncClient(base_url=serving.api) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["problems"] == ["draining"]
            assert (await http.get("/healthz")).status_code == 200
            metrics = (await http.get("/metrics")).text
        assert "toneguard_node_draining 1.0" in metrics
        assert "toneguard_ng_offers_refused_total 2.0" in metrics
        assert 'toneguard_ng_command_seconds_count{command="offer"} 4.0' in metrics
        assert serving.proc.returncode is None  # still up with its call

        await ng(command="delete", **{"call-id": "live-1", "from-tag": "c"})
        assert await serving.exited() == 0
        events = serving.events()
        assert "drain done: no live calls" in events
        assert events[-1] == "toneguard node stopped"
        assert "drain limit reached: stopping with live calls" not in events
        assert "stopping with live calls: their media ends now" not in events
        refusals = [line for line in serving.lines() if line["event"] == "offer refused: draining"]
        assert [r["call_id"] for r in refusals] == ["new-1", "new-2"]
    finally:
        caller.close()
        agent.close()
        await _kill(serving)


async def test_drain_stops_at_its_limit_with_the_call_still_up(
        tmp_path: Path, media_ports: tuple[int, int],
        ng_factory: list[NgClient]) -> None:
    serving = None
    caller, agent = await RtpPeer(seed=3).start(), await RtpPeer(seed=4).start()
    try:
        serving = await _serve(tmp_path, media_ports, drain_seconds=2)
        ng = await _ng(serving.ng, ng_factory)
        to_node, _ = await _call(ng, "long-1", caller, agent)
        sent = await caller.play(_speech(0.2, 3), to_node)
        await agent.wait_for(sent, timeout=10)
        serving.proc.send_signal(signal.SIGTERM)
        await serving.wait_logged("drain started: new offers refused, live calls kept")
        assert await serving.exited() == 0
        limit = [line for line in serving.lines()
                 if line["event"] == "drain limit reached: stopping with live calls"]
        assert limit and limit[0]["calls"] == 1 and limit[0]["limit_seconds"] == 2
        assert serving.events()[-1] == "toneguard node stopped"
    finally:
        caller.close()
        agent.close()
        await _kill(serving)


async def test_a_second_signal_while_draining_stops_at_once(
        tmp_path: Path, media_ports: tuple[int, int],
        ng_factory: list[NgClient]) -> None:
    serving = None
    caller, agent = await RtpPeer(seed=5).start(), await RtpPeer(seed=6).start()
    try:
        serving = await _serve(tmp_path, media_ports, drain_seconds=600)
        ng = await _ng(serving.ng, ng_factory)
        await _call(ng, "held-1", caller, agent)
        serving.proc.send_signal(signal.SIGTERM)
        await serving.wait_logged("drain started: new offers refused, live calls kept")
        serving.proc.send_signal(signal.SIGINT)
        assert await serving.exited() == 0  # long before the 600 s limit
        again = await serving.wait_logged("signalled again while draining: stopping now")
        assert again["signal"] == "SIGINT" and again["calls"] == 1
        assert "stopping with live calls: their media ends now" in serving.events()
    finally:
        caller.close()
        agent.close()
        await _kill(serving)


async def test_sigint_stops_at_once_without_draining(
        tmp_path: Path, media_ports: tuple[int, int],
        ng_factory: list[NgClient]) -> None:
    serving = None
    caller, agent = await RtpPeer(seed=7).start(), await RtpPeer(seed=8).start()
    try:
        serving = await _serve(tmp_path, media_ports, drain_seconds=600)
        ng = await _ng(serving.ng, ng_factory)
        await _call(ng, "ctrl-c", caller, agent)
        serving.proc.send_signal(signal.SIGINT)
        assert await serving.exited() == 0
        events = serving.events()
        assert "drain started: new offers refused, live calls kept" not in events
        assert "stopping with live calls: their media ends now" in events
    finally:
        caller.close()
        agent.close()
        await _kill(serving)


async def test_drain_reports_the_calls_left_as_they_end(media_ports: tuple[int, int]) -> None:
    """In process: two live calls; the drain logs each call that ends until none is left, and
    stays refusing new calls meanwhile (the subprocess tests above cover the signals)."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1]},
        "service": {"drain_seconds": 60}})
    node = await Node.start(config, api=False)
    try:
        for call_id, port in (("one", 41000), ("two", 41002)):
            await node.handle_ng({"command": "offer", "call-id": call_id, "from-tag": "c",
                                  "sdp": audio_sdp("127.0.0.1", port)})
        drain = asyncio.create_task(node.drain())
        async with asyncio.timeout(10):
            while "drain started" not in out.getvalue():
                await asyncio.sleep(0.01)
        assert not drain.done()
        refused = await node.handle_ng({"command": "offer", "call-id": "three", "from-tag": "x",
                                        "sdp": audio_sdp("127.0.0.1", 41004)})
        assert refused["error-reason"] == "Parallel session limit reached"
        await node.handle_ng({"command": "delete", "call-id": "one"})
        async with asyncio.timeout(10):
            while "draining: calls left" not in out.getvalue():
                await asyncio.sleep(0.01)
        assert not drain.done()
        await node.handle_ng({"command": "delete", "call-id": "two"})
        async with asyncio.timeout(10):
            assert await drain is True
        lines = [json.loads(line) for line in out.getvalue().splitlines()
                 if line.startswith("{")]
        drain_lines = [(line["event"], line.get("calls")) for line in lines
                       if str(line["event"]).startswith(("drain", "draining"))]
        assert drain_lines == [("drain started: new offers refused, live calls kept", 2),
                               ("draining: calls left", 1), ("drain done: no live calls", None)]
        assert node.ng_seconds()["delete"].count == 2 and node.ng_seconds()["offer"].count == 3
    finally:
        configure_logging("console", "info")
        await node.stop()
