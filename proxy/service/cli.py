"""The ``toneguard`` command: one typer app, each subcommand defined in its own module.

Subcommands register here with ``app.command(...)(function)`` so that each module stays
importable and testable on its own.
"""

from __future__ import annotations

import gc
import os
import sys

# The media plane batches its NumPy work per 20 ms tick; multi-threaded BLAS would spin extra
# cores on matrices this small. One thread per process (scale out with processes instead).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import typer  # noqa: E402  (after the thread settings above)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Plain (click-style) help: typer's rich help prints a type column with `<bool>` beside every
# flag, which reads as if the flag took a value. The mode given here applies to every subcommand
# and sub-app, because typer passes the top-level app's mode down when it builds the groups.
app = typer.Typer(
    name="toneguard",
    help="ToneGuard: a secure voice payment proxy (DTMF masking media relay).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _toneguard() -> None:
    """ToneGuard: a secure voice payment proxy (DTMF masking media relay)."""
    # A callback keeps typer in multi-command mode even while only one command is registered.


# --- subcommands: module, attribute, and whether it is a command or a sub-app ---
# Registered when ``main`` runs, and only the one invoked when the command line names one:
# ``toneguard serve`` after a crash must not first import the scanner's, the gateway's and the
# demo's dependencies (FastAPI, SciPy, ...): every one of those milliseconds is media silence on
# the calls the node restores. ``--help`` and anything unrecognised register them all.
SUBCOMMANDS: dict[str, tuple[str, str, bool]] = {
    "scan": ("proxy.service.scan", "scan_command", False),
    "serve": ("proxy.service.serve", "serve_command", False),
    "gateway": ("gateway.cli", "gateway_app", True),
    "demo": ("proxy.demo.command", "demo_command", False),
    "agents": ("proxy.service.agents_cli", "agents_app", True),
}
_registered: set[str] = set()


def register(names: list[str] | None = None) -> None:
    """Add the named subcommands (all when None) to ``app``, each once, in table order."""
    import importlib

    for name, (module, attribute, is_group) in SUBCOMMANDS.items():
        if name in _registered or (names is not None and name not in names):
            continue
        target = getattr(importlib.import_module(module), attribute)
        if is_group:
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
        _registered.add(name)


def invoked(argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs (its first word, the app having no options of its own but
    --help), or None for help or a name that is not a subcommand."""
    if argv and argv[0] in SUBCOMMANDS:
        return argv[0]
    return None


# Load testing is tooling, not product: a pass-through whose body imports the loadtest package
# only when it runs (its options and --help live in loadtest/cli.py).
@app.command("loadtest", add_help_option=False, context_settings={
    "allow_extra_args": True, "ignore_unknown_options": True})
def _loadtest(ctx: typer.Context) -> int:
    """Simulated calls at scale against ToneGuard or rtpengine, with a report (--help)."""
    from loadtest.cli import main as loadtest_main

    return loadtest_main(list(ctx.args))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 findings/failure, 2 usage error).

    ``standalone_mode=False`` hands us the exceptions typer would otherwise print and exit on,
    so that a command's own return value becomes the exit code. Typer vendors its own copy of
    click (``typer._click``): its exceptions are not ``click``'s, so they are caught through the
    public ``typer.TyperException`` base (usage errors carry ``show()`` and exit code 2).
    """
    args = argv if argv is not None else sys.argv[1:]
    name = invoked(args)
    collecting = gc.isenabled()
    if name == "serve":
        # Imports and the restore allocate hundreds of thousands of objects that all live on:
        # the collector's passes over them cost ~20 % of the start-up CPU and find nothing.
        # `serve` collects once and turns it back on as soon as the node is up.
        gc.disable()
        # Media worker processes first: they import the media plane while this process
        # imports the node and reads its config (proxy/media/prespawn.py says why).
        from proxy.media.prespawn import expected_workers, prespawn

        prespawn(expected_workers(args[1:]))
    try:
        register([name] if name is not None else None)
        result = app(args=args, prog_name="toneguard", standalone_mode=False)
    except typer.Exit as exc:  # --help, and commands that exit early
        return exc.exit_code
    except typer.Abort:
        print("toneguard: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("toneguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if callable(show):
            show()  # "Usage: ... Try '... --help'. Error: ...", or the help for a bare command
        else:
            print(f"toneguard: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    finally:
        if collecting:
            gc.enable()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
