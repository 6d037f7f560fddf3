"""Restart without dropped calls, measured: `python -m loadtest.bench_restart [--calls N]`.

A real redis-server and a `toneguard serve` process (its own port range) on loopback; N calls
set up over ng as Kamailio would; one socket plays every caller (a 20 ms PCMU packet per call
every 20 ms, one SSRC per call) and one socket is every agent. Then ``kill -9`` the node and
start it again with the same config, and report per call the media gap (its longest silence at
the agent around the kill, by the kernel's receive timestamps), the time from the new process's
spawn to the packet that ended it and to ``/readyz``, the node's own restore time and its
start-up milestones (its log). Redis commands per call (setup and delete, from redis ``INFO``)
and the CPU of writing one call record are printed too. ``--workers N`` sets the node's
``media.workers``. Figures only: nothing is asserted (this machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from proxy.control.ng_client import NgClient
from proxy.demo.sdp_builder import audio_sdp, media_endpoint

ROOT = Path(__file__).resolve().parents[1]
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # as in loadtest/mmsg.py


def _free(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agents:
    """Every agent: one socket, the kernel's arrival time (``SO_TIMESTAMPNS``, wall clock) of
    every packet per SSRC (one SSRC per call).

    Why kernel timestamps: this process also sends every caller's packets and polls the node;
    stamped when the event loop gets round to them, packets the old node relayed just before the
    kill would count as relayed after it (a gap far shorter than the real one)."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            stamp = next((struct.unpack("qq", d[:16]) for level, kind, d in ancillary
                          if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
            if stamp is None or len(data) < 12 or data[1] & 0x7F != 0:
                continue
            ssrc = struct.unpack_from("!I", data, 8)[0]
            self.arrivals.setdefault(ssrc, []).append(stamp[0] + stamp[1] / 1e9)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def _callers(sock: asyncio.DatagramTransport, dests: list[tuple[str, int]],
                   stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    seq, start = 0, loop.time()
    payload = b"\xff" * 160
    while not stop.is_set():
        for i, dest in enumerate(dests):
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1000 + i)
            sock.sendto(header + payload, dest)
        seq += 1
        await asyncio.sleep(max(0.0, start + seq * 0.02 - loop.time()))


def _spawn(config: Path, log: Path, prespawn: bool = True) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not prespawn:
        env["TONEGUARD_PRESPAWN"] = "0"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "proxy", "serve", "-c", str(config)],
                                cwd=config.parent, env=env,
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)


