"""Shared fixtures: free loopback ports, a scratch artifacts folder."""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("TONEGUARD_TEST_ARTIFACTS", "test-artifacts"))


# Ports handed to peers that bind them later (sipp, baresip, Kamailio, nodes) come from
# 10016-19999, below the kernel's ephemeral range (32768-60999) and the media windows below.
# Why not bind port 0 and close: the kernel may give that port to any process's next outgoing
# socket before the peer binds it (a CI run lost a sipp to errno 98 that way). Each pick is a
# block of 32 ports, because sipp binds port..port+3 and baresip a range of 20 from its base;
# picks walk the blocks from a random start, so this process reuses a block only after 300
# more picks, and a block another process holds is skipped by the bind check.
_PICK_BASE, _PICK_BLOCK, _PICK_BLOCKS = 10016, 32, 312
_pick_next = itertools.count(random.randrange(_PICK_BLOCKS))


def _pick_port(kind: socket.SocketKind, host: str) -> int:
    for _ in range(_PICK_BLOCKS):
        port = _PICK_BASE + next(_pick_next) % _PICK_BLOCKS * _PICK_BLOCK
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port block on {host} in {_PICK_BASE}-"
                       f"{_PICK_BASE + _PICK_BLOCKS * _PICK_BLOCK - 1}")


def pick_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that is free and that no outgoing socket will be given."""
    return _pick_port(socket.SOCK_DGRAM, host)


def udp_port_bound(host: str, port: int) -> bool:
    """Whether some socket has bound UDP ``host``:``port`` (IPv4), read from /proc/net/udp.

    Why not try to bind it: a probe that binds holds the port for an instant, and a peer
    starting at that instant fails with errno 98 (a CI run lost a sipp that way while the
    test polled for it to come up). Reading the kernel's table never takes the port."""
    wanted = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    wildcard = f"00000000:{port:04X}"
    with open("/proc/net/udp") as table:
        next(table)  # the heading
        return any(line.split()[1] in (wanted, wildcard) for line in table)


def pick_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free and that no outgoing socket will be given."""
    return _pick_port(socket.SOCK_STREAM, host)


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


MEDIA_PORT_BASE, MEDIA_PORT_WINDOW, MEDIA_PORT_WINDOWS = 20000, 200, 45  # 20000–28999
_PORT_LOCKS = Path(tempfile.gettempdir()) / "toneguard-test-media-ports"


@pytest.fixture
def media_ports() -> Iterator[tuple[int, int]]:
    """A media port range of 200 ports (even start) that no other test process holds.

    Why a lock: the engine binds its RTP ports with SO_REUSEPORT (for its connected sockets),
    and the kernel lets ANOTHER process of the same user bind the same port that way too, then
    hashes each flow to one of them. Two test runs on this shared machine (several engineers at
    once) that picked overlapping ranges therefore split each other's calls without any error
    — a whole call's media can land in the other process. Each window is held under an
    exclusive ``flock`` for the test's duration (released by the kernel if the process dies).
    """
    _PORT_LOCKS.mkdir(exist_ok=True)
    first = pick_udp_port() % MEDIA_PORT_WINDOWS
    for step in range(MEDIA_PORT_WINDOWS):
        base = MEDIA_PORT_BASE + (first + step) % MEDIA_PORT_WINDOWS * MEDIA_PORT_WINDOW
        fd = os.open(_PORT_LOCKS / f"{base}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield base, base + MEDIA_PORT_WINDOW - 1  # the last port is the next window's
        finally:
            os.close(fd)  # releases the lock
        return
    pytest.fail(f"all {MEDIA_PORT_WINDOWS} media port windows are held by other test runs")
