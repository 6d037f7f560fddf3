"""Media relay side by side with rtpengine: `python -m loadtest.bench_relay [--calls N ...]`.

Each relay runs as its own process on loopback, pinned to core 1; this process, pinned to core
0, sets calls up over ng (as Kamailio would) and then plays both parties of every call with
:mod:`loadtest.traffic`: 20 ms PCMU packets each way, each stream at its own phase, batched
``sendmmsg``, kernel receive timestamps. The relay's CPU time is read from /proc over the
traffic window, so the figure is what the relay spent, not the load generator. rtpengine runs
in userspace (no kernel module here):

* rtpengine relay: `rtpengine --config-file=none -t -1 -i 127.0.0.1 -n ...` (its defaults);
* rtpengine masking: the same with `block DTMF`, `DTMF-security=tone`, `delay-buffer=40` on the
  caller — the settings under which it replaces in-band tones at all (DESIGN.md);
* ToneGuard relay: `masking.caller = "none"` (plain relay); ToneGuard masking: the default
  always-on in-band masking of the caller;
* "×2" runs may use both cores (the generator's too): ToneGuard with two media worker
  processes, rtpengine with its default two worker threads;
* SRTP runs: the caller's leg plain RTP, the agent's leg SDES-SRTP (AES_CM_128_HMAC_SHA1_80,
  `transport-protocol=RTP/SAVP` on the offer), so both relays must encrypt one way and decrypt
  the other (with SRTP on both legs rtpengine passes the crypto through untouched, which
  would not compare like with like). The first packet of every encrypted stream is decrypted
  with the key the relay offered and compared with what was sent. "SRTP-GCM": the same with
  AEAD_AES_128_GCM chosen from the relay's offer;
* DTLS runs: the agent's leg is a WebRTC one (`transport-protocol=UDP/TLS/RTP/SAVPF`,
  `ICE=force`): after the ng answer every agent leg is checked (STUN, ICE-lite) and keyed by a
  DTLS handshake from the generator's agent socket (all calls' handshakes in flight at once;
  the relay's CPU over that phase is the handshake cost per call), then the traffic is the
  same as above. ToneGuard negotiates SRTP_AEAD_AES_128_GCM, so compare with "SRTP-GCM".
  rtpengine runs the same bridge with `ICE=remove` toward the agent (its ICE is a full agent
  that would also need this generator to answer its checks): the generator starts DTLS (as
  client, `a=setup:active`) without a check; the suite is whatever rtpengine selects.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aioice import stun

from loadtest.traffic import Stream, Traffic, TrafficResult
from proxy.control import sdes
from proxy.control.ng_client import NgClient, NgClientError
from proxy.control.sdp import parse as parse_sdp
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.dtls import DtlsSession, DtlsState, NodeCertificate
from proxy.media.types import DtlsParams

CLK_TCK = os.sysconf("SC_CLK_TCK")
GENERATOR_CPU, RELAY_CPU = {0}, {1}


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


@dataclass
class Outcome:
    name: str
    calls: int
    cpu: float  # relay CPU seconds over the traffic window
    seconds: float  # the traffic window
    traffic: TrafficResult
    generator_cpu: float
    handshake_cpu: float = float("nan")  # relay CPU seconds per call for ICE + DTLS (DTLS runs)
    handshake_seconds: float = float("nan")  # wall time until every call's leg was keyed

    @property
    def core_percent(self) -> float:
        return 100 * self.cpu / self.seconds

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.cpu / max(self.traffic.received, 1)


def _start(name: str, ng_port: int, ports: tuple[int, int], tmp: Path) -> subprocess.Popen:
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
        cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(config), "--ng-listen",
               f"127.0.0.1:{ng_port}", "--port-range", f"{ports[0]}-{ports[1]}"]
    cpus = GENERATOR_CPU | RELAY_CPU if "×2" in name else RELAY_CPU
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))


async def _set_up_calls(name: str, calls: int, ng_port: int, traffic: Traffic) -> list[Stream]:
    """Offer/answer every call over ng; each call's legs are the generator's two sockets."""
    ngc = await NgClient.connect(("127.0.0.1", ng_port))
    try:
        for _ in range(50):  # wait for the relay's ng socket
            try:
                await ngc.request({"command": "ping"})
                break
            except NgClientError:  # not answering yet (NgTimeout), or refusing
                await asyncio.sleep(0.2)
        srtp = "SRTP" in name
        if "DTLS" in name:
            return await _set_up_webrtc_calls(name, calls, ngc, traffic)
        streams: list[Stream] = []
        for i in range(calls):
            call_id = f"bench-{i}"
            offer_body = {"command": "offer", "call-id": call_id, "from-tag": "a",
                          "sdp": audio_sdp("127.0.0.1", traffic.ports[0],
                                           payload_types=(0, 101))}
            if srtp:
                offer_body["transport-protocol"] = "RTP/SAVP"
            offer = await ngc.request(offer_body)
            ours: sdes.CryptoAttribute | None = None
            theirs: sdes.CryptoAttribute | None = None
            if srtp:  # answer with the suite the relay offered, under its tag
                offered = sdes.offered([line.split(":", 1)[1] for line in
                                        offer["sdp"].splitlines() if line.startswith("a=crypto:")])
                suite = "AEAD_AES_128_GCM" if "GCM" in name else "AES_CM_128_HMAC_SHA1_80"
                theirs = next(c for c in offered if c.suite == suite)
                ours = sdes.generate(theirs.suite, theirs.tag)
            answer = await ngc.request({
                "command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b",
                "sdp": audio_sdp("127.0.0.1", traffic.ports[1], payload_types=(0, 101),
                                 proto="RTP/SAVP" if srtp else "RTP/AVP",
                                 crypto=[ours] if ours else None)})
            if name == "rtpengine masking":
                await ngc.request({"command": "block DTMF", "call-id": call_id,
                                   "from-tag": "a", "DTMF-security": "tone",
                                   "delay-buffer": 40})
            # Caller → relay (answer SDP's address), decrypted by us on the agent's side with
            # the relay's key; agent → relay (offer SDP's address), protected with ours.
            streams.append(Stream(0, media_endpoint(answer["sdp"]),
                                  recv_key=theirs.params if theirs else None))
            streams.append(Stream(1, media_endpoint(offer["sdp"]),
                                  send_key=ours.params if ours else None))
        return streams
    finally:
        ngc.close()


@dataclass
class WebRtcLeg:
    """What the generator needs to key one call's agent leg as a browser would."""

    relay: tuple[str, int]  # ToneGuard's port for the agent leg (from its offer)
    ufrag: str
    pwd: str
    carrier_dest: tuple[str, int]  # where the caller side sends (from the answer)
    fingerprint: str  # the relay's sha-256 certificate fingerprint (from its offer)


