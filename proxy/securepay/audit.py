"""Append-only audit trail (JSON lines) of who did what to which call and payment.

``record`` refuses any value that holds a card number (a 13–19 digit Luhn-valid run, grouped
or not), so the audit file can never become a place where card data lands.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from proxy.securepay.redaction import contains_pan


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, action: str, **fields: str | int | bool | None) -> None:
        for key, value in fields.items():
            if isinstance(value, str | int) and contains_pan(str(value)):
                raise ValueError(f"audit field {key!r} looks like a card number; refused")
        entry = {"ts": round(time.time(), 3), "action": action,
                 **{k: v for k, v in fields.items() if v not in (None, "")}}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self.records.append(entry)
            if self._fd is not None:
                os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
