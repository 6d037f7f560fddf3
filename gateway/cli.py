"""`toneguard gateway init|serve`: the gateway stub's own commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.pki import PkiError, PkiPaths, init_pki
from gateway.store import StoreError

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


@gateway_app.command("serve")
def serve_command(
    data_dir: Annotated[Path, typer.Option(help="Directory made by `gateway init`.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT")] = "127.0.0.1:8443",
) -> int:
    """Serve the gateway over HTTPS, requiring a client certificate from the deployment CA."""
    from gateway.server import build_server

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        print(f"toneguard gateway serve: --listen: expected HOST:PORT, got {listen!r}")
        return 2
    try:
        server = build_server(PkiPaths(data_dir), host.strip("[]"), int(port))
    except (PkiError, StoreError) as exc:
        print(f"toneguard gateway serve: {exc}")
        return 2
    server.run()
    return 0
