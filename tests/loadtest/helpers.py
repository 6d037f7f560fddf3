"""A small synthetic run (no network): what the summary and report tests feed in."""

from __future__ import annotations

import numpy as np

from loadtest.media import AGENT, CALLER, StreamStats
from loadtest.runner import CallRecord, RunResult, Snapshot
from loadtest.scenario import parse_scenario
from loadtest.target import NodeAddress, Target


def synthetic_run(*, leak_on: int | None = None, partial: bool = False, lose: bool = False,
                  tone_on: int | None = None, leak: str = "energy") -> RunResult:
    """Four calls of 2 s, two with a completed payment; call ``leak_on`` leaked one digit;
    ``lose``: call 0 lost one packet toward the agent; call ``tone_on`` let 5 ms of tone
    energy through (no digit decoded); ``leak``: checks.leak."""
    scenario = parse_scenario({"name": "synthetic", "calls": {"total": 4, "concurrency": 4,
                                                              "hold_seconds": 9},
                               "checks": {"leak": leak}})
    rng = np.random.default_rng(5)
    calls = []
    for i in range(4):
        rec = CallRecord(i, "visa", payment=i % 2 == 0, record=True, planned_start=0.1 * i,
                         started=0.1 * i, setup_ms=10.0 + i, media_ended=True)
        up = 100 - (lose and i == 0)
        rec.streams = [StreamStats(i, CALLER, sent=100, received=up, jitter_ms=1.0,
                                   latencies=0.05 + 0.01 * rng.random(up),
                                   ticks=np.arange(up), start=0.1 * i),
                       StreamStats(i, AGENT, sent=100, received=100, jitter_ms=0.5,
                                   latencies=0.001 + 0.001 * rng.random(100),
                                   ticks=np.arange(100), start=0.1 * i)]
        rec.digits_keyed = 23
        rec.heard_seconds = rec.sent_seconds = 2.0
        if rec.payment:
            rec.payment_status, rec.token, rec.digits_captured = "complete", True, 23
        if i == leak_on:
            rec.leak_spandsp = "4"
        if i == tone_on:
            rec.leak_ms = 5.0
        calls.append(rec)
    timeline = [Snapshot(t, 4, 4, 0, 0, 400.0, 398.0, 0.0, 12.0) for t in (0.5, 1.0, 1.5)]
    return RunResult(
        scenario, Target("toneguard", [NodeAddress(("127.0.0.1", 2223))],
                         settings="synthetic"), calls,
        duration=2.5, partial=partial, lateness=np.full(100, 0.0002), generator_drops=0,
        foreign=0, usage=[(0.5, 10.0, 50 << 20, 1.0), (1.0, 14.0, 52 << 20, 3.0)],
        timeline=timeline,
        latencies=[np.concatenate([c.streams[side].latencies for c in calls])
                   for side in (CALLER, AGENT)])
