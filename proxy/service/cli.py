"""The ``toneguard`` command: one typer app, each subcommand defined in its own module.

Subcommands register here with ``app.command(...)(function)`` so that each module stays
importable and testable on its own.
"""

from __future__ import annotations

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


# --- subcommand registrations (one line each) ---
from proxy.service.scan import scan_command  # noqa: E402

app.command("scan")(scan_command)
from proxy.service.serve import serve_command  # noqa: E402

app.command("serve")(serve_command)
from gateway.cli import gateway_app  # noqa: E402

app.add_typer(gateway_app, name="gateway")
from proxy.demo.command import demo_command  # noqa: E402

app.command("demo")(demo_command)
from proxy.service.agents_cli import agents_app  # noqa: E402

app.add_typer(agents_app, name="agents")


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
    try:
        result = app(args=argv if argv is not None else sys.argv[1:], prog_name="toneguard",
                     standalone_mode=False)
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
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
