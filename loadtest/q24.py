"""The ITU-T Q.24 / Mitel CM7291 receiver tests, run against any DTMF receiver.

A receiver is a *detector adapter*: ``Callable[[np.ndarray], str]`` taking 1-D 8 kHz 16-bit audio
and returning the keys it found. Each test builds its signals synthetically (after spandsp's
tests/dtmf_rx_tests.c, which follows the Mitel tape), passes them through a G.711 round trip
(µ-law or A-law: what a receiver on an RTP path actually hears), and returns a :class:`Q24Result`
with the criterion, whether it passed and the figure measured.

``python -m loadtest.q24`` prints ToneGuard and spandsp side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dsp import g711, tones
from dsp.dtmf import digits_in

Adapter = Callable[[npt.NDArray[np.int16]], str]
KEYS = tones.DIGITS  # all 16 keys
LAWS = ("ulaw", "alaw")
_PAD_MS = 60.0
_BLOCK_PHASES = 8  # alignments tried per duration in the guard-time test


@dataclass(frozen=True)
class Q24Result:
    name: str
    criterion: str
    passed: bool
    figure: str  # what was measured, for the table


def toneguard_adapter(samples: npt.NDArray[np.int16]) -> str:
    return digits_in(samples)


def spandsp_adapter(samples: npt.NDArray[np.int16]) -> str:
    from proxy.demo.spandsp import spandsp_detect  # needs libspandsp2

    return spandsp_detect(samples)


def _padded(signal: npt.NDArray[np.float64], lead_ms: float = _PAD_MS) -> npt.NDArray:
    return np.concatenate([tones.silence(lead_ms), signal, tones.silence(_PAD_MS)])


def _hear(adapter: Adapter, signal: npt.NDArray[np.float64], law: str) -> str:
    return adapter(g711.round_trip(signal, law))


def _all_keys(adapter: Adapter, law: str, **tone_kwargs: Any) -> bool:
    """All 16 keys, 50 ms on / 50 ms off, decoded exactly."""
    signal = tones.dtmf_sequence(KEYS, tone_ms=50, gap_ms=50, lead_ms=_PAD_MS,
                                 tail_ms=_PAD_MS, **tone_kwargs)
    return _hear(adapter, signal, law) == KEYS


def decode_all(adapter: Adapter, law: str) -> Q24Result:
    """160 digits: each key 10 times at levels from −4 to −31 dBm0 per tone."""
    correct = 0
    for rep, level in enumerate(np.linspace(-4.0, -31.0, 10)):
        keys = KEYS[rep:] + KEYS[:rep]  # a different neighbour for each key each time
        signal = tones.dtmf_sequence(keys, tone_ms=50, gap_ms=50, lead_ms=_PAD_MS,
                                     tail_ms=_PAD_MS, low_dbm0=float(level))
        heard = _hear(adapter, signal, law)
        correct += sum(a == b for a, b in zip(heard, keys, strict=False)) if len(heard) == 16 else 0
    return Q24Result("decode 16 keys × 10", "160/160 exact", correct == 160, f"{correct}/160")


def _max_twist(adapter: Adapter, law: str, reverse: bool) -> float:
    """Largest twist (0.5 dB steps) at which all 16 keys still decode; strong tone −8 dBm0."""
    accepted = -1.0
    for twist in np.arange(0.0, 16.5, 0.5):
        strong, weak = -8.0, -8.0 - float(twist)
        low, high = (weak, strong) if reverse else (strong, weak)
        if not _all_keys(adapter, law, low_dbm0=low, high_dbm0=high):
            break
        accepted = float(twist)
    return accepted


def twist(adapter: Adapter, law: str) -> list[Q24Result]:
    normal = _max_twist(adapter, law, reverse=False)
    reverse = _max_twist(adapter, law, reverse=True)
    return [
        Q24Result("normal twist (low louder)", "≥ 8 dB accepted", normal >= 8.0,
                  f"{normal:.1f} dB"),
        Q24Result("reverse twist (high louder)", "≥ 4 dB accepted", reverse >= 4.0,
                  f"{reverse:.1f} dB"),
    ]


def dynamic_range(adapter: Adapter, law: str) -> list[Q24Result]:
    """Levels per tone from 0 dBm0 down in 1 dB steps; the contiguous accepted span."""
    accepted = [lvl for lvl in range(0, -61, -1)
                if _all_keys(adapter, law, low_dbm0=float(lvl))]
    top = accepted[0] if accepted else None
    bottom = top
    for lvl in accepted[1:]:
        if bottom is not None and lvl == bottom - 1:
            bottom = lvl
    span = 0 if top is None or bottom is None else top - bottom
    quiet = tones.dtmf_sequence(KEYS, tone_ms=50, gap_ms=50, lead_ms=_PAD_MS, tail_ms=_PAD_MS,
                                low_dbm0=-55.0)
    rejected = _hear(adapter, quiet, law) == ""
    return [
        Q24Result("dynamic range", "≥ 45 dB", span >= 45,
                  f"{span} dB ({top} … {bottom} dBm0)" if top is not None else "none"),
        Q24Result("−55 dBm0 rejected", "no digit", rejected, "none" if rejected else "digits"),
    ]


def _reported_fraction(adapter: Adapter, law: str, duration_ms: float) -> float:
    """Share of trials (keys × alignments) in which a tone of ``duration_ms`` is reported."""
    reported = 0
    trials = 0
    for i, key in enumerate(KEYS[:: 2]):
        for phase in range(_BLOCK_PHASES):
            lead = _PAD_MS + (i * _BLOCK_PHASES + phase) * 12.75 / _BLOCK_PHASES
            signal = _padded(tones.dtmf_tone(key, duration_ms, low_dbm0=-10.0), lead)
            reported += _hear(adapter, signal, law) == key
            trials += 1
    return reported / trials


def guard_time(adapter: Adapter, law: str) -> list[Q24Result]:
    """Tones ≤ 23 ms never reported, ≥ 40 ms always, at every alignment."""
    never = [d for d in (10, 15, 20, 23) if _reported_fraction(adapter, law, d) > 0]
    always = [d for d in (40, 45, 50) if _reported_fraction(adapter, law, d) < 1]
    sweep = {d: _reported_fraction(adapter, law, d) for d in range(24, 40, 2)}
    shortest_always = min((d for d, f in sweep.items() if f == 1.0), default=None)
    longest_never = max((d for d, f in sweep.items() if f == 0.0), default=None)
    figure = (f"never ≤{longest_never or 23} ms, always ≥{shortest_always or 40} ms"
              if not never and not always else
              f"reported at {never} ms; missed at {always} ms")
    return [Q24Result("guard time", "≤ 23 ms never, ≥ 40 ms always", not never and not always,
                      figure)]


def _accepts(adapter: Adapter, law: str, tone_index: int, error: float) -> bool:
    """Do all 4 keys containing tone ``tone_index`` (0–3 low, 4–7 high) decode at ``error``?"""
    if tone_index < 4:
        keys = KEYS[tone_index * 4: tone_index * 4 + 4]
        kwargs: dict[str, Any] = {"low_error": error}
    else:
        keys = KEYS[tone_index - 4:: 4]
        kwargs = {"high_error": error}
    signal = tones.dtmf_sequence(keys, tone_ms=60, gap_ms=60, lead_ms=_PAD_MS, tail_ms=_PAD_MS,
                                 low_dbm0=-10.0, **kwargs)
    return _hear(adapter, signal, law) == keys


def bandwidth(adapter: Adapter, law: str) -> list[Q24Result]:
    """±1.5 % accepted and ±3.5 % rejected, every one of the 8 tones, both directions."""
    freqs = tones.LOW_FREQS + tones.HIGH_FREQS
    accept_fail = [f"{freqs[t]:.0f}{'+' if e > 0 else '−'}" for t in range(8)
                   for e in (-0.015, 0.015) if not _accepts(adapter, law, t, e)]
    reject_fail = [f"{freqs[t]:.0f}{'+' if e > 0 else '−'}" for t in range(8)
                   for e in (-0.035, 0.035) if _accepts(adapter, law, t, e)]
    return [
        Q24Result("bandwidth ±1.5 % accepted", "8 tones × ±", not accept_fail,
                  "all" if not accept_fail else "fails " + " ".join(accept_fail)),
        Q24Result("bandwidth ±3.5 % rejected", "8 tones × ±", not reject_fail,
                  "all" if not reject_fail else "accepts " + " ".join(reject_fail)),
    ]


def _band_noise_scale(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """White noise whose power in the 300–3400 Hz band is 0 dBm0 (Mitel's S/N definition)."""
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / tones.SAMPLE_RATE)
    band = (freqs >= 300) & (freqs <= 3400)
    band_power = 2 * np.sum(np.abs(spectrum[band]) ** 2) / n**2
    from dsp.levels import DBM0_POWER

    return noise * np.sqrt(DBM0_POWER / band_power)