_WEBRTC_LEGS: dict[int, list[WebRtcLeg]] = {}  # by ng port, for run_relay's handshake phase


async def _set_up_webrtc_calls(name: str, calls: int, ngc: NgClient,
                               traffic: Traffic) -> list[Stream]:
    legs: list[WebRtcLeg] = []
    port = traffic.ports[1]
    ice = "remove" if name.startswith("rtpengine") else "force"
    for i in range(calls):
        call_id = f"bench-{i}"
        offer = await ngc.request({
            "command": "offer", "call-id": call_id, "from-tag": "a",
            "sdp": audio_sdp("127.0.0.1", traffic.ports[0], payload_types=(0, 101)),
            "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": ice, "rtcp-mux": ["offer"]})
        m = parse_sdp(offer["sdp"]).media[0]
        answer = await ngc.request({
            "command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b",
            "sdp": _browser_answer(port, ice=ice != "remove")})
        fingerprint = next(f.split()[1] for f in m.attributes("fingerprint")
                           if f.lower().startswith("sha-256 "))
        legs.append(WebRtcLeg(media_endpoint(offer["sdp"]),
                              (m.attributes("ice-ufrag") or [""])[0],
                              (m.attributes("ice-pwd") or [""])[0],
                              media_endpoint(answer["sdp"]), fingerprint))
    _WEBRTC_LEGS[traffic.ports[1]] = legs
    return []  # streams come from the handshakes (run_relay)


