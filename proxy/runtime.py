"""Process-wide settings for the long-running media processes."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Exempt everything alive after start-up (modules, the API app, config) from garbage
    collection. Why: the collector's older generations otherwise rescan those hundreds of
    thousands of objects while packets wait; what calls allocate later is still collected."""
    gc.collect()
    gc.freeze()
