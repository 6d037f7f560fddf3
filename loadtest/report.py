"""The run's report: ``report.json`` (the figures) and ``report.html``, one self-contained file
(inline CSS and SVG plots, no script, no external resource) that can be mailed and read offline.

Plots: added latency CDF per direction and its p99 over the run, target CPU and calls up over
time, target memory, loss per direction, payments and digits. Everything is drawn from the
JSON summary, so the two never disagree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = ("#1f6fb2", "#d9534f", "#2e8b57", "#8e44ad")
W, H, PAD = 560, 260, 48


def write_report(summary: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
    html_path.write_text(render_html(summary), "utf-8")
    return json_path, html_path


def _e(value: object) -> str:
    return html.escape(str(value))


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for magnitude in range(-3, 9):  # the smallest 1, 2, 2.5, 5 × 10^n at or above value
        for step in (1, 2, 2.5, 5):
            top = step * 10.0 ** magnitude
            if top >= value:
                return top
    return value


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
               x_label: str, y_label: str, *, y_max: float | None = None) -> str:
    """An SVG line chart: each series a polyline, axes with 5 ticks, a legend."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return f'<figure><figcaption>{_e(title)}</figcaption><p class="none">no data</p>' \
               "</figure>"
    x_max = _nice_max(max(x for x, _ in points))
    y_top = y_max if y_max is not None else _nice_max(max(y for _, y in points))
    sx = (W - 2 * PAD) / x_max
    sy = (H - 2 * PAD) / y_top
    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="{_e(title)}">',
             f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" '
             'fill="#fafafa" stroke="#999"/>']
    for i in range(6):
        x = PAD + i * (W - 2 * PAD) / 5
        y = H - PAD - i * (H - 2 * PAD) / 5
        parts.append(f'<line x1="{x:.1f}" y1="{PAD}" x2="{x:.1f}" y2="{H - PAD}" '
                     'stroke="#e4e4e4"/>')
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - PAD}" y2="{y:.1f}" '
                     'stroke="#e4e4e4"/>')
        parts.append(f'<text x="{x:.1f}" y="{H - PAD + 16}" text-anchor="middle">'
                     f'{_fmt(i * x_max / 5)}</text>')
        parts.append(f'<text x="{PAD - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{_fmt(i * y_top / 5)}</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text x="14" y="{H / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {H / 2})">{_e(y_label)}</text>')
    for n, (label, pts) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{PAD + x * sx:.1f},{H - PAD - min(y, y_top) * sy:.1f}"
                        for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{path}"/>')
        parts.append(f'<rect x="{PAD + 10}" y="{PAD + 8 + 16 * n}" width="12" height="4" '
                     f'fill="{colour}"/><text x="{PAD + 28}" y="{PAD + 14 + 16 * n}">'
                     f'{_e(label)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{_e(title)}</figcaption>{''.join(parts)}</figure>"


def bar_chart(title: str, bars: Sequence[tuple[str, float]], unit: str = "") -> str:
    """Horizontal bars with their values written beside them."""
    top = _nice_max(max((v for _, v in bars), default=0))
    row = 28
    height = PAD + row * len(bars) + 10
    label_w = 190
    scale = (W - label_w - 90) / top
    parts = [f'<svg viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" '
             f'aria-label="{_e(title)}">']
    for n, (label, value) in enumerate(bars):
        y = 20 + n * row
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{_e(label)}'
                     "</text>")
        parts.append(f'<rect x="{label_w}" y="{y}" width="{max(value * scale, 1):.1f}" '
                     f'height="18" fill="{COLOURS[n % len(COLOURS)]}"/>')
        parts.append(f'<text x="{label_w + max(value * scale, 1) + 6:.1f}" y="{y + 14}">'
                     f"{_fmt(value)}{_e(unit)}</text>")
    parts.append("</svg>")
    return f"<figure><figcaption>{_e(title)}</figcaption>{''.join(parts)}</figure>"


def _fmt(value: float) -> str:
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.3g}"


