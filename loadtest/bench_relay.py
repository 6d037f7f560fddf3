"""Media relay side by side with rtpengine: `python -m loadtest.bench_relay [--calls N ...]`.

Each relay runs as its own process on loopback; this process sets calls up over ng (as Kamailio
would) and plays both parties of every call: 20 ms PCMU packets each way, paced on the event
loop. The relay's CPU time is read from /proc over the traffic window, so the figure is what
the relay spent, not the load generator. rtpengine runs in userspace (no kernel module here):

* rtpengine relay: `rtpengine --config-file=none -t -1 -i 127.0.0.1 -n ...` (its defaults);
* rtpengine masking: the same with `block DTMF`, `DTMF-security=tone`, `delay-buffer=40` on the
  caller — the settings under which it replaces in-band tones at all (DESIGN.md);
* ToneGuard relay: `masking.caller = "none"` (plain relay); ToneGuard masking: the default
  always-on in-band masking of the caller; "×2" runs use two media worker processes;
* SRTP runs: the caller's leg plain RTP, the agent's leg SDES-SRTP (AES_CM_128_HMAC_SHA1_80,
  `transport-protocol=RTP/SAVP` on the offer), so both relays must encrypt one way and decrypt
  the other (with SRTP on both legs rtpengine passes the crypto through untouched, which
  would not compare like with like); packets are protected ahead of time so the generator's
  cost does not change.

Latency: plain payloads carry their scheduled send time; in SRTP runs the agent → caller
direction (decrypted by the relay) is timed.
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

import numpy as np

from loadtest.sdp_builder import audio_sdp, media_endpoint
from loadtest.simulate import NgClient
from proxy import sdes
from proxy.srtp import SrtpSender

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids += _tree(int(child))
    return pids


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (media workers)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


class _Counter(asyncio.DatagramProtocol):
    """Counts what arrives and times what it can read. A payload starts with its send time
    (≥ 0), or, for packets encrypted ahead of time, −(tick + 1): the time it was scheduled
    (``start`` + tick × 20 ms; generator lag included, so an upper bound). Encrypted arrivals
    (``timed`` False) are only counted."""

    start = 0.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.received = 0
        self.latencies: list[float] = []
        self.timed = True
        self._loop = loop

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received += 1
        if self.timed and len(data) >= 20:
            stamp = struct.unpack_from("!d", data, 12)[0]
            sent = stamp if stamp >= 0 else _Counter.start + (-stamp - 1) * 0.02
            self.latencies.append(self._loop.time() - sent)


@dataclass
class Outcome:
    name: str
    calls: int
    cpu: float
    seconds: float
    sent: int
    received: int
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

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
        config = tmp / "toneguard.toml"
        caller = "offerer" if "masking" in name else "none"
        workers = 2 if "×2" in name else 1
        config.write_text(f'[masking]\ncaller = "{caller}"\n[logging]\nlevel = "warning"\n'
                          f'[api]\nlisten = "127.0.0.1:0"\n[media]\nworkers = {workers}\n')
        cmd = [sys.executable, "-m", "proxy.cli", "serve", "-c", str(config), "--ng-listen",
               f"127.0.0.1:{ng_port}", "--port-range", f"{ports[0]}-{ports[1]}"]
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


async def run_relay(name: str, calls: int, seconds: float, tmp: Path) -> Outcome:
    loop = asyncio.get_running_loop()
    ng_port = _free_udp()
    base = 42000 + (ng_port % 4000) // 2 * 2
    proc = await _start(name, ng_port, (base, base + 8 * calls + 100), tmp)
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
        srtp = "SRTP" in name
        ticks = int(seconds / 0.02)
        senders: list[SrtpSender | None] = []
        for i in range(calls):
            legs = []
            keys: list[sdes.CryptoAttribute | None] = [None, None]
            for _ in range(2):
                t, proto = await loop.create_datagram_endpoint(
                    lambda: _Counter(loop), local_addr=("127.0.0.1", 0))
                legs.append((t, proto, t.get_extra_info("sockname")[1]))
            proto_name = "RTP/SAVP" if srtp else "RTP/AVP"
            call_id = f"bench-{i}"
            offer_body = {"command": "offer", "call-id": call_id, "from-tag": "a",
                          "sdp": audio_sdp("127.0.0.1", legs[0][2], payload_types=(0, 101))}
            if srtp:
                offer_body["transport-protocol"] = "RTP/SAVP"
            offer = await ngc.request(transport, offer_body)
            if srtp:  # answer with the suite the relay offered, under its tag
                offered = sdes.offered([line.split(":", 1)[1] for line in
                                        offer["sdp"].splitlines() if line.startswith("a=crypto:")])
                chosen = next(c for c in offered if c.suite == "AES_CM_128_HMAC_SHA1_80")
                keys[1] = sdes.generate(chosen.suite, chosen.tag)
            answer = await ngc.request(transport, {
                "command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b",
                "sdp": audio_sdp("127.0.0.1", legs[1][2], payload_types=(0, 101),
                                 proto=proto_name, crypto=[keys[1]] if srtp else None)})
            if name == "rtpengine masking":
                await ngc.request(transport, {"command": "block DTMF", "call-id": call_id,
                                              "from-tag": "a", "DTMF-security": "tone",
                                              "delay-buffer": 40})
            legs[1][1].timed = not srtp  # the agent's leg receives SRTP: count only
            endpoints.append((legs[0], media_endpoint(answer["sdp"])))
            endpoints.append((legs[1], media_endpoint(offer["sdp"])))
            senders += [SrtpSender(k.params) if k else None for k in keys]
        payload = bytes([0xFF]) * 160
        prepared: list[list[bytes]] = []
        if srtp:  # protect every packet ahead of time: sending then costs what plain RTP does
            for n, sender in enumerate(senders):
                packets = [struct.pack("!BBHIId", 0x80, 0, t & 0xFFFF, t * 160, n, -t - 1.0)
                           + payload[8:] for t in range(ticks)]
                prepared.append([sender.protect(p) for p in packets] if sender else packets)
        cpu_before = _cpu_seconds(proc.pid)
        start = _Counter.start = loop.time()
        for tick in range(ticks):
            plain = struct.pack("!BBHIId", 0x80, 0, tick & 0xFFFF, tick * 160, 0, loop.time())
            plain += payload[8:]
            for n, ((t, _, _), dest) in enumerate(endpoints):
                t.sendto(prepared[n][tick] if srtp else plain, dest)
            await asyncio.sleep(max(0.0, start + (tick + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.3)
        cpu = _cpu_seconds(proc.pid) - cpu_before
        elapsed = loop.time() - start
        received = sum(p.received for (_, p, _), _ in endpoints)
        outcome = Outcome(name, calls, cpu, elapsed, ticks * len(endpoints), received)
        latencies = [x for (_, p, _), _ in endpoints for x in p.latencies]
        if latencies:
            outcome.p50_ms = 1000 * float(np.percentile(latencies, 50))
            outcome.p99_ms = 1000 * float(np.percentile(latencies, 99))
        return outcome
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
    print(f"{'relay':26} {'calls':>6} {'CPU %':>7} {'µs/packet':>10} {'delivered':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'vs rtpengine':>13}")
    for o in outcomes:
        same = "rtpengine SRTP relay" if "SRTP" in o.name else "rtpengine relay"
        base = next((b for b in outcomes if b.name == same and b.calls == o.calls), None)
        ratio = f"{o.cpu / base.cpu:.2f}×" if base and base.cpu else ""
        print(f"{o.name:26} {o.calls:6d} {o.core_percent:6.1f}% "
              f"{1e6 * o.cpu / max(o.received, 1):10.1f} {100 * o.received / o.sent:9.2f}% "
              f"{o.p50_ms:7.2f} {o.p99_ms:7.2f} {ratio:>13}")
    print("µs/packet: relay CPU per packet delivered; p50/p99: send → receive on loopback "
          "(ToneGuard masking includes its 26 ms look-ahead); ratios against the rtpengine run "
          "of the same kind")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="*", default=[100, 300])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    relays = ["ToneGuard relay", "ToneGuard relay ×2", "ToneGuard masking",
              "ToneGuard masking ×2", "ToneGuard SRTP relay"]
    if shutil.which("rtpengine"):
        relays = ["rtpengine relay", "rtpengine masking", "rtpengine SRTP relay", *relays]
    else:
        print("rtpengine not installed (apt-get install rtpengine-daemon): ToneGuard only")
    asyncio.run(main_async(args.calls, args.seconds, relays))


if __name__ == "__main__":
    main()
