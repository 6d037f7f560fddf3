"""uvicorn for the node's API, without uvicorn's own signal handlers.

A module of its own so that ``serve`` imports uvicorn only when the API starts (after the calls
are restored from the store, see :mod:`proxy.service.serve`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers. Left in, uvicorn takes SIGTERM itself and shuts
    the API down at once — during a drain the agents of the live calls still need the panel and
    their payments — and re-raises the signal when it is done, which reads as a second one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
