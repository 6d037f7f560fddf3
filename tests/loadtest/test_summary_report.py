"""The run summary (JSON) adds up and judges against the scenario's bounds; the HTML report
is one self-contained file drawn from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loadtest.report import write_report
from loadtest.summary import summarise
from tests.loadtest.helpers import synthetic_run


def test_counts_add_up_per_direction() -> None:
    s = summarise(synthetic_run(lose=True))
    up = s["packets"]["caller_to_agent"]
    assert (up["sent"], up["received"], up["lost"]) == (400, 399, 1)
    assert s["latency_ms"]["caller_to_agent"]["count"] == 399
    assert s["calls"]["set_up"] == s["calls"]["planned"] == 4


def test_a_clean_run_passes() -> None:
    assert summarise(synthetic_run())["verdict"] == {"ok": True, "problems": []}


def test_loss_above_the_bound_is_named() -> None:
    assert summarise(synthetic_run(lose=True))["verdict"] == {"ok": False, "problems": [
        "caller_to_agent loss 0.250 % > 0.100 %"]}


def test_a_leaked_digit_fails_the_run_and_is_counted_not_shown() -> None:
    s = summarise(synthetic_run(leak_on=1))
    assert s["leak"]["spandsp_digits"] == 1 and s["leak"]["calls_with_leak"] == 1
    assert "leak (tone energy or digits) on 1 of 4 calls checked" in s["verdict"]["problems"]
    assert '"4"' not in json.dumps(s["leak"])  # a count, never the digit


def test_tone_energy_is_a_leak_unless_the_scenario_counts_decoded_digits_only() -> None:
    strict = summarise(synthetic_run(tone_on=3))
    assert strict["leak"]["calls_with_leak"] == 1 and not strict["verdict"]["ok"]
    lenient = summarise(synthetic_run(tone_on=3, leak="decoded"))
    assert lenient["leak"]["tone_ms"] == 5.0 and lenient["verdict"]["ok"]
    decoded = summarise(synthetic_run(leak_on=3, leak="decoded"))
    assert decoded["verdict"]["problems"] == ["leak (decoded digits) on 1 of 4 calls checked"]


def test_payments_and_digits_are_reported() -> None:
    s = summarise(synthetic_run())
    assert s["payments"]["attempted"] == s["payments"]["completed"] == 2
    assert s["digits"]["captured"] == s["digits"]["keyed_in_payments"] == 46


def test_latency_cdf_runs_from_zero_to_one() -> None:
    cdf = summarise(synthetic_run())["latency_ms"]["caller_to_agent"]["cdf"]
    assert cdf[0][1] == 0.0 and cdf[-1][1] == 1.0
    assert 50 <= cdf[0][0] <= cdf[-1][0] <= 60


def test_a_partial_run_says_so() -> None:
    s = summarise(synthetic_run(partial=True))
    assert s["partial"] is True
    assert "partial run (stopped early)" in s["verdict"]["problems"]


def test_html_is_self_contained_with_its_plots(tmp_path: Path) -> None:
    json_path, html_path = write_report(summarise(synthetic_run()), tmp_path)
    page = html_path.read_text()
    assert json.loads(json_path.read_text())["scenario"]["name"] == "synthetic"
    assert page.count("<svg") == 6  # latency CDF and over time, loss, payments, CPU, RSS
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page
    assert "Added one-way latency, CDF" in page and "caller → agent (masked)" in page


def test_axes_end_at_the_next_round_number() -> None:
    from loadtest.report import _nice_max

    assert [_nice_max(v) for v in (17, 1240, 0.9, 100, 0)] == [20, 2000, 1, 100, 1]


def test_progress_shows_a_live_table_or_plain_lines() -> None:
    import io

    from loadtest.progress import Progress
    from loadtest.runner import Snapshot

    snap = Snapshot(3.0, 12, 15, 2, 1, 1200.0, 1190.0, 0.001, 35.5)
    live = io.StringIO()
    with Progress("smoke → toneguard", 20, stream=live, live=True) as display:
        display.update(snap)
    assert "15/20" in live.getvalue() and "1200" in live.getvalue()  # a table, wrapped at 80
    plain = io.StringIO()
    with Progress("smoke", 20, stream=plain, live=False) as display:
        display.update(snap)
        display.update(Snapshot(3.5, 12, 15, 2, 1, 0, 0, 0, 0))  # within 2 s: not printed
    assert plain.getvalue().count("\n") == 1
    assert "calls up   12  set up 15/20" in plain.getvalue()
    assert "loss 0.100 %  target CPU  35.5 %" in plain.getvalue()


def test_a_target_starved_of_cpu_is_noted_beside_the_verdict_not_in_it() -> None:
    result = synthetic_run()
    assert summarise(result)["notes"] == []
    result.usage = [(0.5, 10.0, 50 << 20, 40.0), (1.0, 14.0, 52 << 20, 60.0)]
    result.host = {"load_start": 7.5, "load_end": 8.0, "cpus": 2, "target_nice": [10]}
    s = summarise(result)
    assert s["verdict"]["ok"]  # the host's shortage is not the relay's failure
    assert s["target_usage"]["cpu_wait_percent_mean"] == 50.0
    assert s["notes"][0].startswith("the target waited for a CPU 50 % of the time")
    assert s["notes"][1].startswith("the target ran at nice 10")


def test_host_steal_is_summarised_and_noted_when_it_could_stall_the_relay(
        tmp_path: Path) -> None:
    # The stall signature: the target below a core and hardly waiting, yet behind; the host's
    # steal is what says where the time went.
    result = synthetic_run()
    result.usage = [(0.5, 70.0, 50 << 20, 1.0, 150.0, 0.0),
                    (1.0, 72.0, 52 << 20, 1.0, 140.0, 35.0),
                    (1.5, 74.0, 52 << 20, 2.0, 145.0, 25.0),
                    (2.0, 60.0, 52 << 20, 1.0, 130.0, 2.0)]
    s = summarise(result)
    usage = s["target_usage"]
    assert usage["host_steal_percent_max"] == 35.0
    assert usage["host_steal_percent_mean"] == 15.5
    assert usage["host_busy_percent_max"] == 150.0
    assert usage["samples"][1] == [1.0, 72.0, 52.0, 1.0, 140.0, 35.0]
    assert s["verdict"]["ok"]  # the host's, not the relay's
    assert s["notes"] == ["the host lost up to 35 % of a CPU to steal (its hypervisor ran other "
                          "machines; mean 15.5 %), at 1.0-1.5 s into the run: neither the "
                          "target's CPU nor its run-queue wait shows that time, so latency "
                          "climbing then is the host's, not the relay's"]
    page = write_report(s, tmp_path)[1].read_text()
    assert "host CPUs lost to steal %" in page  # the CPU chart's series
    assert "mean 15.5 %, max 35.0 % (of one core" in page
    result.usage = [(u[0], u[1], u[2], u[3], u[4], 3.0) for u in result.usage]
    assert summarise(result)["notes"] == []  # a little steal is not worth a note


def test_samples_of_an_older_sampler_have_no_host_figures() -> None:
    result = synthetic_run()  # four fields a sample, as before
    usage = summarise(result)["target_usage"]
    assert usage["host_steal_percent_max"] is None and usage["host_busy_percent_mean"] is None
    assert all(len(row) == 4 for row in usage["samples"])


def test_the_generators_own_send_stalls_are_reported_per_second() -> None:
    import numpy as np

    result = synthetic_run()
    result.send_times = np.array([[0.1, 0.001], [0.5, 0.030], [1.2, 0.002]])
    gen = summarise(result)["generator"]
    assert gen["send_ms_max"] == 30.0
    assert gen["send_ms_max_over_time"] == [[0, 30.0], [1, 2.0]]


def test_the_notes_and_the_host_appear_in_the_html(tmp_path: Path) -> None:
    result = synthetic_run()
    result.usage = [(0.5, 10.0, 50 << 20, 40.0), (1.0, 14.0, 52 << 20, 60.0)]
    result.host = {"load_start": 7.5, "load_end": 8.0, "cpus": 2, "target_nice": [0]}
    page = write_report(summarise(result), tmp_path)[1].read_text()
    assert '<ul id="notes"><li>the target waited for a CPU 50 %' in page
    assert "2 CPUs, load average 7.5 at the start, 8.0 at the end; target nice [0]" in page
    assert "waiting for a CPU %" in page  # the CPU chart's second series
