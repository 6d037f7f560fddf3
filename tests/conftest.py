"""Shared fixtures: free loopback ports, a scratch artifacts folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("TONEGUARD_TEST_ARTIFACTS", "test-artifacts"))


def pick_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pick_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder under test-artifacts/ named after the test, for screenshots and captures."""
    path = ARTIFACTS / request.node.name.replace("/", "_")
    path.mkdir(parents=True, exist_ok=True)
    yield path


@pytest.fixture
def free_udp_port() -> int:
    return pick_udp_port()


@pytest.fixture
def free_tcp_port() -> int:
    return pick_tcp_port()


@pytest.fixture
def media_ports() -> tuple[int, int]:
    """A media port range of 200 ports (even start) around a port that is free now."""
    base = 20000 + (pick_udp_port() % 9000) // 2 * 2
    return base, base + 200