async def _ready(api: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(timeout):
        while True:
            if proc.poll() is not None:
                raise RuntimeError("toneguard serve exited")
            try:
                if (await http.get(f"{api}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


def _redis_commands(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "stats"], capture_output=True,
                         text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("total_commands_processed:"))
    return int(line.split(":")[1])


async def _record_cpu_us() -> tuple[float, int]:
    """CPU µs to encode (seal keys, serialise) one SDES call's record, and its size."""
    from proxy.control import sdes
    from proxy.control.calls import CallRegistry
    from proxy.media.memory import MemoryMediaEngine
    from proxy.service.logging import configure_logging
    from proxy.store.records import CallRecord, encode
    from proxy.store.sealing import Sealer

    configure_logging("console", "error")
    registry = CallRegistry(MemoryMediaEngine(), address="127.0.0.1")
    await registry.handle({"command": "offer", "call-id": "c", "from-tag": "f",
                           "sdp": audio_sdp("127.0.0.1", 4000, proto="RTP/SAVP",
                                            crypto=[sdes.generate(
                                                "AES_CM_128_HMAC_SHA1_80")])})
    await registry.handle({"command": "answer", "call-id": "c", "from-tag": "f",
                           "to-tag": "t", "sdp": audio_sdp("127.0.0.1", 4002)})
    record, sealer = CallRecord(registry.calls["c"], "n", "alice"), Sealer(os.urandom(32))
    n = 2000
    t = time.process_time()
    for _ in range(n):
        data = encode(record, sealer)
    return (time.process_time() - t) / n * 1e6, len(data)


async def run(calls: int, workdir: Path, workers: int = 1, prespawn: bool = True) -> None:
    redis_port, ng_port, api_port = _free(socket.SOCK_STREAM), _free(), _free(socket.SOCK_STREAM)
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    key = workdir / "store.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    low = 50000 + (_free() % 50) * 100 // 2 * 2
    config = workdir / "node.toml"
    config.write_text(f"""[ng]\nlisten = "127.0.0.1:{ng_port}"\n
[media]\nport_min = {low}\nport_max = {low + 4 * calls + 100 * workers}\nworkers = {workers}\n
[api]\nlisten = "127.0.0.1:{api_port}"\n[logging]\nformat = "json"\n
[store]\nurl = "redis://127.0.0.1:{redis_port}/0"\nkey_file = "{key}"\nnode_id = "bench"\n""")
    log = workdir / "node.log"
    api = f"http://127.0.0.1:{api_port}"
    loop = asyncio.get_running_loop()
    time.sleep(0.3)
    proc = _spawn(config, log, prespawn)
    agents = Agents()
    agent_port = agents.port
    callers_t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    caller_port = callers_t.get_extra_info("sockname")[1]
    ng = await NgClient.connect(("127.0.0.1", ng_port))
    stop = asyncio.Event()
    try:
        await _ready(api, proc)
        before = _redis_commands(redis_port)
        dests = []
        for i in range(calls):
            await ng.request({"command": "offer", "call-id": f"bench-{i}",
                              "from-tag": "caller", "label": "customer",
                              "sdp": audio_sdp("127.0.0.1", caller_port)})
            answer = await ng.request({"command": "answer", "call-id": f"bench-{i}",
                                       "from-tag": "caller", "to-tag": "agent",
                                       "label": "agent",
                                       "sdp": audio_sdp("127.0.0.1", agent_port)})
            dests.append(media_endpoint(answer["sdp"]))
        await asyncio.sleep(1.0)  # the writer's batches
        setup_ops = _redis_commands(redis_port) - before - 1  # less our own INFO
        sender = asyncio.create_task(_callers(callers_t, dests, stop))
        await asyncio.sleep(3.0)
        flowing = sum(1 for s in range(calls) if agents.arrivals.get(0x1000 + s))

        killed = time.time()  # wall clock, as the kernel's receive timestamps
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        spawned = time.time()
        proc = _spawn(config, log, prespawn)
        await _ready(api, proc)
        ready = time.time()
        # Media from the new node: its API comes up after the restored calls relay.
        async with asyncio.timeout(60):
            while sum(1 for s in range(calls)
                      if any(t > ready for t in agents.arrivals.get(0x1000 + s, []))) < calls:
                await asyncio.sleep(0.05)
        # The gap is each call's longest silence around the kill, not "first packet after the
        # kill": media workers outlive a killed parent for a moment (until they read EOF on
        # its pipe) and relay a few packets more.
        gaps, to_media = [], []
        for s in range(calls):
            times = sorted(t for t in agents.arrivals[0x1000 + s] if t > killed - 1.0)
            gap, resumed = max((b - a, b) for a, b in itertools.pairwise(times))
            gaps.append(gap)
            to_media.append(resumed - spawned)
        stop.set()
        await sender
        before = _redis_commands(redis_port)
        for i in range(calls):
            await ng.request({"command": "delete", "call-id": f"bench-{i}"})
        await asyncio.sleep(1.0)
        delete_ops = _redis_commands(redis_port) - before - 1
        lines = [json.loads(line) for line in log.read_text().splitlines()
                 if line.startswith("{")]
        restored = [x for x in lines if x.get("event", "").startswith("calls rest")]
        # From the log's own timestamps (any version of the node logs both): the media
        # engine up → every call restored, i.e. the adoption alone.
        stamps = {x.get("event"): x.get("timestamp") for x in lines}
        adopt_s = _seconds(stamps.get("calls restored from the store")) - _seconds(
            stamps.get("media workers started")) if workers > 1 else float("nan")
        timings = [x["seconds_since_process_start"] for x in lines
                   if x.get("event") == "start-up timings"]
    finally:
        stop.set()
        agents.close()
        callers_t.close()
        ng.close()
        proc.send_signal(signal.SIGINT)  # stop now: SIGTERM would drain the live calls
        proc.wait()
        redis.terminate()
        redis.wait()
    cpu_us, size = await _record_cpu_us()
    p90 = statistics.quantiles(gaps, n=10)[-1] if len(gaps) > 1 else gaps[0]
    print(f"calls: {calls} on {workers} media worker(s) (media flowing before the kill: "
          f"{flowing})")
    print(f"media gap across kill -9 + restart: median {statistics.median(gaps):.2f} s, "
          f"p90 {p90:.2f} s, max {max(gaps):.2f} s")
    print(f"new process spawn → first relayed packet: median {statistics.median(to_media):.2f} s"
          f", max {max(to_media):.2f} s; spawn → /readyz {ready - spawned:.2f} s")
    last = restored[-1]
    if workers > 1:
        print(f"media workers started → calls restored (log timestamps): "
              f"{adopt_s * 1000:.0f} ms")
    print(f"node's own restore of {calls} calls: {last.get('ms')} ms (read and decode "
          f"{last.get('load_ms')}, waiting for the media engine's start "
          f"{last.get('media_wait_ms')}, bind + configure + link {last.get('adopt_ms')})")
    if timings:  # the restarted node's own milestones (its log), seconds since it started
        print("restarted node, seconds since its process started: "
              + ", ".join(f"{k} {v:.2f}" for k, v in timings[-1].items()))
    print(f"redis commands per call: setup (offer+answer) {setup_ops / calls:.1f}, "
          f"delete {delete_ops / calls:.1f}")
    print(f"record: {size} bytes, {cpu_us:.0f} µs CPU to build and seal (per write)")


def _seconds(stamp: str | None) -> float:
    from datetime import datetime
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_restart")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="the node's media.workers")
    parser.add_argument("--no-prespawn", action="store_true",
                        help="the node spawns its workers at the engine's start, not first "
                             "thing (TONEGUARD_PRESPAWN=0)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.calls, Path(tmp), args.workers, not args.no_prespawn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
