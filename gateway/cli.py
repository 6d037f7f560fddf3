"""`toneguard gateway init|serve`: the gateway stub's own commands."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.pki import PkiError, PkiPaths, init_pki
from gateway.store import StoreError

if TYPE_CHECKING:
    import uvicorn

MAX_BODY_BYTES = 64 * 1024  # gateway.app.MAX_BODY_BYTES (not imported: keeps the CLI light)

gateway_app = typer.Typer(help="The tokenising payment gateway stub (mutual TLS).",
                          no_args_is_help=True)


@gateway_app.command("init")
def init_command(
    data_dir: Annotated[Path, typer.Option(help="Directory for certificates, key, database.")],
    force: Annotated[bool, typer.Option(help="Replace existing certificates and key.")] = False,
    host: Annotated[list[str] | None, typer.Option(
        "--host", metavar="NAME",
        help="A DNS name or IP address ToneGuard reaches the gateway by, put in the server "
             "certificate (repeat for several; localhost, 127.0.0.1 and ::1 are always "
             "included).")] = None,
) -> int:
    """Create the CA, server and client certificates and the card-encryption key."""
    try:
        paths = init_pki(data_dir, force=force, hosts=tuple(host or ()))
    except PkiError as exc:
        print(f"toneguard gateway init: {exc}")
        return 2
    print(f"gateway data in {paths.root}: CA {paths.ca_cert.name}, server "
          f"{paths.server_cert.name}, ToneGuard's client certificate {paths.client_cert.name}")
    return 0


def _console_log() -> None:
    """One plain line per event on stderr (``toneguard.gateway``), once per process."""
    logger = logging.getLogger("toneguard.gateway")
    if not any(getattr(h, "_toneguard", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s gateway %(message)s"))
        handler._toneguard = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


async def _run(server: uvicorn.Server, url: str) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        logging.getLogger("toneguard.gateway").info(
            "listening on %s (mutual TLS, client certificates from our CA only)", url)
    await task  # uvicorn handles SIGINT/SIGTERM: it stops accepting and finishes requests


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_until_signalled(server: uvicorn.Server, url: str) -> None:
    """uvicorn re-raises the signal it caught once it has shut down; with SIGTERM's default
    action that would kill the process before it could say it stopped."""
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        asyncio.run(_run(server, url))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if server.started:
        logging.getLogger("toneguard.gateway").info("stopped")


@gateway_app.command("serve")
def serve_command(
    data_dir: Annotated[Path, typer.Option(help="Directory made by `gateway init`.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT")] = "127.0.0.1:8443",
    max_body_bytes: Annotated[int, typer.Option(
        help="Larger request bodies are refused (413) unread.")] = MAX_BODY_BYTES,
) -> int:
    """Serve the gateway over HTTPS, requiring a client certificate from the deployment CA."""
    from gateway.server import build_server

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        print(f"toneguard gateway serve: --listen: expected HOST:PORT, got {listen!r}")
        return 2
    if not 1024 <= max_body_bytes <= 16 * 1024 * 1024:
        print("toneguard gateway serve: --max-body-bytes: expected 1024..16777216")
        return 2
    try:
        server = build_server(PkiPaths(data_dir), host.strip("[]"), int(port),
                              max_body_bytes=max_body_bytes)
    except (PkiError, StoreError) as exc:
        print(f"toneguard gateway serve: {exc}")
        return 2
    _console_log()
    _run_until_signalled(server, f"https://{listen}")
    return 0 if server.started else 2
