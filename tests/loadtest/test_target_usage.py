"""What the tool reads from /proc about the target: CPU, memory, nice, and the time its
threads waited for a CPU (the run queue), which tells a starved relay from a slow one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.target import CLK_TCK, Sampler, host_cpu, niceness, usage

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc")
def test_two_processes_sharing_one_cpu_each_wait_in_the_run_queue() -> None:
    # Both pinned to one CPU, each needs 0.6 s of it: whichever runs, the other waits, so
    # together they wait at least about as long as one of them runs (more on a busy host).
    cpu = sorted(os.sched_getaffinity(0))[0]
    procs = [subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, "
                               f"{{{cpu}}})\n" + BURN + "import sys\nsys.stdin.read()\n"],
                              stdin=subprocess.PIPE) for _ in range(2)]
    try:
        burnt = 1.1  # both have used (almost) all their 0.6 s; polled, bounded at 60 s
        deadline = time.monotonic() + 60
        while (used := usage([p.pid for p in procs])[0]) < burnt:
            assert time.monotonic() < deadline, f"the burners used only {used:.2f} s of CPU"
            time.sleep(0.05)
        waited = usage([p.pid for p in procs])[2]
        assert waited >= 0.4, f"run-queue wait {waited:.2f} s while sharing one CPU"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_host_steal_and_busy_time_are_read_from_proc_stat() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice (ticks), then per CPU
    stat = (f"cpu  {3 * CLK_TCK} {2 * CLK_TCK} {CLK_TCK} 999999 77 0 {CLK_TCK} {4 * CLK_TCK}"
            " 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n")
    assert host_cpu(stat) == (7.0, 4.0)  # idle and iowait are not busy; steal apart
    assert host_cpu("cpu  1 2 3 4\n") == (6 / CLK_TCK, 0.0)  # an old kernel: no steal column
    assert host_cpu("garbage") == (0.0, 0.0)
    busy, steal = host_cpu()  # this host's own
    assert busy > 0 and steal >= 0


def test_the_sampler_records_the_hosts_busy_and_steal_beside_the_target() -> None:
    sampler = Sampler([os.getpid()], interval=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        sampler.stop()
    for t, cpu, rss, wait, busy, steal in sampler.samples:
        assert t > 0 and cpu >= 0 and rss > 0 and wait >= 0
        # sampling itself keeps the host busy a little; steal is whatever the hypervisor took
        assert 0 <= busy <= 100 * (os.cpu_count() or 1) * 1.5 and steal >= 0


def test_nice_is_read_per_process() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: os.nice(7))
    try:
        assert niceness([proc.pid]) == [min(ours + 7, 19)]
        assert niceness([os.getpid()]) == [ours]
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_is_gone_counts_nothing() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert usage([proc.pid]) == (0.0, 0, 0.0)
    assert niceness([proc.pid]) == []


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("rtpengine") is None, reason="apt-get install rtpengine-daemon")
def test_workers_reach_rtpengine_as_its_thread_count(tmp_path: Path) -> None:
    from loadtest.target import StartedTarget

    started = StartedTarget("rtpengine", 40, tmp_path, workers=1)
    try:
        (pid,) = started.target.pids
        cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        assert "--num-threads=1" in cmdline
        assert "worker threads: 1" in started.target.settings
        assert started.target.workers == 1
    finally:
        started.stop()
