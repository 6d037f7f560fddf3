"""Media relay side by side with rtpengine: `python -m loadtest.bench_relay [--calls N ...]`.

Each relay runs as its own process on loopback; this process sets calls up over ng (as Kamailio
would) and plays both parties of every call: 20 ms PCMU packets each way, paced on the event
loop. The relay's CPU time is read from /proc over the traffic window, so the figure is what
the relay spent, not the load generator. rtpengine runs in userspace (no kernel module here):

* rtpengine relay: `rtpengine --config-file=none -t -1 -i 127.0.0.1 -n ...` (its defaults);
* rtpengine masking: the same with `block DTMF`, `DTMF-security=tone`, `delay-buffer=40` on the
  caller — the settings under which it replaces in-band tones at all (DESIGN.md);
* ToneGuard relay: `masking.caller = "none"` (plain relay); ToneGuard masking: the default
  always-on in-band masking of the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.sdp_builder import audio_sdp, media_endpoint
from loadtest.simulate import NgClient

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received += 1


@dataclass
class Outcome:
    name: str
    calls: int
    cpu: float
    seconds: float
    sent: int
    received: int

    @property
    def core_percent(self) -> float:
        return 100 * self.cpu / self.seconds


async def _start(name: str, ng_port: int, ports: tuple[int, int], tmp: Path
                 ) -> asyncio.subprocess.Process:
    if name.startswith("rtpengine"):
        cmd = ["rtpengine", "--config-file=none", "-t", "-1", "-i", "127.0.0.1", "-n",
               f"127.0.0.1:{ng_port}", "-f", "-E", "-m", str(ports[0]), "-M", str(ports[1]),
               "-L", "3"]
    else:
        config = tmp / f"{name}.toml"
        caller = "none" if name == "ToneGuard relay" else "offerer"
        config.write_text(f'[masking]\ncaller = "{caller}"\n[logging]\nlevel = "warning"\n'
                          f'[api]\nlisten = "127.0.0.1:0"\n')
        cmd = [sys.executable, "-m", "proxy.cli", "serve", "-c", str(config), "--ng-listen",
               f"127.0.0.1:{ng_port}", "--port-range", f"{ports[0]}-{ports[1]}"]
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


async def run_relay(name: str, calls: int, seconds: float, tmp: Path) -> Outcome:
    loop = asyncio.get_running_loop()
    ng_port = _free_udp()
    base = 42000 + (ng_port % 4000) // 2 * 2
    proc = await _start(name, ng_port, (base, base + 4 * calls + 100), tmp)
    transport, ngc = await loop.create_datagram_endpoint(NgClient,
                                                         remote_addr=("127.0.0.1", ng_port))
    endpoints = []
    try:
        for _ in range(50):  # wait for the relay's ng socket
            try:
                await ngc.request(transport, {"command": "ping"})
                break
            except (TimeoutError, RuntimeError):
                await asyncio.sleep(0.2)
        for i in range(calls):
            legs = []
            for _ in range(2):
                t, proto = await loop.create_datagram_endpoint(_Counter,
                                                               local_addr=("127.0.0.1", 0))
                legs.append((t, proto, t.get_extra_info("sockname")[1]))
            call_id = f"bench-{i}"
            offer = await ngc.request(transport, {
                "command": "offer", "call-id": call_id, "from-tag": "a",
                "sdp": audio_sdp("127.0.0.1", legs[0][2], payload_types=(0, 101))})
            answer = await ngc.request(transport, {
                "command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b",
                "sdp": audio_sdp("127.0.0.1", legs[1][2], payload_types=(0, 101))})
            if name == "rtpengine masking":
                await ngc.request(transport, {"command": "block DTMF", "call-id": call_id,
                                              "from-tag": "a", "DTMF-security": "tone",
                                              "delay-buffer": 40})
            endpoints.append((legs[0], media_endpoint(answer["sdp"])))
            endpoints.append((legs[1], media_endpoint(offer["sdp"])))
        payload = bytes([0xFF]) * 160
        ticks = int(seconds / 0.02)
        cpu_before = _cpu_seconds(proc.pid)
        start = loop.time()
        for tick in range(ticks):
            header = struct.pack("!BBHII", 0x80, 0, tick & 0xFFFF, tick * 160, 0)
            for (t, _, _), dest in endpoints:
                t.sendto(header + payload, dest)
            await asyncio.sleep(max(0.0, start + (tick + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.3)
        cpu = _cpu_seconds(proc.pid) - cpu_before
        elapsed = loop.time() - start
        received = sum(p.received for (_, p, _), _ in endpoints)
        return Outcome(name, calls, cpu, elapsed, ticks * len(endpoints), received)
    finally:
        transport.close()
        for (t, _, _), _ in endpoints:
            t.close()
        proc.terminate()
        await proc.wait()


async def main_async(calls_list: list[int], seconds: float, relays: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = [await run_relay(name, calls, seconds, Path(tmp))
                    for calls in calls_list for name in relays]
    print(f"Media relay on loopback, PCMU 20 ms both ways, {seconds:g} s of traffic per run; "
          "relay CPU from /proc (one core = 100 %)")
    print(f"{'relay':22} {'calls':>6} {'CPU %':>7} {'CPU/call %':>11} {'delivered':>10} "
          f"{'vs rtpengine relay':>19}")
    baseline = {o.calls: o.cpu for o in outcomes if o.name == "rtpengine relay"}
    for o in outcomes:
        ratio = f"{o.cpu / baseline[o.calls]:.2f}×" if baseline.get(o.calls) else ""
        print(f"{o.name:22} {o.calls:6d} {o.core_percent:6.1f}% "
              f"{o.core_percent / o.calls:10.3f}% {100 * o.received / o.sent:9.1f}% "
              f"{ratio:>19}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="*", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    relays = ["ToneGuard relay", "ToneGuard masking"]
    if shutil.which("rtpengine"):
        relays = ["rtpengine relay", "rtpengine masking", *relays]
    else:
        print("rtpengine not installed (apt-get install rtpengine-daemon): ToneGuard only")
    asyncio.run(main_async(args.calls, args.seconds, relays))


if __name__ == "__main__":
    main()
