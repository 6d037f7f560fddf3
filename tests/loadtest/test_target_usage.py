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

from loadtest.target import niceness, usage

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
