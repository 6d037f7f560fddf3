"""Append-only audit trail (JSON lines) of who did what to which call and payment.

``record`` redacts any value that holds a card number (a 13–19 digit Luhn-valid run, grouped
or not) before it is written, so the audit file can never become a place where card data lands
— and an action whose call id or agent name happens to look like a card number (an attacker's
Call-ID) is still recorded rather than failing the action it describes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from proxy.securepay.redaction import contains_pan, redact_text


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.redacted = 0  # values that looked like a card number and were masked
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, action: str, **fields: str | int | bool | None) -> None:
        clean = {k: redact_text(str(v)) if isinstance(v, str | int) and not isinstance(v, bool)
                 and contains_pan(str(v)) else v for k, v in fields.items()}
        self.redacted += sum(clean[k] is not v for k, v in fields.items())
        entry = {"ts": round(time.time(), 3), "action": redact_text(action),
                 **{k: v for k, v in clean.items() if v not in (None, "")}}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self.records.append(entry)
            if self._fd is not None:
                os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