_BROWSER_UFRAG, _BROWSER_PWD = "bnch", "benchbenchbenchbenchbench"


_BROWSER_CERTIFICATES: list[NodeCertificate] = []


def _browser_certificate() -> NodeCertificate:
    """The generator's own DTLS certificate (one per process, made when first needed)."""
    if not _BROWSER_CERTIFICATES:
        _BROWSER_CERTIFICATES.append(NodeCertificate.generate())
    return _BROWSER_CERTIFICATES[0]


def _browser_answer(port: int, *, ice: bool = True) -> str:
    ice_lines = [f"a=ice-ufrag:{_BROWSER_UFRAG}", f"a=ice-pwd:{_BROWSER_PWD}"] if ice else []
    return "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
        "a=group:BUNDLE 0", f"m=audio {port} UDP/TLS/RTP/SAVPF 0 101", "a=mid:0",
        "a=rtcp-mux", *ice_lines,
        f"a=fingerprint:sha-256 {_browser_certificate().fingerprint()}", "a=setup:active",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=sendrecv"]) + "\r\n"


def _handshake_all(legs: list[WebRtcLeg], sock: socket.socket,
                   timeout: float = 60.0) -> list[Stream]:
    """ICE check then DTLS (client) for every leg at once from ``sock``; the streams keyed."""
    cert = _browser_certificate()
    sessions = {leg.relay: DtlsSession(DtlsParams(
        "client", (("sha-256", leg.fingerprint),), cert.certificate, cert.private_key),
        time.monotonic) for leg in legs}
    answered: set[tuple[str, int]] = set()
    for leg in legs:
        if not leg.ufrag:  # no ICE on this leg: DTLS at once
            answered.add(leg.relay)
            for record in sessions[leg.relay].start():
                sock.sendto(record, leg.relay)
            continue
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"{leg.ufrag}:{_BROWSER_UFRAG}"
        check.attributes["ICE-CONTROLLING"] = 1
        check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(leg.pwd.encode())
        sock.sendto(bytes(check), leg.relay)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
            s.state is DtlsState.CONNECTED for s in sessions.values()):
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            for addr, session in sessions.items():  # retransmissions (lost flights)
                for record in session.poll():
                    sock.sendto(record, addr)
            continue
        data, addr = sock.recvfrom(4096)
        peer = sessions.get(addr)
        if peer is None or not data:
            continue
        if data[0] <= 3 and addr not in answered:  # our check answered: start DTLS
            answered.add(addr)
            for record in peer.start():
                sock.sendto(record, addr)
        elif 20 <= data[0] <= 63:
            for record in peer.receive(data):
                sock.sendto(record, addr)
    # Late copies (a flight the relay retransmitted while ours was on its way, a second check
    # answer) would count as foreign arrivals in the traffic window: drain them first.
    while select.select([sock], [], [], 0.2)[0]:
        sock.recvfrom(4096)
    streams: list[Stream] = []
    for leg in legs:
        session = sessions[leg.relay]
        if session.state is not DtlsState.CONNECTED:
            raise RuntimeError(f"DTLS to {leg.relay} did not finish: {session.reason}")
        streams.append(Stream(0, leg.carrier_dest, recv_key=session.recv_key))
        streams.append(Stream(1, leg.relay, send_key=session.send_key))
    return streams


