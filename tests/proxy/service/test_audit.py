"""The audit trail is append-only JSON lines and refuses anything that looks like a card."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from proxy.securepay.audit import AuditLog


def test_records_are_appended_as_json_lines_to_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    first.record("payment.start", actor="alice", call_id="c1", session_id="PA1")
    first.close()
    second = AuditLog(path)  # a restart appends, never truncates
    second.record("payment.end", call_id="c1", outcome="complete", last4="1111")
    second.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["action"] for r in lines] == ["payment.start", "payment.end"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("value", ["4111111111111111", "card 5555 5555 5555 4444",
                                   "378282246310005"])
def test_a_card_number_is_redacted_and_the_action_still_recorded(value: str,
                                                                  tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("call.assign", call_id=value, agent_id="alice")
    log.close()
    written = (tmp_path / "audit.jsonl").read_text()
    digits = value.replace(" ", "")
    assert digits not in written.replace(" ", "") and "PAN redacted" in written
    assert log.records[0]["agent_id"] == "alice" and log.redacted == 1
