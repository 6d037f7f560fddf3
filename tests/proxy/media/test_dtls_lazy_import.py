"""A media worker imports pyOpenSSL and cryptography only with its first DTLS-SRTP leg."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from proxy.media.dtls import NodeCertificate
from tests.conftest import pick_udp_port

ROOT = Path(__file__).resolve().parents[3]

# Run in a fresh interpreter (this one has imported everything): first what a worker process
# imports (proxy.media.workers.worker_main: the engine, the masking pipeline, its runtime),
# then one plain and one DTLS leg configured on a real engine on loopback.
SCRIPT = """
import asyncio, json, sys
import proxy.media.engine, proxy.media.masking, proxy.media.runtime, proxy.media.workers
from proxy.media.engine import LocalMediaEngine
from proxy.media.types import DtlsParams, StreamConfig

TLS = ("OpenSSL", "cryptography")
certificate, key, fingerprint, port = json.loads(sys.stdin.read())
seen = {"worker imports": [m for m in TLS if m in sys.modules]}

async def main():
    engine = LocalMediaEngine("127.0.0.1", port, port + 3)
    await engine.start()
    try:
        await engine.allocate("plain", "c", rtcp_mux=True)
        await engine.configure("plain", StreamConfig(rtcp_mux=True, codecs={0: "PCMU"}))
        seen["after a plain leg"] = [m for m in TLS if m in sys.modules]
        await engine.allocate("webrtc", "c", rtcp_mux=True)
        await engine.configure("webrtc", StreamConfig(rtcp_mux=True, codecs={0: "PCMU"},
            dtls=DtlsParams("server", (("sha-256", fingerprint),), certificate.encode(),
                            key.encode())))
        seen["after a DTLS leg"] = [m for m in TLS if m in sys.modules]
        seen["its session"] = engine._streams["webrtc"].dtls.state.value
    finally:
        await engine.stop()

asyncio.run(main())
print(json.dumps(seen))
"""


def test_a_worker_imports_no_tls_library_until_its_first_dtls_leg() -> None:
    """The worker's own imports and a plain leg leave pyOpenSSL and cryptography unimported
    (about 0.08 s of CPU, README "Many nodes and restarts", saved in every worker that serves
    no WebRTC agent); configuring a DTLS leg imports them and gives the leg its session
    (a server: waiting for the browser's ClientHello)."""
    certificate = NodeCertificate.generate()
    port = pick_udp_port()
    port -= port % 2
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        input=json.dumps([certificate.certificate.decode(), certificate.private_key.decode(),
                          certificate.fingerprint("sha-256"), port]))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"worker imports": [], "after a plain leg": [],
                    "after a DTLS leg": ["OpenSSL", "cryptography"], "its session": "connecting"}
