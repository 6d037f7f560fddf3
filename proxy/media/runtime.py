"""Process-wide settings for the long-running media processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import gc
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def freeze_startup_objects() -> None:
    """Exempt everything alive after start-up (modules, the API app, config) from garbage
    collection. Why: the collector's older generations otherwise rescan those hundreds of
    thousands of objects while packets wait; what calls allocate later is still collected."""
    gc.collect()
    gc.freeze()


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one and return it. Each media stream holds up
    to three sockets, so a stock soft limit of 1 024 would cap a node near 170 calls."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # not permitted here: keep what we have
            pass
    return soft


def reserve_file_table(fds: int) -> int:
    """Grow this process's file table to at least ``fds`` entries now, at start-up, and return
    its size (at most the open-file limit). Why: the kernel grows the table as sockets are
    opened (at 256, 512, 1 024, ... descriptors) and, in a process with more than one thread
    (the relay has its executor and libuv threads), waits for an RCU grace period each time
    (``synchronize_rcu`` in ``expand_files``): 6-18 ms with the event loop stopped, measured on
    a quiet 2-CPU host, and longer when the host's CPUs are stolen, while calls are set up.
    Grown here once, no ``socket()`` of a call waits for it. ``F_DUPFD`` takes the lowest free
    descriptor from ``fds - 1`` up, so nothing open is touched."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = fds if soft == resource.RLIM_INFINITY else min(fds, soft)
    if want <= 64:  # the table every process starts with
        return want
    probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.close(fcntl.fcntl(probe, fcntl.F_DUPFD_CLOEXEC, want - 1))
    except OSError:  # e.g. EMFILE/EINVAL: the table grows as it always did
        pass
    finally:
        os.close(probe)
    return want


def media_file_table(port_min: int, port_max: int) -> int:
    """File-table entries a process relaying on ``port_min``-``port_max`` may need: a socket
    per port (RTP and RTCP) and room for the rest (control, API, store, logs)."""
    return port_max - port_min + 1 + 1024


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when its node process does (Linux ``PR_SET_PDEATHSIG``).
    Why: a node killed with ``kill -9`` leaves its media workers relaying on the call's ports
    until they notice the closed pipe, while a restarted node binds those ports again. If the
    parent is already gone (it died before this ran), exit at once."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)