def noise(adapter: Adapter, law: str, snr_db: Iterable[float] = (10.0,)) -> list[Q24Result]:
    """160 digits with white noise, each tone ``snr`` dB above the noise in 300–3400 Hz."""
    rng = np.random.default_rng(24)
    results = []
    for snr in snr_db:
        correct = 0
        for rep in range(10):
            keys = KEYS[rep:] + KEYS[:rep]
            signal = tones.dtmf_sequence(keys, tone_ms=50, gap_ms=50, lead_ms=_PAD_MS,
                                         tail_ms=_PAD_MS, low_dbm0=-15.0)
            signal = signal + _band_noise_scale(signal.size, rng) * 10 ** ((-15.0 - snr) / 20)
            heard = _hear(adapter, signal, law)
            correct += sum(map(str.__eq__, heard, keys)) if len(heard) == 16 else 0
        results.append(Q24Result(f"S/N {snr:g} dB (white noise)", "160/160", correct == 160,
                                 f"{correct}/160"))
    return results


def interdigit(adapter: Adapter, law: str) -> list[Q24Result]:
    """30 ms gaps separate two digits (same or different keys); 10 ms dropouts are bridged."""
    gap_ok = 0
    gap_trials = 0
    for phase in range(_BLOCK_PHASES):
        lead = _PAD_MS + phase * 12.75 / _BLOCK_PHASES
        for keys in ("11", "55", "##", "12", "9D"):
            signal = tones.dtmf_sequence(keys, tone_ms=40, gap_ms=30, lead_ms=lead,
                                         tail_ms=_PAD_MS, low_dbm0=-10.0)
            gap_ok += _hear(adapter, signal, law) == keys
            gap_trials += 1
    drop_ok = 0
    drop_trials = 0
    for i, at_ms in enumerate(np.linspace(20, 70, 2 * _BLOCK_PHASES)):
        key = KEYS[i % 16]
        tone = tones.dtmf_tone(key, 100.0, low_dbm0=-10.0)
        start = int(at_ms * 8)
        tone[start:start + 80] = 0.0  # a 10 ms dropout
        drop_ok += _hear(adapter, _padded(tone), law) == key
        drop_trials += 1
    return [
        Q24Result("30 ms inter-digit gap", "two digits", gap_ok == gap_trials,
                  f"{gap_ok}/{gap_trials}"),
        Q24Result("10 ms dropout", "one digit", drop_ok == drop_trials,
                  f"{drop_ok}/{drop_trials}"),
    ]


