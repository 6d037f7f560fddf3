"""The relay under test: started by the tool on loopback, or one already running; and what its
processes cost (CPU, RSS) over time, read from /proc.

* ToneGuard: ``toneguard serve`` as a subprocess with a temporary config (ng, media ports, API
  with an agents file holding a supervisor and an agent key, the gateway stub started beside
  it with its own throw-away PKI), so payments run end to end.
* rtpengine: ``rtpengine --config-file=none ...`` in userspace (no kernel module), given its best
  masking settings per call by the runner (``block DTMF`` with ``DTMF-security=tone`` and
  ``delay-buffer=40``: DESIGN.md, "rtpengine as a baseline"). It has no payment API.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PORT_WINDOW_BASE, PORT_WINDOW_END = 40000, 60000
_PORT_LOCKS = Path(tempfile.gettempdir()) / "toneguard-loadtest-ports"


class TargetError(RuntimeError):
    """The target could not be started or reached; the message says which and why."""


@dataclass(frozen=True)
class NodeAddress:
    """One node of the target: its ng socket and (ToneGuard) its API."""

    ng: tuple[str, int]
    api: str = ""  # "" = no payment API (rtpengine, or a ToneGuard driven without --api)


@dataclass
class Target:
    kind: str  # "toneguard" | "rtpengine"
    nodes: list[NodeAddress]  # calls go round robin over these, as Kamailio's set spreads them
    admin_key: str = ""
    agent_key: str = ""
    agent_id: str = ""
    pids: list[int] = field(default_factory=list)  # roots of the processes to measure
    settings: str = ""  # what the target runs with, for the report
    workers: int | None = None  # media workers per node (rtpengine: threads); None = default

    @property
    def ng(self) -> tuple[str, int]:
        return self.nodes[0].ng

    @property
    def api(self) -> str:
        return self.nodes[0].api

    def node_of(self, call: int) -> NodeAddress:
        return self.nodes[call % len(self.nodes)]


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortWindow:
    """A media port range no other loadtest run on this machine holds (flock per window):
    relays bind with SO_REUSEPORT, so two runs on overlapping ports would split each other's
    calls without any error (see tests/conftest.py, media_ports)."""

    def __init__(self, ports: int) -> None:
        size = max(200, (ports + 199) // 200 * 200)
        _PORT_LOCKS.mkdir(exist_ok=True)
        windows = (PORT_WINDOW_END - PORT_WINDOW_BASE) // size
        first = _free(socket.SOCK_DGRAM) % windows
        for step in range(windows):
            base = PORT_WINDOW_BASE + (first + step) % windows * size
            fd = os.open(_PORT_LOCKS / f"{base}-{size}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd = fd
            self.low, self.high = base, base + size - 2
            return
        raise TargetError(f"no free media port window of {size} ports in "
                          f"{PORT_WINDOW_BASE}-{PORT_WINDOW_END}")

    def close(self) -> None:
        os.close(self._fd)


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in (task / "children").read_text().split():
                    pids += process_tree(int(child))
    return pids


def _run_queue_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU (the second
    field of each thread's /proc schedstat, in ns); 0 where the kernel does not keep it."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError,
                                     ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def usage(roots: list[int]) -> tuple[float, int, float]:
    """CPU seconds (user + system), resident bytes, and run-queue seconds (wanting a CPU and
    not getting one) of ``roots`` and their descendants."""
    cpu, rss, waited = 0.0, 0, 0.0
    for root in roots:
        for pid in process_tree(root):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                statm = Path(f"/proc/{pid}/statm").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            cpu += (int(stat[11]) + int(stat[12])) / CLK_TCK
            rss += int(statm[1]) * PAGE
            waited += _run_queue_seconds(pid)
    return cpu, rss, waited


def host_cpu(stat: str | None = None) -> tuple[float, float]:
    """CPU seconds the whole host (all CPUs, from ``/proc/stat``) has run anything, and has
    lost to steal: time the hypervisor gave this machine's virtual CPUs to someone else.
    Steal is neither a process's CPU time nor its run-queue wait: a relay on a stolen CPU
    falls behind while its own figures look idle. (0, 0) where /proc/stat is not there."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return 0.0, 0.0
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return 0.0, 0.0
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    ticks = [int(f) for f in fields[1:9]] + [0] * max(0, 9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def niceness(roots: list[int]) -> list[int]:
    """The nice value of each root process (a target started by the tool inherits the tool's:
    ``nice -n 10 toneguard loadtest`` runs the relay at 10 too)."""
    values = []
    for root in roots:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            values.append(int(Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1]
                              .split()[16]))
    return values


