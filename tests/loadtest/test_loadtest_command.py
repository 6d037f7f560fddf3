"""`toneguard loadtest` end to end, the target started by the tool: the CI smoke scenario's JSON
is consistent (all calls set up, counts add up, payments complete, nothing leaked), and Ctrl-C
stops a run cleanly with a partial report. No timing assertions: the machine is shared."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.demo.simulate import TEST_CARDS

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "config" / "loadtest" / "smoke.toml"
PEER = pytest.mark.peer  # starts toneguard serve, the gateway stub, spandsp, multimon-ng


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "loadtest", *args, "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _no_card_number_in(directory: Path) -> None:
    for path in directory.iterdir():
        text = path.read_text()
        for number, _, _ in TEST_CARDS.values():
            assert number not in text, f"a card number in {path.name}"


def _counts_add_up(report: dict) -> None:
    for direction, packets in report["packets"].items():
        assert packets["sent"] == packets["received"] + packets["lost"], direction
        assert report["latency_ms"][direction]["count"] == packets["received"], direction
    calls = report["calls"]
    assert calls["planned"] == calls["started"] + calls["not_started"]
    assert calls["started"] == calls["set_up"] + calls["failed"]


@PEER
@pytest.mark.timeout(240)
def test_smoke_scenario_report_is_consistent(tmp_path: Path) -> None:
    proc = subprocess.run(_command(str(SMOKE), "--report", str(tmp_path)), env=_env(),
                          capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").exists()
    calls = report["calls"]
    assert calls["planned"] == calls["set_up"] == calls["media_completed"] == 20
    assert calls["failed"] == 0 and not calls["errors"] and not report["partial"]
    _counts_add_up(report)
    # Media flowed both ways, ten seconds of it per call (minus any loss the relay caused).
    for packets in report["packets"].values():
        assert packets["sent"] == 20 * 500 and packets["received"] > 0
    pay = report["payments"]
    assert pay["attempted"] == pay["started"] == pay["completed"] == 10, pay
    assert report["digits"]["captured"] == report["digits"]["keyed_in_payments"] > 0
    leak = report["leak"]
    assert leak["calls_checked"] == leak["calls_heard"] == 20  # the agent heard every call
    assert leak["spandsp_digits"] == leak["multimon_digits"] == leak["events_to_agent"] == 0
    assert leak["tone_ms"] == 0 and leak["calls_with_leak"] == 0
    assert report["target_usage"]["samples"], "no CPU/RSS samples of the target"
    # Only timing-dependent bounds may fail on a loaded machine.
    assert all("p99" in p or "loss" in p for p in report["verdict"]["problems"]), \
        report["verdict"]
    _no_card_number_in(tmp_path)


@PEER
@pytest.mark.timeout(180)
def test_ctrl_c_stops_cleanly_and_writes_a_partial_report(tmp_path: Path) -> None:
    scenario = tmp_path / "long.toml"
    scenario.write_text('name = "long"\n[calls]\ntotal = 6\nconcurrency = 3\n'
                        'ramp_seconds = 1\nhold_seconds = 30\n[media]\ncaller_audio = "noise"\n'
                        '[payments]\nshare = 0.5\n')
    report_dir = tmp_path / "report"
    proc = subprocess.Popen(_command(str(scenario), "--report", str(report_dir)), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until calls are up and media flows
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            line = proc.stdout.readline() if ready else ""
            if "calls up    3" in line and "received       0 pps" not in line:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        else:
            pytest.fail("no calls up within 90 s")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    report = json.loads((report_dir / "report.json").read_text())
    assert report["partial"] is True
    assert "partial run (stopped early)" in report["verdict"]["problems"]
    assert report["calls"]["set_up"] == 3 and report["calls"]["not_started"] == 3
    assert report["calls"]["media_completed"] == 3  # cut short, and accounted for
    _counts_add_up(report)
    assert 0 < report["packets"]["caller_to_agent"]["sent"] < 3 * 1500
    assert (report_dir / "report.html").exists()
    _no_card_number_in(report_dir)


def test_the_product_cli_does_not_import_the_loadtest_package() -> None:
    code = ("import sys, proxy.service.cli; "
            "print(any(m == 'loadtest' or m.startswith('loadtest.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_help_comes_from_the_loadtest_command(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.service.cli import main

    assert main(["loadtest", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--find-capacity" in out and "SCENARIO.toml" in out


def test_a_bad_scenario_exits_2_naming_the_key(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.service.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[media]\ncodec = "G729"\n')
    assert main(["loadtest", str(bad)]) == 2
    assert "bad.toml: media.codec: Input should be 'PCMU' or 'PCMA'" in capsys.readouterr().err


@PEER
@pytest.mark.timeout(120)
async def test_a_running_node_is_driven_over_ng_and_its_api(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--ng/--api/--pid: someone else's node (here one the tool starts for the test), API
    keys from the environment, CPU read from the given process."""
    import asyncio

    from loadtest.cli import run_once
    from loadtest.scenario import parse_scenario
    from loadtest.target import StartedTarget

    scenario = parse_scenario({"name": "two", "calls": {"total": 2, "concurrency": 2,
                                                        "hold_seconds": 9},
                               "media": {"caller_audio": "noise"}, "payments": {"share": 1}})
    started = await asyncio.to_thread(StartedTarget, "toneguard", 40, tmp_path)
    try:
        t = started.target
        monkeypatch.setenv("TONEGUARD_ADMIN_KEY", t.admin_key)
        monkeypatch.setenv("TONEGUARD_AGENT_KEY", t.agent_key)
        code = await run_once(scenario, "toneguard", tmp_path / "report", asyncio.Event(),
                              running=[t.ng], apis=[t.api], pids=t.pids, progress=False)
    finally:
        await asyncio.to_thread(started.stop)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code in (0, 1)
    assert report["target"]["settings"] == "running target (1 node), driven over ng"
    assert report["payments"]["completed"] == report["payments"]["attempted"] == 2
    assert report["leak"]["calls_with_leak"] == 0 and report["leak"]["calls_heard"] == 2
    assert report["target_usage"]["samples"]
