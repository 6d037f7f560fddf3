"""`toneguard loadtest SCENARIO.toml`: simulated calls at scale, with a report to hand on.

Registered in proxy/service/cli.py as a pass-through: the product imports this package only
when the subcommand runs. Exit codes: 0 = every bound in the scenario's [checks] held;
1 = a bound broke (the report says which); 2 = usage, scenario or target error;
130 = interrupted (Ctrl-C), after writing the partial report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from loadtest.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _hostport(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=flag)
    return host, int(port)


def _counts(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(f"expected N or N,M,..., got {text!r}",
                                 param_hint=flag) from exc


def with_target(scenario: Scenario, *, workers: int | None, nodes: list[int] | None
                ) -> Scenario:
    """The scenario with --workers / --nodes in its [target] (validated as if in the file)."""
    if workers is None and nodes is None:
        return scenario
    data = scenario.model_dump(mode="json")
    if workers is not None:
        data["target"]["workers"] = workers
    if nodes is not None:
        data["target"]["nodes"] = nodes
    return parse_scenario(data, "command line")


@app.command()
def loadtest_command(
    scenario_file: Annotated[Path, typer.Argument(
        metavar="SCENARIO.toml", help="Scenario file (examples: config/loadtest/).")],
    target: Annotated[str, typer.Option(
        metavar="toneguard|rtpengine", help="Relay to test (started on loopback unless --ng)."
    )] = "toneguard",
    ng: Annotated[str | None, typer.Option(
        metavar="HOST:PORT[,HOST:PORT...]", help="Drive a running relay's ng socket instead "
        "(several: calls round robin over them, as Kamailio's rtpengine set).")] = None,
    api: Annotated[str | None, typer.Option(
        metavar="URL[,URL...]", help="Its API, for payments (one, or one per --ng node; keys: "
                                     "TONEGUARD_ADMIN_KEY, TONEGUARD_AGENT_KEY).")] = None,
    workers: Annotated[int | None, typer.Option(
        metavar="N", help="Media workers per started ToneGuard node, rtpengine threads "
                          "(overrides [target] workers; 0 = one per core).")] = None,
    nodes: Annotated[str | None, typer.Option(
        metavar="N[,M...]", help="Started ToneGuard nodes sharing a redis-server; several "
                                 "counts = one run each, compared (overrides [target] nodes)."
    )] = None,
    pid: Annotated[list[int] | None, typer.Option(
        metavar="PID", help="With --ng: process id(s) of the running relay, for CPU and RSS."
    )] = None,
    report: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Where report.json and report.html go "
                            "(default: reports/NAME-TIME).")] = None,
    find_capacity: Annotated[bool, typer.Option(
        "--find-capacity", help="Ramp concurrency per [capacity] until a [checks] bound "
                                "breaks, for each target listed there.")] = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Live display (default: on a terminal).")] = None,
) -> int:
    """Simulated calls at scale (ng, RTP/SRTP, card entry, payments) with a report."""
    if target not in ("toneguard", "rtpengine"):
        print("toneguard loadtest: --target must be toneguard or rtpengine", file=sys.stderr)
        return EXIT_USAGE
    node_counts = _counts(nodes, "--nodes") if nodes is not None else None
    try:
        scenario = with_target(load_scenario(scenario_file), workers=workers,
                               nodes=node_counts)
    except ScenarioError as exc:
        print(f"toneguard loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = report or Path("reports") / f"{scenario.name}-{stamp}"
    running = [_hostport(part, "--ng") for part in ng.split(",")] if ng else None
    apis = api.split(",") if api else []
    if find_capacity:
        from loadtest.capacity import find_capacity as run_capacity

        return asyncio.run(_signalled(lambda stop: run_capacity(
            scenario, directory, stop, progress=progress)))
    counts = scenario.target.nodes
    if running is None and target == "toneguard" and len(counts) > 1:
        from loadtest.capacity import compare_nodes

        return asyncio.run(_signalled(lambda stop: compare_nodes(
            scenario, directory, stop, progress=progress)))
    return asyncio.run(_signalled(lambda stop: run_once(
        scenario, target, directory, stop, running=running, apis=apis, pids=pid or [],
        progress=progress, nodes=counts[0])))


async def _signalled(body: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Ctrl-C / SIGTERM only set the stop Event: the run winds down and writes its report."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await body(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_once(scenario: Scenario, kind: str, directory: Path, stop: asyncio.Event, *,
                   running: list[tuple[str, int]] | None = None, apis: list[str] | None = None,
                   pids: list[int] | None = None, progress: bool | None = None,
                   quiet: bool = False, nodes: int = 1) -> int:
    """One run against one target (``nodes`` ToneGuard nodes when the tool starts it, else
    the ``running`` ones); writes the report; returns the exit code."""
    from loadtest.progress import Progress
    from loadtest.report import write_report
    from loadtest.runner import Runner
    from loadtest.summary import summarise
    from loadtest.target import StartedTarget, TargetError, running_target

    summary = None
    with tempfile.TemporaryDirectory(prefix="toneguard-loadtest-") as tmp:
        started = None
        try:
            if running is not None:
                target = await asyncio.to_thread(running_target, kind, running, apis or [],
                                                 pids or [])
            else:
                started = await asyncio.to_thread(
                    StartedTarget, kind, 4 * scenario.calls.concurrency + 40, Path(tmp),
                    nodes=nodes, workers=scenario.target.workers)
                target = started.target
            if not quiet:
                ngs = ", ".join(f"{n.ng[0]}:{n.ng[1]}" for n in target.nodes)
                print(f"loadtest: {scenario.name} against {target.kind} (ng {ngs}), "
                      f"{scenario.calls.total} calls; {target.settings}", flush=True)
            with Progress(f"{scenario.name} → {target.kind}", scenario.calls.total,
                          live=progress if not quiet else False) as display:
                runner = Runner(scenario, target,
                                on_progress=None if quiet else display.update)
                result = await runner.run(stop)
            summary = summarise(result)
        except TargetError as exc:
            print(f"toneguard loadtest: {exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            if started is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(started.stop)
    json_path, html_path = write_report(summary, directory)
    verdict = summary["verdict"]
    if not quiet:
        print(f"loadtest: {'PASS' if verdict['ok'] else 'FAIL'}"
              + "".join(f"\n  - {p}" for p in verdict["problems"]))
        print(f"loadtest: report {html_path} (figures: {json_path})")
    if summary["partial"]:
        return EXIT_INTERRUPTED
    return EXIT_OK if verdict["ok"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv``; returns its exit code (see the module docstring)."""
    try:
        result = app(args=argv if argv is not None else sys.argv[1:],
                     prog_name="toneguard loadtest", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"toneguard loadtest: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
