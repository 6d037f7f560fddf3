"""--find-capacity: levels are the scenario at N calls; a level breaks on loss, latency or a
leak (not on payments); one run covers ToneGuard and rtpengine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.capacity import broken, level_scenario, render_capacity
from loadtest.scenario import ScenarioError, parse_scenario

ROOT = Path(__file__).parents[2]


def test_a_level_is_the_scenario_at_that_many_calls_for_capacity_seconds() -> None:
    s = parse_scenario({"calls": {"total": 5, "concurrency": 5},
                        "capacity": {"start": 50, "seconds": 9}, "payments": {"share": 0.2}})
    level = level_scenario(s, 300)
    assert (level.calls.total, level.calls.concurrency, level.calls.hold_seconds) == \
        (300, 300, 9)
    assert level.payments.share == 0.2


def test_a_level_too_short_for_the_card_entry_is_refused_naming_the_key() -> None:
    s = parse_scenario({"capacity": {"seconds": 4}, "calls": {"total": 2, "concurrency": 2}})
    with pytest.raises(ScenarioError, match=r"at 10 calls: calls\.hold_seconds: card entry"):
        level_scenario(s, 10)


def test_loss_latency_and_leaks_break_a_level_but_payments_do_not() -> None:
    problems = ["caller_to_agent loss 0.300 % > 0.100 %", "agent_to_caller p99 130.0 ms > 120 ms",
                "leak (decoded digits) on 1 of 5 calls checked",
                "2 of 4 payments not completed"]
    assert broken({"verdict": {"problems": problems}}) == problems[:3]


def test_the_comparison_page_names_each_targets_capacity() -> None:
    outcome = {"scenario": {"name": "ramp"}, "partial": False, "targets": {
        "toneguard": {"capacity": 200, "limit_reached": False, "runs": [
            {"calls": 100, "ok": True, "problems": [], "p99_ms": {"caller_to_agent": 70.0},
             "loss": {}, "cpu_percent_mean": 30.0},
            {"calls": 200, "ok": False, "problems": ["p99"], "p99_ms": {"caller_to_agent": 200},
             "loss": {}, "cpu_percent_mean": 60.0}]},
        "rtpengine": {"capacity": 100, "limit_reached": True, "runs": [
            {"calls": 100, "ok": True, "problems": [], "p99_ms": {"caller_to_agent": 30.0},
             "loss": {}, "cpu_percent_mean": 10.0}]}}}
    page = render_capacity(outcome)
    assert "toneguard capacity</th><td>200 concurrent calls</td>" in page
    assert "rtpengine capacity</th><td>100 concurrent calls (highest level tried)" in page
    assert page.count("<svg") == 2


@pytest.mark.peer
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("rtpengine") is None, reason="apt-get install rtpengine-daemon")
def test_one_run_finds_a_level_for_toneguard_and_for_rtpengine(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        'name = "tiny"\n[calls]\ntotal = 2\nconcurrency = 2\nhold_seconds = 9\n'
        '[media]\ncaller_audio = "noise"\n[payments]\nshare = 0\n'
        '[checks]\nleak = "decoded"\nmax_loss = 0.01\nmax_p99_ms = 5000\n'
        '[capacity]\nstart = 2\nstep = 2\nmax = 2\nseconds = 9\n')
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "loadtest", str(scenario), "--find-capacity",
         "--report", str(tmp_path / "out")], capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    outcome = json.loads((tmp_path / "out" / "capacity.json").read_text())
    for kind in ("toneguard", "rtpengine"):
        (run,) = outcome["targets"][kind]["runs"]
        assert run["calls"] == 2 and run["ok"], run
        assert outcome["targets"][kind]["capacity"] == 2
        assert (tmp_path / "out" / kind / "2" / "report.json").exists()
    assert (tmp_path / "out" / "capacity.html").exists()


def test_node_counts_are_variants_of_toneguard_only() -> None:
    from loadtest.capacity import variants

    s = parse_scenario({"target": {"nodes": [1, 2]}})
    assert variants(s) == [("toneguard", "toneguard", 1), ("toneguard-2nodes", "toneguard", 2),
                           ("rtpengine", "rtpengine", 1)]


def test_the_node_comparison_puts_each_run_in_its_own_column() -> None:
    from loadtest.capacity import COMPARED, render_comparison
    from loadtest.summary import summarise
    from tests.loadtest.helpers import synthetic_run

    one, two = summarise(synthetic_run()), summarise(synthetic_run(lose=True))
    rows = {label: {"toneguard": read(one), "toneguard-2nodes": read(two)}
            for label, read in COMPARED}
    assert rows["packets lost, caller → agent / agent → caller"] == {
        "toneguard": "0 of 400 / 0 of 400", "toneguard-2nodes": "1 of 400 / 0 of 400"}
    page = render_comparison({"scenario": {"name": "s"}, "partial": False, "rows": rows,
                              "runs": {"toneguard": {"nodes": 1, "settings": "one"},
                                       "toneguard-2nodes": {"nodes": 2, "settings": "two"}}})
    assert "<th>toneguard</th><th>toneguard-2nodes</th>" in page
    assert "<td>1 of 400 / 0 of 400</td>" in page
