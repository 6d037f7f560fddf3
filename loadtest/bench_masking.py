"""Cost of always-on masking: `python -m loadtest.bench_masking [--calls N] [--seconds S]`.

Drives the pipelines directly (no sockets: this isolates what masking adds) with N calls' caller
streams, one 20 ms PCMU packet per call per tick, speech-like noise with a card keyed on every
tenth call. Prints CPU per call against the passthrough pipeline in the same run, and the delay
masking adds to each packet (push → release, in media time).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from dsp import g711, tones  # noqa: E402
from proxy.media.masking import MaskingPipeline  # noqa: E402
from proxy.media.pipeline import AudioPipeline, PassthroughPipeline  # noqa: E402
from proxy.media.policy import MaskingPolicy  # noqa: E402
from proxy.media.rtp import RtpPacket  # noqa: E402

CODECS = {0: "PCMU"}


def _payloads(calls: int, seconds: float) -> list[list[bytes]]:
    rng = np.random.default_rng(1)
    n = int(seconds * 8000) // 160 * 160
    keyed = tones.dtmf_sequence("4111111111111111", tone_ms=60, gap_ms=60, lead_ms=500)[:n]
    base = rng.normal(0, 1200, n)
    out = []
    for c in range(calls):
        audio = np.roll(base, c * 37)
        if c % 10 == 0:
            audio = audio.copy()
            audio[: keyed.size] += keyed
        codes = g711.encode(audio, "ulaw").tobytes()
        out.append([codes[i:i + 160] for i in range(0, n, 160)])
    return out


def run(pipeline: AudioPipeline, payloads: list[list[bytes]]) -> tuple[float, list[float]]:
    calls, ticks = len(payloads), len(payloads[0])
    for c in range(calls):
        pipeline.open(f"s{c}", MaskingPolicy())
    arrived: dict[int, float] = {}  # call 0: timestamp → arrival time
    delays: list[float] = []
    phases = np.random.default_rng(2).uniform(0.0, 0.02, ticks)
    start = time.process_time()
    for t in range(ticks + 10):
        now = t * 0.02  # tick t runs at this time; packets of tick t arrived since tick t-1
        if t < ticks:
            for c in range(calls):
                packet = RtpPacket(0, t, t * 160, c, payload=payloads[c][t])
                pipeline.push(f"s{c}", packet, CODECS, now)
            arrived[t * 160] = now - phases[t]
        for stream, packet in pipeline.tick(now):
            if stream == "s0":
                delays.append((now - arrived[packet.timestamp]) * 1000)
        pipeline.drain_events()
    return time.process_time() - start, delays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    payloads = _payloads(args.calls, args.seconds)
    audio_s = len(payloads[0]) * 0.02
    base_cpu, _ = run(PassthroughPipeline(), payloads)
    mask_cpu, delays = run(MaskingPipeline(lookahead_ms=26), payloads)
    print(f"Masking pipeline, {args.calls} calls × {audio_s:g} s of PCMU, CPU on one core "
          "(BLAS threads = 1)")
    print(f"{'pipeline':28} {'CPU s':>7} {'% of a core':>12} {'µs/packet':>10} "
          f"{'calls per core':>15}")
    packets = args.calls * len(payloads[0])
    for name, cpu in (("passthrough (baseline)", base_cpu), ("always-on masking", mask_cpu)):
        print(f"{name:28} {cpu:7.2f} {100 * cpu / audio_s:11.1f}% {1e6 * cpu / packets:10.1f} "
              f"{args.calls * audio_s / cpu:15,.0f}")
    print(f"masking / passthrough CPU: {mask_cpu / base_cpu:.1f}×")
    d = np.array(delays)
    print(f"added delay per packet (arrival → release; arrivals uniform between ticks): "
          f"median {np.median(d):.0f} ms, "
          f"p95 {np.percentile(d, 95):.0f} ms, max {d.max():.0f} ms "
          f"(look-ahead 26 ms, 12.75 ms blocks, 20 ms ticks)")


if __name__ == "__main__":
    main()