def run_relay(name: str, calls: int, seconds: float, tmp: Path) -> Outcome:
    ng_port = _free_udp()
    base = 42000 + (ng_port % 4000) // 2 * 2
    proc = _start(name, ng_port, (base, base + 8 * calls + 100), tmp)
    traffic = Traffic()
    try:
        streams = asyncio.run(_set_up_calls(name, calls, ng_port, traffic))
        handshake_cpu = handshake_seconds = float("nan")
        if "DTLS" in name:
            legs = _WEBRTC_LEGS.pop(traffic.ports[1])
            cpu_before, started = _cpu_seconds(proc.pid), time.monotonic()
            streams = _handshake_all(legs, traffic.sockets[1])
            handshake_seconds = time.monotonic() - started
            handshake_cpu = (_cpu_seconds(proc.pid) - cpu_before) / calls
        traffic.prepare(streams, seconds)
        cpu_before, gen_before = _cpu_seconds(proc.pid), time.process_time()
        started = time.monotonic()
        result = traffic.run()
        elapsed = time.monotonic() - started
        return Outcome(name, calls, _cpu_seconds(proc.pid) - cpu_before, elapsed, result,
                       time.process_time() - gen_before, handshake_cpu, handshake_seconds)
    finally:
        traffic.close()
        proc.send_signal(signal.SIGINT)  # stop now: SIGTERM would drain the benchmark's calls
        proc.wait(timeout=20)


def _kind(name: str) -> tuple[str, bool]:
    kind = ("SRTP" if "SRTP" in name or "DTLS" in name else "masking" if "masking" in name
            else "relay")
    return kind, "×2" in name


def _baseline(outcome: Outcome, outcomes: list[Outcome]) -> Outcome | None:
    """The rtpengine run of the same kind, calls and cores (else the same kind and calls)."""
    rtpengine = [b for b in outcomes if b.name.startswith("rtpengine") and b.calls ==
                 outcome.calls and _kind(b.name)[0] == _kind(outcome.name)[0]]
    same_cores = [b for b in rtpengine if _kind(b.name) == _kind(outcome.name)]
    return (same_cores or rtpengine)[0] if same_cores or rtpengine else None


def _ms(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.2f}"


