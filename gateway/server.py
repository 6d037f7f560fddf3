"""Run the gateway with uvicorn over TLS that requires a client certificate from our CA."""

from __future__ import annotations

import ssl

import uvicorn

from gateway.app import MAX_BODY_BYTES, create_app
from gateway.pki import PkiPaths, check
from gateway.store import TokenStore, load_key


def build_server(paths: PkiPaths, host: str, port: int, *,
                 max_body_bytes: int = MAX_BODY_BYTES) -> uvicorn.Server:
    check(paths)
    store = TokenStore(paths.database, load_key(paths.aes_key))
    config = uvicorn.Config(
        create_app(store, max_body_bytes=max_body_bytes), host=host, port=port,
        log_level="warning",
        ssl_certfile=str(paths.server_cert), ssl_keyfile=str(paths.server_key),
        ssl_ca_certs=str(paths.ca_cert), ssl_cert_reqs=ssl.CERT_REQUIRED,
        access_log=False, lifespan="off",
        # Leave the process's logging alone: gateway.limits.RequestLog writes one line per
        # request (never bodies or headers); uvicorn's own access log prints query strings.
        log_config=None)
    return uvicorn.Server(config)
