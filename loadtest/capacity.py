"""--find-capacity: how many concurrent calls each relay carries within the scenario's bounds.

For each target in ``[capacity] targets`` (ToneGuard, then rtpengine with its best masking
settings), runs the scenario at ``start``, ``start + step``, ... concurrent calls (each level a
fresh target, ``seconds`` of hold, every call up at once after the ramp) until a level breaks a
bound of ``[checks]``: loss, p99 added latency, a leak (or an agent leg not heard, which would
hide one), or calls failing to set up. The last good level is the target's capacity. Every
level's own report is kept under ``DIR/TARGET/CALLS/``; ``DIR/capacity.json`` and
``capacity.html`` compare the targets.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from loadtest.report import CSS, _e, _table, line_chart
from loadtest.scenario import Scenario, ScenarioError, parse_scenario

# Which verdict problems count against capacity (payments are judged per run, not here).
BOUND_WORDS = ("loss", "p99", "leak", "not heard", "failed to set up")


def level_scenario(scenario: Scenario, calls: int) -> Scenario:
    """The scenario at ``calls`` concurrent calls, each held for [capacity] seconds."""
    data = scenario.model_dump(mode="json")
    data["calls"].update(total=calls, concurrency=calls,
                         hold_seconds=scenario.capacity.seconds)
    data["capacity"]["start"] = min(data["capacity"]["start"], calls)
    return parse_scenario(data, f"{scenario.name} at {calls} calls")


def broken(summary: dict[str, Any]) -> list[str]:
    return [p for p in summary["verdict"]["problems"] if any(w in p for w in BOUND_WORDS)]


async def find_capacity(scenario: Scenario, directory: Path, stop: asyncio.Event, *,
                        progress: bool | None = None) -> int:
    from loadtest.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_once

    cap = scenario.capacity
    levels = list(range(cap.start, cap.max + 1, cap.step))
    outcome: dict[str, Any] = {"scenario": scenario.model_dump(mode="json"), "targets": {}}
    for kind in cap.targets:
        runs: list[dict[str, Any]] = []
        last_good = 0
        for calls in levels:
            if stop.is_set():
                break
            try:
                level = level_scenario(scenario, calls)
            except ScenarioError as exc:
                print(f"toneguard loadtest: {exc}")
                return EXIT_USAGE
            where = directory / kind / str(calls)
            code = await run_once(level, kind, where, stop, quiet=True, progress=False)
            if code == EXIT_USAGE:
                return code
            summary = json.loads((where / "report.json").read_text())
            problems = broken(summary)
            lat, pk = summary["latency_ms"], summary["packets"]
            runs.append({
                "calls": calls, "ok": not problems and not summary["partial"],
                "problems": problems,
                "p99_ms": {d: lat[d]["p99"] for d in lat},
                "loss": {d: pk[d]["loss"] for d in pk},
                "cpu_percent_mean": summary["target_usage"]["cpu_percent_mean"],
                "generator_late_ms_p99": summary["generator"]["late_ms_p99"],
                "leak_calls": summary["leak"]["calls_with_leak"],
            })
            print(f"loadtest: capacity {kind:9} {calls:5d} calls: "
                  f"{'ok' if runs[-1]['ok'] else 'BROKEN: ' + '; '.join(problems)} "
                  f"(p99 {lat['caller_to_agent']['p99']} / {lat['agent_to_caller']['p99']} ms, "
                  f"CPU {summary['target_usage']['cpu_percent_mean']} %)", flush=True)
            if not runs[-1]["ok"]:
                break
            last_good = calls
        outcome["targets"][kind] = {"capacity": last_good, "runs": runs,
                                    "limit_reached": bool(runs) and runs[-1]["ok"]}
    outcome["partial"] = stop.is_set()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "capacity.json").write_text(json.dumps(outcome, indent=1) + "\n", "utf-8")
    (directory / "capacity.html").write_text(render_capacity(outcome), "utf-8")
    for kind, result in outcome["targets"].items():
        more = " (the highest level tried: raise capacity.max)" if result["limit_reached"] \
            else ""
        print(f"loadtest: {kind} capacity: {result['capacity']} concurrent calls{more}")
    print(f"loadtest: report {directory / 'capacity.html'}")
    return EXIT_INTERRUPTED if stop.is_set() else EXIT_OK


def render_capacity(outcome: dict[str, Any]) -> str:
    targets = outcome["targets"]
    p99 = line_chart("p99 added latency, caller → agent, by concurrent calls",
                     [(k, [(r["calls"], r["p99_ms"]["caller_to_agent"] or 0) for r in t["runs"]])
                      for k, t in targets.items()], "concurrent calls", "ms")
    cpu = line_chart("Target CPU by concurrent calls",
                     [(k, [(r["calls"], r["cpu_percent_mean"] or 0) for r in t["runs"]])
                      for k, t in targets.items()], "concurrent calls", "CPU % (one core = 100)")
    rows = [(f"{k} capacity", f"{t['capacity']} concurrent calls"
             + (" (highest level tried)" if t["limit_reached"] else "")) for k, t in
            targets.items()]
    detail = "".join(
        f"<h2>{_e(k)}</h2>" + _table([(str(r["calls"]), ("ok" if r["ok"] else "broken: "
                                      + "; ".join(r["problems"])) + f" — CPU "
                                      f"{r['cpu_percent_mean']} %, p99 {r['p99_ms']}, "
                                      f"loss {r['loss']}") for r in t["runs"]])
        for k, t in targets.items())
    name = outcome["scenario"]["name"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Capacity — {_e(name)}</title>
<style>{CSS}</style></head><body>
<h1>Capacity — {_e(name)}{' (partial)' if outcome['partial'] else ''}</h1>
<p>Last level within the bounds of [checks] (loss, p99 latency, leak), each level a fresh
target; every level's own report is in TARGET/CALLS/report.html beside this file.</p>
{_table(rows)}<div class="grid">{p99}{cpu}</div>{detail}</body></html>
"""
