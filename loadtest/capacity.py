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


def variant_name(kind: str, nodes: int) -> str:
    """How a target and its node count are named in reports and folders."""
    return kind if nodes == 1 else f"{kind}-{nodes}nodes"


def variants(scenario: Scenario) -> list[tuple[str, str, int]]:
    """(name, target kind, nodes) for every target of [capacity], ToneGuard at each node count
    of [target] nodes (rtpengine runs as one)."""
    return [(variant_name(kind, n), kind, n) for kind in scenario.capacity.targets
            for n in (scenario.target.nodes if kind == "toneguard" else [1])]


async def find_capacity(scenario: Scenario, directory: Path, stop: asyncio.Event, *,
                        progress: bool | None = None) -> int:
    from loadtest.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_once

    cap = scenario.capacity
    levels = list(range(cap.start, cap.max + 1, cap.step))
    outcome: dict[str, Any] = {"scenario": scenario.model_dump(mode="json"), "targets": {}}
    for name, kind, nodes in variants(scenario):
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
            where = directory / name / str(calls)
            code = await run_once(level, kind, where, stop, quiet=True, progress=False,
                                  nodes=nodes)
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
            print(f"loadtest: capacity {name:9} {calls:5d} calls: "
                  f"{'ok' if runs[-1]['ok'] else 'BROKEN: ' + '; '.join(problems)} "
                  f"(p99 {lat['caller_to_agent']['p99']} / {lat['agent_to_caller']['p99']} ms, "
                  f"CPU {summary['target_usage']['cpu_percent_mean']} %)", flush=True)
            if not runs[-1]["ok"]:
                break
            last_good = calls
        outcome["targets"][name] = {"capacity": last_good, "runs": runs, "nodes": nodes,
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


# --- one node against several: the same scenario once per node count ------------------------

COMPARED = (  # (row, how to read it from a report.json)
    ("calls set up / planned", lambda s: f"{s['calls']['set_up']} / {s['calls']['planned']}"),
    ("set-up time p50 / max (ms)",
     lambda s: f"{s['calls']['setup_ms']['p50']} / {s['calls']['setup_ms']['max']}"),
    ("packets lost, caller → agent / agent → caller",
     lambda s: " / ".join(f"{p['lost']} of {p['sent']}" for p in s["packets"].values())),
    ("added latency caller → agent p50 / p99 (ms)",
     lambda s: f"{s['latency_ms']['caller_to_agent']['p50']} / "
               f"{s['latency_ms']['caller_to_agent']['p99']}"),
    ("added latency agent → caller p50 / p99 (ms)",
     lambda s: f"{s['latency_ms']['agent_to_caller']['p50']} / "
               f"{s['latency_ms']['agent_to_caller']['p99']}"),
    ("payments completed / attempted",
     lambda s: f"{s['payments']['completed']} / {s['payments']['attempted']}"),
    ("calls with a leak / checked",
     lambda s: f"{s['leak']['calls_with_leak']} / {s['leak']['calls_checked']}"),
    ("target CPU mean / max (% of one core), RSS max (MB)",
     lambda s: f"{s['target_usage']['cpu_percent_mean']} / "
               f"{s['target_usage']['cpu_percent_max']}, {s['target_usage']['rss_mb_max']}"),
    ("generator lateness p99 (ms)", lambda s: f"{s['generator']['late_ms_p99']}"),
    ("verdict", lambda s: "pass" if s["verdict"]["ok"] else
     "FAIL: " + "; ".join(s["verdict"]["problems"])),
)


async def compare_nodes(scenario: Scenario, directory: Path, stop: asyncio.Event, *,
                        progress: bool | None = None) -> int:
    """The scenario against ToneGuard at each node count of [target] nodes, in turn (each a
    fresh set of nodes), each report in DIR/toneguard[-Nnodes]/, the figures side by side in
    DIR/compare.json and compare.html. Exit code: the worst of the runs."""
    from loadtest.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_once

    codes, runs = [], {}
    for nodes in scenario.target.nodes:
        if stop.is_set():
            break
        name = variant_name("toneguard", nodes)
        code = await run_once(scenario, "toneguard", directory / name, stop,
                              progress=progress, nodes=nodes)
        codes.append(code)
        if code == EXIT_USAGE:
            return code
        runs[name] = json.loads((directory / name / "report.json").read_text())
    rows = {label: {name: read(s) for name, s in runs.items()} for label, read in COMPARED}
    outcome = {"scenario": scenario.model_dump(mode="json"), "partial": stop.is_set(),
               "runs": {name: {"nodes": s["target"]["nodes"], "settings": s["target"]["settings"]}
                        for name, s in runs.items()}, "rows": rows}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compare.json").write_text(json.dumps(outcome, indent=1) + "\n", "utf-8")
    (directory / "compare.html").write_text(render_comparison(outcome), "utf-8")
    width = max(len(label) for label, _ in COMPARED)
    print("loadtest: " + " " * width + "".join(f"  {name:>24}" for name in runs))
    for label, values in rows.items():  # long cells (the verdict's problems) cut: see the page
        print(f"loadtest: {label:{width}}" + "".join(
            f"  {v if len(v) <= 24 else v[:23] + '…':>24}" for v in values.values()))
    print(f"loadtest: report {directory / 'compare.html'}")
    if stop.is_set():
        return EXIT_INTERRUPTED
    return EXIT_OK if all(code == EXIT_OK for code in codes) else EXIT_FAILED


def render_comparison(outcome: dict[str, Any]) -> str:
    names = list(outcome["runs"])
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = "".join(f"<tr><th>{_e(label)}</th>" + "".join(f"<td>{_e(values.get(n, ''))}</td>"
                                                         for n in names) + "</tr>"
                   for label, values in outcome["rows"].items())
    settings = _table([(n, r["settings"]) for n, r in outcome["runs"].items()])
    name = outcome["scenario"]["name"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Nodes compared — {_e(name)}</title>
<style>{CSS}</style></head><body>
<h1>Nodes compared — {_e(name)}{' (partial)' if outcome['partial'] else ''}</h1>
<p>The same scenario against each node count in turn, each a fresh set of nodes; every run's
own report is in NAME/report.html beside this file.</p>
<table><tr><th></th>{head}</tr>{body}</table><h2>Targets</h2>{settings}</body></html>
"""
