"""Detector throughput: `python -m loadtest.bench_dtmf [--seconds S] [--channels N ...]`.

Real-time channels per core = channels × seconds of audio ÷ CPU seconds spent, with the detector
fed as the media plane feeds it: one ``process()`` call per 20 ms tick over every channel. BLAS is
pinned to one thread and CPU time (not wall time) is measured, so the figure is per core.

Baselines in the same run: the same detector driven one channel at a time (what batching
buys), and spandsp's C receiver called per channel through ctypes (the incumbent). Then the
suspicion's own price: the batched detector with each ``suspect_method`` (the default long
window, the same before it judged the decoders' own windows and alignments, before its
spandsp tier and short covers, before its decoder tier, and the two rules it replaced), as
CPU time per
second of audio per channel, with ratios to the default.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from dsp import g711, tones  # noqa: E402
from dsp.dtmf import DtmfConfig, DtmfDetector  # noqa: E402

TICK = 160  # 20 ms at 8 kHz
PER_CHANNEL_CHANNELS = 100  # the per-channel baselines are slow; measure on fewer channels


def _audio(channels: int, seconds: float, seed: int = 5) -> npt.NDArray[np.float32]:
    """Speech-like noise on every channel, one card number keyed on every tenth channel."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    audio = rng.normal(0.0, 1500.0, (channels, n)).astype(np.float32)
    keyed = tones.dtmf_sequence("4111111111111111", tone_ms=50, gap_ms=50)[:n]
    audio[::10, : keyed.size] = keyed
    # What a receiver on an RTP path hears: G.711 µ-law decoded to float32.
    return g711.decode(g711.encode(audio, "ulaw"), "ulaw", np.float32)


def _cpu_seconds(run: Callable[[], None]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


# The long window before it judged the decoders' own alignments: the decoder tier on 38.25 ms
# windows at every half block, the spandsp tier on the receiver's blocks, the off-nominal tier.
HALF_BLOCK = replace(DtmfConfig(), window_decoder_windows=2, window_spandsp_alignments=1,
                     window_off_nominal_tolerance=0.0175, window_decoder_max_twist_db=5.0)

# The suspicions compared (issue 16): name, configuration.
SUSPICIONS: tuple[tuple[str, DtmfConfig], ...] = (
    ("window (default: multimon-ng windows, 4 alignments)", DtmfConfig()),
    ("window, half-block windows, off-nominal (before)", HALF_BLOCK),
    ("window, decoder tier, no spandsp tier",
     replace(HALF_BLOCK, window_spandsp_min_energy_share=None, window_decoder_cover_ms=None,
             window_tail_ms=None, follow_tail_ms=None)),
    ("window before (second tier, no decoder tier)",
     replace(HALF_BLOCK, window_decoder_min_energy_share=None,
             window_accurate_frequency_hz=4.0)),
    ("narrowband", replace(DtmfConfig(), suspect_method="narrowband")),
    ("energy_share", replace(DtmfConfig(), suspect_method="energy_share")),
)


def batched(audio: npt.NDArray[np.float32], config: DtmfConfig | None = None) -> float:
    detector = DtmfDetector(audio.shape[0], config)

    def run() -> None:
        for t in range(0, audio.shape[1], TICK):
            detector.process(audio[:, t:t + TICK])

    return _cpu_seconds(run)


def per_channel(audio: npt.NDArray[np.float32]) -> float:
    detectors = [DtmfDetector(1) for _ in range(audio.shape[0])]

    def run() -> None:
        for t in range(0, audio.shape[1], TICK):
            for c, detector in enumerate(detectors):
                detector.process(audio[c:c + 1, t:t + TICK])

    return _cpu_seconds(run)


def spandsp_per_channel(audio: npt.NDArray[np.float32]) -> float | None:
    try:
        from proxy.demo.spandsp import SpandspDtmfReceiver
        receivers = [SpandspDtmfReceiver() for _ in range(audio.shape[0])]
    except (OSError, RuntimeError):
        return None
    pcm = audio.astype(np.int16)

    def run() -> None:
        for t in range(0, pcm.shape[1], TICK):
            for c, rx in enumerate(receivers):
                rx.feed(pcm[c, t:t + TICK])

    return _cpu_seconds(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per channel")
    parser.add_argument("--channels", type=int, nargs="*", default=[1000, 5000, 10000])
    args = parser.parse_args(argv)

    rows: list[tuple[str, int, float]] = []
    for channels in args.channels:
        rows.append(("ToneGuard, batched per tick", channels,
                     batched(_audio(channels, args.seconds))))
    small = _audio(PER_CHANNEL_CHANNELS, args.seconds)
    rows.append(("ToneGuard, one channel at a time", PER_CHANNEL_CHANNELS, per_channel(small)))
    spandsp = spandsp_per_channel(small)
    if spandsp is not None:
        rows.append(("spandsp 0.0.6 (C, ctypes), per channel", PER_CHANNEL_CHANNELS, spandsp))

    print(f"DTMF detector, 20 ms ticks, {args.seconds:g} s of µ-law audio per channel, "
          f"CPU time on one core ({os.cpu_count()} cores present, BLAS threads = 1)")
    print(f"{'receiver':42} {'channels':>8} {'CPU s':>8} {'RT channels/core':>17} {'ratio':>7}")
    baseline = None
    for name, channels, cpu in rows:
        per_core = channels * args.seconds / cpu
        if name.startswith("ToneGuard, one channel"):
            baseline = per_core
    for name, channels, cpu in rows:
        per_core = channels * args.seconds / cpu
        ratio = f"{per_core / baseline:6.1f}×" if baseline else ""
        print(f"{name:42} {channels:8d} {cpu:8.2f} {per_core:17,.0f} {ratio:>7}")
    print("ratio: against ToneGuard's detector driven one channel at a time")

    channels = args.channels[0]
    audio = _audio(channels, args.seconds)
    print(f"\nSuspicion methods, batched, {channels} channels × {args.seconds:g} s "
          "(same audio, same run)")
    print(f"{'suspect_method':46} {'CPU s':>8} {'µs per audio s per channel':>27} {'ratio':>7}")
    timed = [(name, batched(audio, config)) for name, config in SUSPICIONS]
    default = timed[0][1]
    for name, cpu in timed:
        per = cpu / (channels * args.seconds) * 1e6
        print(f"{name:46} {cpu:8.2f} {per:27.1f} {cpu / default:6.2f}×")
    print("ratio: CPU time against the default")


if __name__ == "__main__":
    main()