def run_all(adapter: Adapter, law: str) -> list[Q24Result]:
    """Every test above, in table order."""
    return [
        decode_all(adapter, law),
        *twist(adapter, law),
        *dynamic_range(adapter, law),
        *guard_time(adapter, law),
        *bandwidth(adapter, law),
        *noise(adapter, law),
        *interdigit(adapter, law),
    ]


def main(argv: list[str] | None = None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    columns = {
        (name, law): run_all(adapter, law)
        for name, adapter in (("ToneGuard", toneguard_adapter), ("spandsp 0.0.6", spandsp_adapter))
        for law in LAWS
    }
    headers = ["test", "criterion"] + [f"{name} {'µ' if law == 'ulaw' else 'A'}-law"
                                       for name, law in columns]
    first = next(iter(columns.values()))
    rows = [[result.name, result.criterion]
            + [f"{'pass' if r[i].passed else 'FAIL'} {r[i].figure}" for r in columns.values()]
            for i, result in enumerate(first)]
    if "--markdown" in (argv if argv is not None else sys.argv[1:]):
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    table = Table(title="ITU-T Q.24 / Mitel receiver tests after G.711 (8 kHz)")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row[:2], *(f"[{'green' if c.startswith('pass') else 'red'}]{c}[/]"
                                  for c in row[2:]))
    Console().print(table)


if __name__ == "__main__":
    main()