class Sampler:
    """CPU % (one core = 100), RSS and run-queue wait % of the target every ``interval`` s, in
    a thread. The wait is the time its threads were ready to run but the host gave the CPU to
    something else: high while latency grows means the host, not the relay, was short. Beside
    them, the host's own: its CPUs' busy time and their steal (% of one core, summed over the
    CPUs), which the target's figures cannot show (see :func:`host_cpu`)."""

    def __init__(self, roots: list[int], interval: float = 0.5) -> None:
        self.roots, self.interval = roots, interval
        # (t, cpu %, rss bytes, run-queue wait %, host busy %, host steal %)
        self.samples: list[tuple[float, float, int, float, float, float]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-sampler", daemon=True)

    def start(self) -> Sampler:
        if self.roots:
            self._thread.start()
        return self

    def _run(self) -> None:
        last_t, (last_cpu, _, last_wait) = time.monotonic(), usage(self.roots)
        last_busy, last_steal = host_cpu()
        while not self._stop.wait(self.interval):
            now, (cpu, rss, waited) = time.monotonic(), usage(self.roots)
            busy, steal = host_cpu()
            dt = now - last_t
            self.samples.append((now - self.started, 100 * (cpu - last_cpu) / dt, rss,
                                 100 * (waited - last_wait) / dt, 100 * (busy - last_busy) / dt,
                                 100 * (steal - last_steal) / dt))
            last_t, last_cpu, last_wait = now, cpu, waited
            last_busy, last_steal = busy, steal

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def latest_cpu(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


def _wait(check: Callable[[], bool], what: str, proc: subprocess.Popen | None,
          timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise TargetError(f"{what}: the process exited with {proc.returncode} at start-up")
        with contextlib.suppress(OSError, httpx.HTTPError):
            if check():
                return
        if time.monotonic() > deadline:
            raise TargetError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _ng_ping(ng: tuple[str, int]) -> bool:
    from proxy.control import bencode

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(b"ping1 " + bencode.encode({"command": "ping"}), ng)
        try:
            return b"pong" in s.recv(4096)
        except TimeoutError:
            return False


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def _healthy(api: str) -> bool:
    return httpx.get(f"{api}/healthz", timeout=1).status_code == 200


def _tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True


class StartedTarget:
    """Starts ToneGuard (``nodes`` nodes, sharing a redis-server when more than one, and the
    gateway stub) or rtpengine on loopback; ``stop()`` ends them."""

    def __init__(self, kind: str, media_ports: int, workdir: Path,
                 port_range: tuple[int, int] | None = None, *, nodes: int = 1,
                 workers: int | None = None) -> None:
        self.kind = kind
        self._procs: list[subprocess.Popen] = []
        self._windows: list[PortWindow] = []
        self.workdir = workdir
        try:
            ranges = [port_range] if port_range else []
            for _ in range(len(ranges), nodes if kind == "toneguard" else 1):
                # Each node its own window: nodes on one address must not share media ports.
                self._windows.append(PortWindow(media_ports))
                ranges.append((self._windows[-1].low, self._windows[-1].high))
            self.target = self._toneguard(ranges, workers) if kind == "toneguard" else \
                self._rtpengine(ranges[0], workers)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "wb")  # noqa: SIM115 (lives as long as the process)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self._procs.append(proc)
        return proc

    def _redis(self) -> tuple[str, subprocess.Popen]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise TargetError("more than one node needs redis-server (apt-get install "
                              "redis-server)")
        port = _free(socket.SOCK_STREAM)
        proc = self._spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(self.workdir)], "redis.log")
        _wait(lambda: _redis_ping(port), "redis-server", proc)
        return f"redis://127.0.0.1:{port}/0", proc

    def _toneguard(self, ranges: list[tuple[int, int]], workers: int | None) -> Target:
        from gateway.pki import init_pki
        from proxy.api.auth import AgentDirectory

        pki = init_pki(self.workdir / "gateway")
        gateway_port = _free(socket.SOCK_STREAM)
        gateway = self._spawn([sys.executable, "-m", "proxy", "gateway", "serve", "--data-dir",
                               str(pki.root), "--listen", f"127.0.0.1:{gateway_port}"],
                              "gateway.log")
        agents = AgentDirectory()
        admin_key = agents.add("loadtest-supervisor", "admin")
        agent_key = agents.add("loadtest-agent", "agent")
        agents_file = self.workdir / "agents.json"
        agents.save(agents_file)
        store, roots = "", []
        if len(ranges) > 1:
            url, redis = self._redis()
            key_file = self.workdir / "store.key"
            key_file.write_text(base64.b64encode(os.urandom(32)).decode())
            store = f'[store]\nurl = "{url}"\nkey_file = "{key_file}"\n'
            roots.append(redis.pid)  # the shared store is part of what two nodes cost
        _wait(lambda: _tcp_open(gateway_port), "gateway stub", gateway)
        started: list[tuple[NodeAddress, subprocess.Popen]] = []
        for n, (low, high) in enumerate(ranges):
            ng = ("127.0.0.1", _free(socket.SOCK_DGRAM))
            api_port = _free(socket.SOCK_STREAM)
            config = self.workdir / f"toneguard-{n}.toml"
            config.write_text(
                f'[ng]\nlisten = "127.0.0.1:{ng[1]}"\n'
                f'[media]\nport_min = {low}\nport_max = {high}\n'
                + (f"workers = {workers}\n" if workers is not None else "")
                + f'[api]\nlisten = "127.0.0.1:{api_port}"\nagents_file = "{agents_file}"\n'
                '[logging]\nlevel = "warning"\nformat = "json"\n'
                f'[gateway]\nurl = "https://127.0.0.1:{gateway_port}"\n'
                f'ca_file = "{pki.ca_cert}"\ncert_file = "{pki.client_cert}"\n'
                f'key_file = "{pki.client_key}"\n'
                + (store + f'node_id = "loadtest-{n}"\n' if store else ""))
            # Spawned together: the nodes start (imports, worker processes) side by side.
            proc = self._spawn([sys.executable, "-m", "proxy", "serve", "-c", str(config)],
                               f"toneguard-{n}.log")
            started.append((NodeAddress(ng, f"http://127.0.0.1:{api_port}"), proc))
        for n, (node, proc) in enumerate(started):
            what = "toneguard serve" + (f" (node {n + 1})" if len(started) > 1 else "")
            _wait(partial(_ng_ping, node.ng), f"{what} (ng)", proc, timeout=60)
            _wait(partial(_healthy, node.api), f"{what} (API)", proc, timeout=60)
        count = (workers or os.cpu_count() or 1) if workers is not None else 1
        per_node = f"{count} media worker{'s' if count > 1 else ''}" + \
            (" (the default)" if workers is None else "")
        nodes = f"{len(started)} toneguard serve nodes sharing a redis-server, calls round " \
            "robin over their ng sockets" if len(started) > 1 else "toneguard serve"
        return Target("toneguard", [node for node, _ in started], admin_key, agent_key,
                      "loadtest-agent", [proc.pid for _, proc in started] + roots,
                      f"{nodes}, default config (always-on masking), {per_node}"
                      f"{' each' if len(started) > 1 else ''}, gateway stub beside it",
                      workers=workers)

    def _rtpengine(self, ports: tuple[int, int], workers: int | None) -> Target:
        binary = shutil.which("rtpengine")
        if binary is None:
            raise TargetError("rtpengine is not installed (apt-get install rtpengine-daemon)")
        ng = ("127.0.0.1", _free(socket.SOCK_DGRAM))
        threads = [] if workers is None else [f"--num-threads={workers or os.cpu_count()}"]
        proc = self._spawn([binary, "--config-file=none", "-t", "-1", "-i", "127.0.0.1", "-n",
                            f"127.0.0.1:{ng[1]}", "-f", "-E", "-m", str(ports[0]), "-M",
                            str(ports[1]), "-L", "4", *threads], "rtpengine.log")
        _wait(lambda: _ng_ping(ng), "rtpengine (ng)", proc)
        count = "its default: one per core, at least 4" if workers is None else \
            f"{workers or os.cpu_count()}"
        return Target("rtpengine", [NodeAddress(ng)], pids=[proc.pid], workers=workers,
                      settings=f"rtpengine userspace (worker threads: {count}), per call: "
                               "block DTMF, DTMF-security=tone, delay-buffer=40 (its best "
                               "masking settings); no payment API")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                # SIGINT: a ToneGuard node stops at once (SIGTERM would drain live calls, e.g.
                # after Ctrl-C); rtpengine and the gateway stub end on it too.
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for window in self._windows:
            window.close()
        self._windows.clear()


