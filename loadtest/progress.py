"""Live progress of a run: a rich panel on a terminal, a plain line every 2 s otherwise (CI
logs, pipes), so that a long run shows it is alive either way."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtest.runner import Snapshot

PLAIN_EVERY = 2.0  # seconds between plain lines


class Progress:
    def __init__(self, title: str, total: int, stream: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.title, self.total = title, total
        self.stream = stream or sys.stdout
        self.live_mode = self.stream.isatty() if live is None else live
        self._live: Live | None = None
        self._last_plain = -PLAIN_EVERY

    def __enter__(self) -> Progress:
        if self.live_mode:
            self._live = Live(self._table(None), console=Console(file=self.stream),
                              refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(self._table(snap))
        elif snap.t - self._last_plain >= PLAIN_EVERY:
            self._last_plain = snap.t
            print(f"loadtest: {snap.t:6.1f} s  calls up {snap.calls_up:4d}  set up "
                  f"{snap.calls_set_up}/{self.total}  done {snap.calls_done}  failed "
                  f"{snap.calls_failed}  sent {snap.sent_pps:7.0f} pps  received "
                  f"{snap.received_pps:7.0f} pps  loss {100 * snap.loss:.3f} %  "
                  f"target CPU {snap.cpu:5.1f} %", file=self.stream, flush=True)

    def _table(self, snap: Snapshot | None) -> Table:
        table = Table(title=self.title, show_header=True, expand=False)
        for column in ("elapsed", "calls up", "set up", "done", "failed", "sent pps",
                       "received pps", "loss", "target CPU"):
            table.add_column(column, justify="right")
        if snap is not None:
            table.add_row(f"{snap.t:.1f} s", str(snap.calls_up),
                          f"{snap.calls_set_up}/{self.total}", str(snap.calls_done),
                          str(snap.calls_failed), f"{snap.sent_pps:.0f}",
                          f"{snap.received_pps:.0f}", f"{100 * snap.loss:.3f} %",
                          f"{snap.cpu:.1f} %")
        return table
