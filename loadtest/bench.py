"""Run every benchmark in turn and print their tables: `python -m loadtest.bench [NAME...]`.

Each benchmark is its own module (so one can be run alone) and its own process (so one
benchmark's warm caches, threads or worker processes never colour the next one's figures).
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS: dict[str, str] = {
    "dtmf": "loadtest.bench_dtmf",  # detector: real-time channels per core vs a naive loop
    "relay": "loadtest.bench_relay",  # media relay: packets/s and CPU vs rtpengine
    "masking": "loadtest.bench_masking",  # always-on masking cost vs passthrough
    "restart": "loadtest.bench_restart",  # media gap after kill -9 + restart, Redis ops/call
}


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"loadtest.bench: unknown benchmark {', '.join(unknown)}; "
              f"choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== {name} ({BENCHMARKS[name]}) ===", flush=True)
        if subprocess.run([sys.executable, "-m", BENCHMARKS[name]], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"loadtest.bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
