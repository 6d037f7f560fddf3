"""Several ToneGuard nodes started by the tool: they share a redis-server, calls go round robin
over their ng sockets, payments are taken on the node that owns the call, and workers reach the
node's config. Counts only, no timing (the machine is shared)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
import redis

from loadtest.runner import Runner
from loadtest.scenario import parse_scenario
from loadtest.summary import summarise
from loadtest.target import StartedTarget
from proxy.control import bencode

pytestmark = [pytest.mark.peer, pytest.mark.skipif(shutil.which("redis-server") is None,
                                                   reason="apt-get install redis-server")]


def _ng(address: tuple[str, int], body: dict) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"t1 " + bencode.encode(body), address)
        reply = bencode.decode(s.recv(65536).partition(b" ")[2])
    assert isinstance(reply, dict)
    return reply


@pytest.mark.timeout(180)
async def test_two_nodes_share_the_store_and_take_calls_round_robin(tmp_path: Path) -> None:
    scenario = parse_scenario({"name": "two-nodes",
                               "calls": {"total": 4, "concurrency": 4, "hold_seconds": 9},
                               "media": {"caller_audio": "noise"}, "payments": {"share": 0.5},
                               "target": {"nodes": [2], "workers": 1}})
    started = await asyncio.to_thread(StartedTarget, "toneguard", 40, tmp_path, nodes=2,
                                      workers=1)
    try:
        target = started.target
        assert len(target.nodes) == 2 and len({n.ng for n in target.nodes}) == 2
        # Both nodes announced themselves in the one redis-server the tool started.
        redis_port = int(next(line for line in (tmp_path / "toneguard-0.toml").read_text()
                              .splitlines() if line.startswith("url = \"redis://"))
                          .rsplit(":", 1)[1].split("/")[0])
        store = redis.Redis(port=redis_port, socket_timeout=5)
        try:
            assert set(store.hkeys("toneguard:nodes")) == {b"loadtest-0", b"loadtest-1"}
        finally:
            store.close()
        for n in (0, 1):
            assert "workers = 1" in (tmp_path / f"toneguard-{n}.toml").read_text()
        result = await Runner(scenario, target).run(asyncio.Event())
        created = [_ng(node.ng, {"command": "statistics"})["statistics"]["totalstatistics"]
                   ["totalsessions"] for node in target.nodes]
    finally:
        await asyncio.to_thread(started.stop)
    assert created == [2, 2]  # calls 0 and 2 on the first node, 1 and 3 on the second
    summary = summarise(result)
    assert summary["target"]["nodes"] == 2 and summary["target"]["workers"] == 1
    assert summary["calls"]["set_up"] == summary["calls"]["media_completed"] == 4
    # Payments on calls 1 and 3 (share 0.5): both on the second node.
    assert summary["payments"]["completed"] == summary["payments"]["attempted"] == 2
    for direction in summary["packets"].values():
        assert direction["sent"] > 0 and direction["received"] > 0.9 * direction["sent"]
    assert summary["leak"]["calls_with_leak"] == 0 and summary["leak"]["calls_heard"] == 4
