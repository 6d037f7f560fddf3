"""Run the gateway with uvicorn over TLS that requires a client certificate from our CA."""

from __future__ import annotations

import ssl

import uvicorn

from gateway.app import create_app
from gateway.pki import PkiPaths, check
from gateway.store import TokenStore, load_key


def build_server(paths: PkiPaths, host: str, port: int) -> uvicorn.Server:
    check(paths)
    store = TokenStore(paths.database, load_key(paths.aes_key))
    config = uvicorn.Config(
        create_app(store), host=host, port=port, log_level="warning",
        ssl_certfile=str(paths.server_cert), ssl_keyfile=str(paths.server_key),
        ssl_ca_certs=str(paths.ca_cert), ssl_cert_reqs=ssl.CERT_REQUIRED,
        access_log=False, lifespan="off",
        log_config=None)  # leave the process's logging alone (no request bodies are logged)
    return uvicorn.Server(config)
