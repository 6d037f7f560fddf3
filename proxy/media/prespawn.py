"""Media worker processes spawned first thing by ``toneguard serve``, before its own imports.

Why: a worker is a fresh interpreter that imports the media plane (NumPy, the detector,
libsrtp: ~1 s of CPU on a loaded host; OpenSSL only with a DTLS leg) and only then relays.
Spawned by the media engine's start, that came after the node's own imports and
configuration, so after a restart the two added up before the first restored call relayed;
spawned here, the workers import while the node does. This module imports only the standard
library (it runs before anything else); a pre-spawned worker waits on its pipe for its spec
(``proxy.media.workers``), and one the node does not need exits when its pipe closes.
"""

from __future__ import annotations

import multiprocessing
import os
import tomllib
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MAX_WORKERS = 64  # as proxy.service.config's media.workers
_warm: list[tuple[Any, Connection]] = []  # (process, the node's end of its pipe)


def _warm_main(conn: Connection, parent_pid: int) -> None:
    """A pre-spawned worker's entry point (runs in the child)."""
    from proxy.media.workers import worker_main

    worker_main(conn, None, parent_pid)


def prespawn(count: int) -> None:
    """Start ``count`` worker processes now; the next WorkerPoolEngine adopts them."""
    context = multiprocessing.get_context("spawn")
    for _ in range(count):
        conn, child = context.Pipe()
        process = context.Process(target=_warm_main, args=(child, os.getpid()),
                                  name="toneguard-media", daemon=True)
        process.start()
        child.close()
        _warm.append((process, conn))


def take() -> tuple[Any, Connection] | None:
    """A pre-spawned worker still alive, or None."""
    while _warm:
        process, conn = _warm.pop(0)
        if process.is_alive():
            return process, conn
        conn.close()
    return None


def discard() -> None:
    """Let the pre-spawned workers nobody adopted go (they exit on the closed pipe)."""
    while _warm:
        _, conn = _warm.pop()
        conn.close()


def expected_workers(argv: list[str]) -> int:
    """How many media worker processes ``toneguard serve argv`` will run, read cheaply
    (``--workers``, else ``media.workers`` of ``-c FILE``; 0 = one per core); 0 when it
    runs media in process or this cannot tell (the engine then spawns them itself), when
    the host has no core to spare for the node itself, or with ``TONEGUARD_PRESPAWN=0`` in
    the environment (``=1``: even without a spare core)."""
    setting = os.environ.get("TONEGUARD_PRESPAWN", "")
    if setting == "0":  # off (e.g. to measure without)
        return 0
    try:
        workers: int | None = None
        config: str | None = None
        for i, arg in enumerate(argv):
            flag, _, value = arg.partition("=")
            if flag == "--workers":
                workers = int(value or argv[i + 1])
            elif flag in ("-c", "--config"):
                config = value or argv[i + 1]
        if workers is None and config is not None:
            media = tomllib.loads(Path(config).read_text("utf-8")).get("media", {})
            workers = media.get("workers")
        if workers is None:
            return 0  # the default: media in process
        count = workers or os.cpu_count() or 1
    except (IndexError, ValueError, OSError, AttributeError, tomllib.TOMLDecodeError):
        return 0
    # Outside what the config allows (media.workers ≤ 64): the node refuses to start, and
    # must not first spawn (and then wait out) that many processes.
    if not 1 < count <= MAX_WORKERS:
        return 0
    # Only with a core to spare for the node's own start (or TONEGUARD_PRESPAWN=1): measured
    # on a 2-core host with 2 workers, the workers' imports only slowed the node's own
    # ("configured" 2 s → 3.6-5.6 s) and the first relayed packet came no sooner.
    if setting != "1" and (os.cpu_count() or 1) <= count:
        return 0
    return count
