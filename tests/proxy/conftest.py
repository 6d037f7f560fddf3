"""A whole ToneGuard stack on loopback: the gateway stub (mutual TLS) and a node with its API."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.pki import PkiPaths, init_pki
from proxy.api.auth import AgentDirectory
from proxy.media.engine import LocalMediaEngine
from proxy.media.masking import MaskingPipeline
from proxy.securepay.audit import AuditLog
from proxy.service.config import load_config
from proxy.service.logging import configure_logging
from proxy.service.serve import Node
from tests.conftest import pick_udp_port
from tests.gateway.stub import running_gateway


@dataclass
class Stack:
    node: Node
    pki: PkiPaths
    api: str
    admin_key: str
    agent_key: str
    other_agent_key: str
    supervisor_key: str
    logs: io.StringIO
    audit_file: Path

    @property
    def ng(self) -> tuple[str, int]:
        return self.node.ng_address


@pytest.fixture
async def stack(tmp_path: Path, media_ports: tuple[int, int]) -> AsyncIterator[Stack]:
    logs = io.StringIO()
    configure_logging("json", "debug", stream=logs)
    pki = init_pki(tmp_path / "gateway")
    async with running_gateway(pki) as gateway:
        agents = AgentDirectory()
        keys = {name: agents.add(name, role) for name, role in (
            ("admin", "admin"), ("agent-demo", "agent"), ("agent-other", "agent"),
            ("supervisor", "supervisor"))}
        audit_file = tmp_path / "audit.jsonl"
        config = load_config(overrides={
            "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
            "media": {"port_min": media_ports[0], "port_max": media_ports[1]},
            "api": {"listen": "127.0.0.1:0"},
            "logging": {"level": "debug"},
            "gateway": gateway.config(),
        })
        node = await Node.start(config, agents=agents, audit=AuditLog(audit_file))
        assert node.api_address is not None
        yield Stack(node, pki, f"http://127.0.0.1:{node.api_address[1]}", keys["admin"],
                    keys["agent-demo"], keys["agent-other"], keys["supervisor"], logs,
                    audit_file)
        await node.stop()
        node.payments.audit.close()
    configure_logging("console", "info")


@pytest.fixture
async def engine(media_ports: tuple[int, int]) -> AsyncIterator[LocalMediaEngine]:
    """The in-process media engine on loopback, started and stopped."""
    engine = LocalMediaEngine("127.0.0.1", *media_ports)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def masking_engine(media_ports: tuple[int, int]) -> AsyncIterator[LocalMediaEngine]:
    """The in-process media engine with the masking pipeline (26 ms look-ahead), started."""
    engine = LocalMediaEngine("127.0.0.1", *media_ports,
                              pipeline_factory=lambda: MaskingPipeline(lookahead_ms=26))
    await engine.start()
    yield engine
    await engine.stop()