def _table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.ok{color:#1e7b34;font-weight:bold} .bad{color:#b52a2a;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0;border:1px solid #ddd;padding:8px}
figcaption{font-weight:600;margin-bottom:4px} svg text{font-size:11px;fill:#333}
table{border-collapse:collapse;margin:4px 0} th,td{border:1px solid #ddd;padding:3px 8px;
text-align:left} th{background:#f3f3f3;font-weight:600} .none{color:#888}
"""


def render_html(s: dict[str, Any]) -> str:
    v = s["verdict"]
    calls, pay, leak, digits = s["calls"], s["payments"], s["leak"], s["digits"]
    lat, pk, gen, usage = s["latency_ms"], s["packets"], s["generator"], s["target_usage"]
    names = {"caller_to_agent": "caller → agent (masked)", "agent_to_caller": "agent → caller"}
    cdf = line_chart("Added one-way latency, CDF",
                     [(names[d], [(ms, q) for ms, q in lat[d]["cdf"]]) for d in names],
                     "latency (ms)", "fraction of packets", y_max=1.0)
    over = line_chart("Added latency over the run (p99 per second of sending)",
                      [(names[d], [(t, p99) for t, _, p99, _ in s["latency_over_time"][d]])
                       for d in names], "seconds into the run", "p99 latency (ms)")
    cpu = line_chart("Target CPU and calls up over time",
                     [("target CPU % (one core = 100)",
                       [(t, c) for t, c, *_ in usage["samples"]]),
                      ("waiting for a CPU %", [(t, w[0]) for t, _, _, *w in usage["samples"]
                                               if w]),
                      *([("host CPUs lost to steal %", [(row[0], row[5]) for row in steal])]
                        if (steal := [row for row in usage["samples"] if len(row) > 5]) else []),
                      ("calls up", [(t, n) for t, n, _, _ in s["timeline"]])],
                     "seconds into the run", "CPU % / calls")
    rss = line_chart("Target memory (RSS)", [("RSS MB", [(t, r) for t, _, r, *_ in
                                                        usage["samples"]])],
                     "seconds into the run", "MB")
    loss = bar_chart("Packets lost per direction",
                     [(names[d], pk[d]["lost"]) for d in names], " packets")
    payments = bar_chart("Payments and digits", [
        ("payments attempted", pay["attempted"]), ("payments started", pay["started"]),
        ("payments completed", pay["completed"]),
        ("digits keyed (payment calls)", digits["keyed_in_payments"]),
        ("digits captured", digits["captured"])])
    status = '<span class="ok">PASS</span>' if v["ok"] else '<span class="bad">FAIL</span>'
    problems = "".join(f"<li>{_e(p)}</li>" for p in v["problems"]) or "<li>none</li>"
    notes = "".join(f"<li>{_e(n)}</li>" for n in s.get("notes", []))
    if notes:
        problems += f'</ul><p>To weigh the figures with:</p><ul id="notes">{notes}'
    host = s.get("host") or {}
    sc = s["scenario"]
    overview = _table([
        ("target", f"{s['target']['kind']} — {s['target']['settings']}"),
        ("scenario", f"{sc['name']}: {sc['description']}"),
        ("calls", f"{calls['set_up']} set up of {calls['planned']} planned "
                  f"({calls['failed']} failed, {calls['not_started']} not started), "
                  f"at most {calls['max_concurrent']} up at once"),
        ("media", f"{sc['media']['codec']}, caller leg {sc['media']['caller_transport']}, "
                  f"agent leg {sc['media']['agent_transport']}, caller audio "
                  f"{sc['media']['caller_audio']}; cards {sc['cards']['profile']}"),
        ("duration", f"{s['duration_seconds']} s"
                     + (" (partial: stopped early)" if s["partial"] else "")),
        ("call set-up (ms)", f"p50 {calls['setup_ms']['p50']}, p95 {calls['setup_ms']['p95']}, "
                             f"max {calls['setup_ms']['max']}"),
    ])
    rows = []
    for d in names:
        rows.append((names[d], f"sent {pk[d]['sent']}, received {pk[d]['received']}, lost "
                     f"{pk[d]['lost']} ({100 * pk[d]['loss']:.3f} %); latency p50 "
                     f"{lat[d]['p50']} / p99 {lat[d]['p99']} / max {lat[d]['max']} ms; "
                     f"jitter mean {s['jitter_ms'][d]['mean']} ms; RFC 4733 events sent "
                     f"{pk[d]['events_sent']}, passed on {pk[d]['events_passed']}"))
    media = _table(rows)
    leaks = _table([
        ("agent legs decoded", f"{leak['calls_checked']} calls "
                               f"({leak['calls_heard']} heard in full)"),
        ("digits found by spandsp", leak["spandsp_digits"]),
        ("digits found by multimon-ng", leak["multimon_digits"]),
        ("DTMF tone energy reaching the agent", f"{leak['tone_ms']} ms"),
        ("RFC 4733 events reaching the agent", leak["events_to_agent"]),
        ("calls with any leak", leak["calls_with_leak"]),
    ])
    generator = _table([
        ("target CPU", f"mean {usage['cpu_percent_mean']} %, max {usage['cpu_percent_max']} %"
                       f", RSS max {usage['rss_mb_max']} MB"),
        ("target waiting for a CPU", f"mean {usage.get('cpu_wait_percent_mean')} %, max "
                                     f"{usage.get('cpu_wait_percent_max')} % (run queue)"),
        ("host CPUs lost to steal", f"mean {usage.get('host_steal_percent_mean')} %, max "
                                    f"{usage.get('host_steal_percent_max')} % (of one core, "
                                    "summed over the CPUs; in neither figure above); all of "
                                    f"the host busy: mean {usage.get('host_busy_percent_mean')}"
                                    f" %, max {usage.get('host_busy_percent_max')} %"),
        ("host", f"{host.get('cpus')} CPUs, load average {host.get('load_start')} at the start, "
                 f"{host.get('load_end')} at the end; target nice {host.get('target_nice')}"),
        ("generator send time", f"p99 {gen.get('send_ms_p99')} ms, max "
                                f"{gen.get('send_ms_max')} ms (latency stamp to sendmmsg "
                                "returning)"),
        ("generator lateness", f"p50 {gen['late_ms_p50']} ms, p99 {gen['late_ms_p99']} ms, "
                               f"max {gen['late_ms_max']} ms"),
        ("generator socket drops", gen["socket_drops"]),
        ("arrivals not matching a packet sent", gen["foreign_arrivals"]),
    ])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ToneGuard load test — {_e(sc['name'])}</title><style>{CSS}</style></head>
<body>
<h1>ToneGuard load test — {_e(sc['name'])} against {_e(s['target']['kind'])}: {status}</h1>
<p>Written {_e(s['written'])} by <code>toneguard loadtest</code>. Figures: report.json beside
this file.</p>
<h2>Verdict</h2><ul id="problems">{problems}</ul>
<h2>Run</h2>{overview}
<h2>Media</h2>{media}
<div class="grid">{cdf}{over}{loss}</div>
<h2>Payments and leaks</h2>
<div class="grid">{payments}<div>{leaks}</div></div>
<h2>Target and generator</h2>{generator}
<div class="grid">{cpu}{rss}</div>
</body></html>
"""