def _median_runs(outcomes: list[Outcome]) -> list[tuple[Outcome, list[Outcome]]]:
    """Per (relay, calls): the run with the median CPU per packet, and all its runs."""
    groups: dict[tuple[str, int], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.name, o.calls), []).append(o)
    return [(sorted(runs, key=lambda o: o.us_per_packet)[len(runs) // 2], runs)
            for runs in groups.values()]


def report(outcomes: list[Outcome], seconds: float) -> None:
    medians = _median_runs(outcomes)
    repeats = max(len(runs) for _, runs in medians)
    print(f"Media relay on loopback, PCMU 20 ms both ways, {seconds:g} s of traffic per run, "
          f"{repeats} run(s) each, interleaved (the median run by CPU per packet is shown); "
          "relay on core 1 (×2: cores 0 and 1), generator on core 0; relay CPU from /proc "
          "(one core = 100 %)")
    print(f"{'relay':26} {'calls':>6} {'CPU %':>7} {'µs/packet':>10} {'range':>12} "
          f"{'delivered':>10} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'warm-up':>8} "
          f"{'vs rtpengine':>13} "
          f"{'gen CPU':>8} {'gen lag p99':>12}")
    chosen = [o for o, _ in medians]
    for o, runs in medians:
        base = _baseline(o, chosen)
        ratio = f"{o.us_per_packet / base.us_per_packet:.2f}×" if base and base.cpu else ""
        spread = sorted(r.us_per_packet for r in runs)
        t = o.traffic
        lag = 1000 * float(np.percentile(t.lateness, 99))
        delivered = min(r.traffic.received / r.traffic.sent for r in runs)  # the worst run
        print(f"{o.name:26} {o.calls:6d} {o.core_percent:6.1f}% {o.us_per_packet:10.2f} "
              f"{spread[0]:5.2f}–{spread[-1]:<6.2f} {100 * delivered:9.3f}% "
              f"{_ms(t.percentile_ms(50)):>7} {_ms(t.percentile_ms(99)):>7} "
              f"{_ms(t.percentile_ms(100)):>7} {1000 * t.warmup_max:8.2f} {ratio:>13} "
              f"{100 * o.generator_cpu / o.seconds:7.1f}% {lag:9.2f} ms")
        problems = []
        for r in runs:
            rt = r.traffic
            if rt.foreign:
                problems.append(f"{rt.foreign} arrivals not matching a packet sent")
            if rt.generator_drops:
                problems.append(f"{rt.generator_drops} dropped by the generator's own sockets")
            if rt.unverified:
                problems.append(f"{len(rt.unverified)} SRTP streams did not decrypt to what "
                                "was sent")
            if ("SRTP" in r.name or "DTLS" in r.name) and rt.verified < r.calls:
                problems.append(f"only {rt.verified} of {r.calls} SRTP streams verified")
        if problems:
            print(f"{'':26} !! {'; '.join(sorted(set(problems)))}")
    _print_capacity(medians)
    dtls = [(o, runs) for o, runs in medians if "DTLS" in o.name]
    if dtls:
        print("DTLS-SRTP agent legs set up at once (ICE check + handshake, all calls in flight):")
        for o, runs in dtls:
            cpu = sorted(1000 * r.handshake_cpu for r in runs)
            wall = sorted(r.handshake_seconds for r in runs)
            print(f"  {o.name:26} {o.calls:6d} calls: relay CPU {cpu[len(cpu) // 2]:.2f} ms per "
                  f"call (range {cpu[0]:.2f}–{cpu[-1]:.2f}), all keyed in "
                  f"{wall[len(wall) // 2]:.2f} s")
    print("µs/packet: relay CPU per packet delivered (range: over the runs); delivered: the "
          "worst run; latency: from the sendmmsg that carried a packet to the kernel's receive "
          "timestamp, after the first second (warm-up: the first second's maximum, when every "
          "call's media starts at once; ToneGuard masking includes its 26 ms look-ahead); "
          "ratios: CPU per packet against the rtpengine run of the same kind; gen lag: how late "
          "the generator's send slots fired")


def _print_capacity(medians: list[tuple[Outcome, list[Outcome]]]) -> None:
    """Per relay, the most calls run with 0 loss in every run, and with p99 ≤ 2 ms too."""
    if len({o.calls for o, _ in medians}) < 2:
        return
    print("Most calls run: with 0 loss in every run / and with p99 ≤ 2 ms as well")
    for name in dict.fromkeys(o.name for o, _ in medians):
        mine = [(o, runs) for o, runs in medians if o.name == name]
        lossless = [o.calls for o, runs in mine
                    if all(r.traffic.received == r.traffic.sent for r in runs)]
        fast = [o.calls for o, runs in mine if o.calls in lossless and
                all(r.traffic.percentile_ms(99) <= 2.0 for r in runs)]
        print(f"  {name:26} {max(lossless, default=0):6d} / {max(fast, default=0):6d}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="*", default=[300, 1000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--relays", nargs="*", help="names to run (default: all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each relay, interleaved (the median is reported)")
    args = parser.parse_args(argv)
    relays = ["ToneGuard relay", "ToneGuard relay ×2", "ToneGuard masking",
              "ToneGuard masking ×2", "ToneGuard SRTP relay", "ToneGuard SRTP relay ×2",
              "ToneGuard SRTP-GCM relay", "ToneGuard DTLS relay", "ToneGuard DTLS relay ×2"]
    if shutil.which("rtpengine"):
        relays = ["rtpengine relay", "rtpengine relay ×2", "rtpengine masking",
                  "rtpengine SRTP relay", "rtpengine SRTP relay ×2", "rtpengine SRTP-GCM relay",
                  "rtpengine DTLS relay", *relays]
    else:
        print("rtpengine not installed (apt-get install rtpengine-daemon): ToneGuard only")
    if args.relays:
        relays = [r for r in relays if r in args.relays]
    if len(os.sched_getaffinity(0)) < 2:
        print("bench_relay: needs two cores (relay and generator each pinned to one)",
              file=sys.stderr)
        raise SystemExit(2)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, GENERATOR_CPU)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcomes = [run_relay(name, calls, args.seconds, Path(tmp))
                        for calls in args.calls for _ in range(args.repeat) for name in relays]
    finally:
        os.sched_setaffinity(0, cpus)
    report(outcomes, args.seconds)


if __name__ == "__main__":
    main()
