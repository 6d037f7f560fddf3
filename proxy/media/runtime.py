"""Process-wide settings for the long-running media processes."""

from __future__ import annotations

import ctypes
import ctypes.util
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
