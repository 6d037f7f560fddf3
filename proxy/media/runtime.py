"""Process-wide settings for the long-running media processes."""

from __future__ import annotations

import gc
import resource


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
