"""A run's figures as one JSON-ready dict (the report's single source), and its verdict.

Counts are kept so that they add up (sent = received + lost per direction; calls planned =
set up + failed + not started), which the CI smoke test checks. No card digit is kept: leak
findings are counts of digits, never the digits.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtest.media import AGENT, CALLER
from loadtest.runner import RunResult

DIRECTIONS = {CALLER: "caller_to_agent", AGENT: "agent_to_caller"}
CDF_POINTS = 101


def _pct(values: npt.NDArray[np.float64], q: float, scale: float = 1.0) -> float | None:
    return round(scale * float(np.percentile(values, q)), 3) if values.size else None


def _cdf(latencies: npt.NDArray[np.float64]) -> list[list[float]]:
    """(ms, fraction) at 101 quantiles: enough for a plot, small in the JSON."""
    if not latencies.size:
        return []
    qs = np.linspace(0, 100, CDF_POINTS)
    return [[round(1000 * float(v), 3), round(q / 100, 2)]
            for v, q in zip(np.percentile(latencies, qs), qs, strict=True)]


def _over_time(streams: list[Any]) -> list[list[float]]:
    """Per second of the run: [second, p50 ms, p99 ms, max ms] of the packets sent in it —
    a relay that stalls shows as a spike, where a whole-run percentile hides when."""
    if not any(st.latencies.size for st in streams):
        return []
    sent = np.concatenate([st.start + st.ticks * 0.02 for st in streams])
    latency = np.concatenate([st.latencies for st in streams])
    second = sent.astype(np.int64)
    out = []
    for s in np.unique(second):
        lat = latency[second == s]
        out.append([int(s), round(1000 * float(np.percentile(lat, 50)), 2),
                    round(1000 * float(np.percentile(lat, 99)), 2),
                    round(1000 * float(lat.max()), 2)])
    return out


def _worst_per_second(times: npt.NDArray[np.float64]) -> list[list[float]]:
    """[second, worst ms] of (s into the run, seconds) pairs."""
    if not times.size:
        return []
    second = np.floor(times[:, 0]).astype(np.int64)
    return [[int(s), round(1000 * float(times[second == s, 1].max()), 2)]
            for s in np.unique(second)]


def summarise(result: RunResult) -> dict[str, Any]:
    s, calls = result.scenario, result.calls
    set_up = [c for c in calls if c.setup_ms is not None]
    setup_ms = np.array([c.setup_ms for c in set_up], dtype=np.float64)
    packets, latency, jitter = {}, {}, {}
    for side, name in DIRECTIONS.items():
        streams = [st for c in calls for st in c.streams if st.side == side]
        sent = sum(st.sent for st in streams)
        received = sum(st.received for st in streams)
        packets[name] = {"sent": sent, "received": received, "lost": sent - received,
                         "loss": round((sent - received) / sent, 6) if sent else 0.0,
                         "events_sent": sum(st.events_sent for st in streams),
                         "events_passed": sum(st.events_received for st in streams)}
        lat = result.latencies[side]
        latency[name] = {"p50": _pct(lat, 50, 1000), "p95": _pct(lat, 95, 1000),
                         "p99": _pct(lat, 99, 1000), "max": _pct(lat, 100, 1000),
                         "count": int(lat.size), "cdf": _cdf(lat)}
        js = np.array([st.jitter_ms for st in streams])
        jitter[name] = {"mean": round(float(js.mean()), 3) if js.size else None,
                        "max": round(float(js.max()), 3) if js.size else None}
    over_time = {name: _over_time([st for c in calls for st in c.streams if st.side == side])
                 for side, name in DIRECTIONS.items()}
    paying = [c for c in calls if c.payment and c.started is not None]
    statuses: dict[str, int] = {}
    for c in paying:
        statuses[c.payment_status or "unknown"] = statuses.get(c.payment_status or "unknown",
                                                               0) + 1
    checked = [c for c in calls if c.record and c.streams]
    leak = {
        "calls_checked": len(checked),
        "spandsp_digits": sum(len(c.leak_spandsp) for c in checked),
        "multimon_digits": sum(len(c.leak_multimon) for c in checked),
        "tone_ms": round(sum(c.leak_ms for c in checked), 1),
        "events_to_agent": sum(c.leak_events for c in checked),
        "calls_with_leak": sum(bool(c.leak_spandsp or c.leak_multimon or c.leak_ms or
                                    c.leak_events) for c in checked),
        "calls_with_decoded_leak": sum(bool(c.leak_spandsp or c.leak_multimon or c.leak_events)
                                       for c in checked),
        # The check means something only if the agent heard the call.
        "calls_heard": sum(c.heard_seconds >= 0.9 * c.sent_seconds > 0 for c in checked),
    }
    usage = result.usage
    cpu = np.array([u[1] for u in usage])
    wait = np.array([u[3] for u in usage])
    # The host's own (older samplers had none): its CPUs' busy time and their steal.
    host_busy = np.array([u[4] for u in usage if len(u) > 5])
    steal = np.array([u[5] for u in usage if len(u) > 5])
    lateness = result.lateness
    summary: dict[str, Any] = {
        "tool": "toneguard loadtest",
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "scenario": s.model_dump(mode="json"),
        "target": {"kind": result.target.kind,
                   "ng": ",".join(f"{n.ng[0]}:{n.ng[1]}" for n in result.target.nodes),
                   "api": result.target.api, "nodes": len(result.target.nodes),
                   "workers": result.target.workers, "settings": result.target.settings},
        "partial": result.partial,
        "duration_seconds": round(result.duration, 2),
        "calls": {
            "planned": len(calls),
            "started": sum(c.started is not None for c in calls),
            "set_up": len(set_up),
            "failed": sum(bool(c.error) and c.setup_ms is None for c in calls),
            "not_started": sum(c.started is None for c in calls),
            "media_completed": sum(c.media_ended for c in calls),
            "errors": sorted({c.error for c in calls if c.error})[:10],
            "setup_ms": {"p50": _pct(setup_ms, 50), "p95": _pct(setup_ms, 95),
                         "max": _pct(setup_ms, 100)},
            "max_concurrent": max((p.calls_up for p in result.timeline), default=0),
        },
        "packets": packets,
        "latency_ms": latency,
        "latency_over_time": over_time,
        "jitter_ms": jitter,
        "digits": {
            "keyed": sum(c.digits_keyed for c in calls if c.media_ended),
            "keyed_in_payments": sum(c.digits_keyed for c in paying),
            "captured": sum(c.digits_captured for c in paying),
        },
        "payments": {
            "started": sum(c.payment_status not in ("", "not started") for c in paying),
            "completed": sum(c.payment_status == "complete" and c.token for c in paying),
            "attempted": len(paying),
            "statuses": statuses,
            "errors": sorted({c.payment_error for c in paying if c.payment_error})[:10],
        },
        "leak": leak,
        "target_usage": {
            **_mean_max("cpu_percent", cpu),
            "rss_mb_max": round(max((u[2] for u in usage), default=0) / 2**20, 1),
            # Ready to run but not given a CPU (its threads' run-queue time): the host's share.
            **_mean_max("cpu_wait_percent", wait),
            # Time the hypervisor gave this host's CPUs to others (% of one core, summed over
            # the CPUs): not in the target's CPU nor its run-queue wait, yet the relay falls
            # behind while it lasts. host_busy: every process on the host, the tool included.
            **_mean_max("host_steal_percent", steal),
            **_mean_max("host_busy_percent", host_busy),
            # [t, cpu %, RSS MB, run-queue wait %, host busy %, host steal %]
            "samples": [[round(u[0], 2), round(u[1], 1), round(u[2] / 2**20, 1), round(u[3], 1),
                         *(round(x, 1) for x in u[4:6])] for u in usage],
        },
        "host": result.host,
        "timeline": [[round(p.t, 2), p.calls_up, round(p.sent_pps), round(p.received_pps)]
                     for p in result.timeline],
        "generator": {
            "late_ms_p50": _pct(lateness, 50, 1000), "late_ms_p99": _pct(lateness, 99, 1000),
            "late_ms_max": _pct(lateness, 100, 1000),
            "socket_drops": result.generator_drops, "foreign_arrivals": result.foreign,
            # From each packet's latency stamp to its sendmmsg returning: what the generator's
            # own stalls (CPU, GIL) add to the latency figures; the worst per second.
            "send_ms_p99": _pct(result.send_times[:, 1], 99, 1000),
            "send_ms_max": _pct(result.send_times[:, 1], 100, 1000),
            "send_ms_max_over_time": _worst_per_second(result.send_times),
        },
    }
    summary["verdict"] = verdict(summary)
    summary["notes"] = notes(summary)
    return summary


def _mean_max(name: str, values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    """``<name>_mean`` and ``<name>_max`` of per-sample figures, to 0.1; None without samples."""
    if not values.size:
        return {f"{name}_mean": None, f"{name}_max": None}
    return {f"{name}_mean": round(float(values.mean()), 1),
            f"{name}_max": round(float(values.max()), 1)}


# A target that waited this long for a CPU (mean % of one core) was short of the host's CPU.
CPU_WAIT_NOTE_PERCENT = 20.0
# Steal this high in any sample (% of one core, over the host's CPUs) can stall the relay for
# as long without showing in its CPU or its wait: the figures of those seconds are the host's.
STEAL_NOTE_PERCENT = 20.0


def notes(summary: dict[str, Any]) -> list[str]:
    """What to weigh the figures with (not bounds: they judge the relay, these the host)."""
    out = []
    wait = summary["target_usage"]["cpu_wait_percent_mean"]
    if wait is not None and wait >= CPU_WAIT_NOTE_PERCENT:
        out.append(f"the target waited for a CPU {wait:.0f} % of the time (mean; its threads "
                   f"ran {summary['target_usage']['cpu_percent_mean']} %): the host was short "
                   "of CPU, so latency and loss are the host's as much as the relay's")
    usage = summary["target_usage"]
    steal = usage.get("host_steal_percent_max")
    if steal is not None and steal >= STEAL_NOTE_PERCENT:
        worst = [row[0] for row in usage["samples"]
                 if len(row) > 5 and row[5] >= STEAL_NOTE_PERCENT]
        out.append(f"the host lost up to {steal:.0f} % of a CPU to steal (its hypervisor ran "
                   f"other machines; mean {usage['host_steal_percent_mean']} %), at "
                   f"{worst[0]:.1f}-{worst[-1]:.1f} s into the run: neither the target's CPU "
                   "nor its run-queue wait shows that time, so latency climbing then is the "
                   "host's, not the relay's")
    host = summary.get("host") or {}
    if any(n > 0 for n in host.get("target_nice", [])):
        out.append(f"the target ran at nice {max(host['target_nice'])} (inherited from the "
                   "tool): other work on the host came first")
    late = summary["generator"]["late_ms_p99"]
    if late is not None and late > 20:
        out.append(f"the generator ran late (p99 {late} ms): it sent in bursts, not as phones do")
    return out


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """Bounds from the scenario's [checks]; each broken one is named."""
    checks = summary["scenario"]["checks"]
    problems = []
    calls = summary["calls"]
    if calls["set_up"] < calls["started"]:
        problems.append(f"{calls['started'] - calls['set_up']} calls failed to set up")
    for name, p in summary["packets"].items():
        if p["loss"] > checks["max_loss"]:
            problems.append(f"{name} loss {100 * p['loss']:.3f} % > "
                            f"{100 * checks['max_loss']:.3f} %")
        p99 = summary["latency_ms"][name]["p99"]
        if p99 is not None and p99 > checks["max_p99_ms"]:
            problems.append(f"{name} p99 {p99:.1f} ms > {checks['max_p99_ms']:g} ms")
    leak = summary["leak"]
    leaking = leak["calls_with_leak"] if checks["leak"] == "energy" else \
        leak["calls_with_decoded_leak"]
    if leaking:
        kind = "tone energy or digits" if checks["leak"] == "energy" else "decoded digits"
        problems.append(f"leak ({kind}) on {leaking} of {leak['calls_checked']} calls checked")
    if leak["calls_heard"] < leak["calls_checked"]:
        problems.append(f"{leak['calls_checked'] - leak['calls_heard']} checked calls were "
                        "not heard by the agent (the leak check proves nothing for them)")
    pay = summary["payments"]
    if pay["completed"] < pay["attempted"]:
        problems.append(f"{pay['attempted'] - pay['completed']} of {pay['attempted']} "
                        "payments not completed")
    if summary["partial"]:
        problems.append("partial run (stopped early)")
    return {"ok": not problems, "problems": problems}