def running_target(kind: str, ngs: list[tuple[str, int]], apis: list[str],
                   pids: list[int]) -> Target:
    """A target someone else runs, one node per ng address (calls round robin over them);
    ``apis``: none, one (every payment through it: a node forwards what it does not own) or
    one per node, in the same order. API keys: TONEGUARD_ADMIN_KEY / TONEGUARD_AGENT_KEY."""
    for ng in ngs:
        if not _ng_ping(ng):
            raise TargetError(f"--ng {ng[0]}:{ng[1]}: no reply to an ng ping")
    if len(apis) not in (0, 1, len(ngs)):
        raise TargetError(f"--api: {len(apis)} URLs for {len(ngs)} ng addresses (give one, "
                          "or one per node in the same order)")
    urls = apis * len(ngs) if len(apis) == 1 else apis or [""] * len(ngs)
    target = Target(kind, [NodeAddress(ng, url) for ng, url in zip(ngs, urls, strict=True)],
                    pids=pids, settings=f"running target ({len(ngs)} node"
                    f"{'s' if len(ngs) > 1 else ''}), driven over ng")
    if apis:
        admin, agent = os.environ.get("TONEGUARD_ADMIN_KEY"), os.environ.get(
            "TONEGUARD_AGENT_KEY")
        if not admin or not agent:
            raise TargetError("--api needs TONEGUARD_ADMIN_KEY and TONEGUARD_AGENT_KEY")
        for api in dict.fromkeys(apis):
            r = httpx.get(f"{api}/v1/me", headers={"Authorization": f"Bearer {agent}"},
                          timeout=5)
            if r.status_code != 200:
                raise TargetError(f"--api {api}: the agent key was refused ({r.status_code})")
            target.agent_id = r.json().get("agent_id", "")
        target.admin_key, target.agent_key = admin, agent
    return target
