"""Masking under talk-over: `python -m loadtest.talkover [--quick] [--skip-sweep] [--jobs N]`.

Two measurements (issue 16):

* **The sweep.** A test card keyed in-band (tones at ``--tone-dbm0`` per tone, 50–110 ms, gaps
  50–100 ms) with speech (espeak-ng voices, codec2-examples recordings), music (openMSX MIDI) or
  white noise mixed under it at speech-to-tone ratios from +10 dB to −6 dB — the ratio of the
  interferer's power over the keyed stretch to the power of the two tones together — then a
  G.711 hop (µ-law or A-law); and (unless ``--quick`` or ``--no-mobile``) the same through a
  GSM-FR or AMR-NB round trip (sox) before µ-law, as a mobile caller's keys arrive; and (unless
  ``--off-nominal no``) the G.711 and mobile mixtures again with every key's tones off nominal
  as real phones' are (each tone within ±1.5 %, some exactly on ±1.0 / ±1.5 %, twist −8 to +4 dB:
  ITU-T Q.24), the exact-frequency mixtures staying what they were. Every
  mixture runs through the real :class:`MaskingPipeline` (one pipeline, one stream per
  mixture, 20 ms packets and ticks). spandsp and multimon-ng decode the caller's audio and the
  agent leg (``--jobs``: that many mixtures at a time). The rule: wherever either decodes ≥ 1
  digit from the caller, both decode nothing from the agent leg; each mixture that breaks it is
  named.
* **The cost.** False masking of DTMF-free speech and music — the talk-off corpus
  (loadtest.corpus) through the detector as the pipeline feeds it — as milliseconds masked per
  minute of audio (suspect blocks widened as the pipeline widens them, back over their reach
  and on over the tail the receiver gives, merged) and as 20 ms packets changed per minute,
  for the long-window suspicion (``suspect_method="window"``, the default) and, in the same
  run, for the two it replaced (``"narrowband"`` and ``"energy_share"``).

Everything is seeded; rendered material is cached by loadtest.corpus. Run under ``nice``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from typing import Literal  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from dsp import g711, levels, tones  # noqa: E402
from dsp.dtmf import BLOCK_SIZE, DtmfConfig, DtmfDetector  # noqa: E402
from dsp.masker import merge  # noqa: E402
from loadtest import corpus  # noqa: E402
from proxy.demo.multimon import multimon_detect  # noqa: E402
from proxy.demo.spandsp import spandsp_detect  # noqa: E402
from proxy.media.masking import WIDEN_AFTER, WIDEN_BEFORE, MaskingPipeline  # noqa: E402
from proxy.media.policy import MaskingPolicy  # noqa: E402
from proxy.media.rtp import RtpPacket  # noqa: E402
from proxy.media.types import DigitEvent  # noqa: E402

RATE = 8000
TICK = 160
CARDS = ("4111111111111111", "5555555555554444", "378282246310005")
RATIOS_DB = (10.0, 6.0, 3.0, 0.0, -3.0, -6.0)
LAWS = ("ulaw", "alaw")
PT = {"ulaw": 0, "alaw": 8}
CODECS = {0: "PCMU", 8: "PCMA"}
PACKET_MS = 20.0
MOBILE_CODECS = ("gsm", "amr-nb")  # sox names: GSM-FR, AMR-NB
METHODS: tuple[Literal["window", "narrowband", "energy_share"], ...] = (
    "window", "narrowband", "energy_share")


@dataclass(frozen=True)
class Mixture:
    """One keyed card with an interferer under it, after a G.711 hop."""

    kind: str  # speech | music | noise
    source: str  # material name
    ratio_db: float  # interferer power over the keyed stretch ÷ power of the tone pair
    law: str
    card: str = field(repr=False)  # a test card, but still a PAN: never in a repr
    audio: npt.NDArray[np.float64]  # what the caller sends (8 kHz, 16-bit scale, G.711 grid)
    windows: tuple[tuple[int, int], ...]  # where each key's tones are, [start, end) samples
    under: npt.NDArray[np.float64]  # the interferer alone, as mixed (the decoders' control)
    mobile: str = ""  # "gsm" / "amr-nb": a mobile caller's codec round trip before the G.711 hop
    # Per key (low tone's relative frequency error, high tone's, twist dB = high − low) when
    # the keys are off nominal as real phones' are; () for the exact-frequency keys.
    detune: tuple[tuple[float, float, float], ...] = ()

    @property
    def off_nominal(self) -> bool:
        return bool(self.detune)


@dataclass(frozen=True)
class Outcome:
    mixture: Mixture
    caller_spandsp: str
    caller_multimon: str
    agent_spandsp: str
    agent_multimon: str
    under_digits: int  # digits either decoder finds in the interferer alone (its own talk-off)

    @property
    def audible(self) -> bool:
        """Either decoder hears at least one digit in the caller's own audio."""
        return bool(self.caller_spandsp or self.caller_multimon)

    @property
    def leaked(self) -> bool:
        return bool(self.agent_spandsp or self.agent_multimon)


# Off-nominal keys as real phones send them (ITU-T Q.24): each tone within ±1.5 % of nominal,
# twist (high tone's level − low tone's) from −8 dB (normal: low group louder) to +4 dB
# (reverse). One tone in four sits exactly on a corner (±1.0 % or ±1.5 %): the rest drawn
# uniformly would seldom reach them.
OFF_NOMINAL_MAX = 0.015
OFF_NOMINAL_CORNERS = (-0.015, -0.010, 0.010, 0.015)
TWIST_DB = (-8.0, 4.0)


def detuning(count: int, rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """``count`` keys' (low error, high error, twist dB), drawn as real phones' tones are."""
    out = []
    for _ in range(count):
        errors = []
        for _tone in range(2):
            if rng.random() < 0.25:
                errors.append(float(rng.choice(OFF_NOMINAL_CORNERS)))
            else:
                errors.append(float(rng.uniform(-OFF_NOMINAL_MAX, OFF_NOMINAL_MAX)))
        out.append((errors[0], errors[1], float(rng.uniform(*TWIST_DB))))
    return tuple(out)


def keyed(card: str, tone_dbm0: float, rng: np.random.Generator,
          detune: Sequence[tuple[float, float, float]] = ()
          ) -> tuple[npt.NDArray[np.float64], list[tuple[int, int]]]:
    """The card keyed with 50–110 ms tones and 50–100 ms gaps after a 1 s lead, 0.5 s tail;
    also where each key is. ``detune`` (one per key, see :func:`detuning`) moves the tones off
    nominal and twists them, keeping the pair's power that of two tones at ``tone_dbm0`` (so
    the mixing ratio means the same); it draws nothing from ``rng``, so timing and phases stay
    those of the exact-frequency keys."""
    parts = [np.zeros(RATE)]
    windows = []
    pos = RATE
    for n, key in enumerate(card):
        tone_ms = float(rng.integers(50, 111))
        low_error, high_error, twist = detune[n] if detune else (0.0, 0.0, 0.0)
        # low·(1 + 10^(twist/10)) = 2·tone: the pair's power is unchanged by the twist.
        low_dbm0 = tone_dbm0 + 10.0 * np.log10(2.0 / (1.0 + 10.0 ** (twist / 10.0)))
        tone = tones.dtmf_tone(key, tone_ms, low_dbm0=float(low_dbm0),
                               high_dbm0=float(low_dbm0 + twist), low_error=low_error,
                               high_error=high_error, phase=float(rng.uniform(0, 2 * np.pi)))
        gap = np.zeros(int(rng.integers(50, 101)) * RATE // 1000)
        parts += [tone, gap]
        windows.append((pos, pos + tone.size))
        pos += tone.size + gap.size
    parts.append(np.zeros(RATE // 2))
    return np.concatenate(parts), windows


class SoxError(RuntimeError):
    """sox failed or is missing (apt-get install sox libsox-fmt-all)."""


def mobile_round_trip(x: npt.NDArray[np.float64], codec: str) -> npt.NDArray[np.float64]:
    """``x`` (8 kHz, 16-bit scale) through a mobile codec and back with sox: ``gsm`` (GSM-FR,
    13 kbit/s) or ``amr-nb`` (12.2 kbit/s), as a mobile caller's keys reach the G.711 network."""
    if shutil.which("sox") is None:
        raise SoxError("sox not found (apt-get install sox libsox-fmt-all)")
    raw = ["-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1"]
    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    try:
        encoded = subprocess.run(["sox", *raw, "-", "-t", codec, "-"], input=pcm,
                                 capture_output=True, check=True, timeout=120).stdout
        decoded = subprocess.run(["sox", "-t", codec, "-", *raw, "-"], input=encoded,
                                 capture_output=True, check=True, timeout=120).stdout
    except subprocess.CalledProcessError as exc:
        raise SoxError(f"sox {codec} round trip failed: {exc.stderr[:200]!r}") from exc
    y = np.frombuffer(decoded, "<i2").astype(np.float64)
    out = np.zeros_like(x)
    out[:min(x.size, y.size)] = y[:x.size]
    return out


def mix(kind: str, source: str, interferer: npt.NDArray[np.float64], ratio_db: float,
        law: str, card: str, tone_dbm0: float, seed: int, mobile: str = "",
        detune: Sequence[tuple[float, float, float]] = ()) -> Mixture:
    """``interferer`` scaled to ``ratio_db`` against the tone pair and added under the card
    (through a mobile codec first when ``mobile`` names one; keys off nominal by ``detune``)."""
    rng = np.random.default_rng(seed)
    signal, windows = keyed(card, tone_dbm0, rng, detune)
    start, end = windows[0][0], windows[-1][1]
    if interferer.size < signal.size:
        raise ValueError(f"{source}: {interferer.size} samples, need {signal.size}")
    offset = int(rng.integers(0, interferer.size - signal.size + 1))
    under = interferer[offset:offset + signal.size].astype(np.float64)
    power = float(np.mean(under[start:end] ** 2)) or 1.0
    # Two tones at tone_dbm0 each: the pair's power is twice one tone's.
    target = 2.0 * float(levels.dbm0_to_power(tone_dbm0)) * 10.0 ** (ratio_db / 10.0)
    under = under * np.sqrt(target / power)
    caller = signal + under
    if mobile:
        caller, under = mobile_round_trip(caller, mobile), mobile_round_trip(under, mobile)
    return Mixture(kind, source, ratio_db, law, card,
                   g711.round_trip(caller, law).astype(np.float64), tuple(windows),
                   g711.round_trip(under, law).astype(np.float64), mobile, tuple(detune))


def interferers(quick: bool, seed: int = 16) -> list[tuple[str, str, npt.NDArray[np.float64]]]:
    """(kind, name, samples): speech, music and noise to mix under the cards."""
    voices = ("en", "de+f3", "fr+f2") if quick else corpus.VOICES
    speech = corpus.espeak_speech(voices)
    real = corpus.codec2_speech()
    music = corpus.midi_music()
    out: list[tuple[str, str, npt.NDArray[np.float64]]] = []
    out += [("speech", m.name, m.samples) for m in speech.items]
    long_real = [m for m in real.items if m.seconds >= 4.0]
    out += [("speech", m.name, m.samples) for m in long_real[: 2 if quick else None]]
    out += [("music", m.name, m.samples) for m in music.items[: 3 if quick else None]]
    rng = np.random.default_rng(seed)
    for i in range(1 if quick else 3):
        out.append(("noise", f"white-{i}", rng.normal(0.0, 3000.0, 10 * RATE)))
    return out


def mixtures(quick: bool, tone_dbm0: float = -12.0, seed: int = 16,
             ratios: Sequence[float] = RATIOS_DB, laws: Sequence[str] = LAWS,
             mobile: Sequence[str] = (), off_nominal: bool = False,
             only: Callable[[str, float, str], bool] | None = None) -> list[Mixture]:
    """Every interferer at every ratio in every law; then, for each codec in ``mobile``, the
    same through that codec and µ-law (drawn from their own seed, so the G.711 mixtures stay
    what they were without them). ``only(source, ratio, law)``: render just those (each one
    exactly as in the whole set).

    ``off_nominal``: the same mixtures (same cards, timing, phases, interferer stretch and
    level) with every key's tones off nominal and twisted as real phones' are
    (:func:`detuning`, drawn from a generator of their own, seeded by the mixture: the
    exact-frequency set is untouched, and each off-nominal mixture is its twin's detuned copy)."""
    out = []
    sources = interferers(quick, seed)
    plan = [("", tuple(laws), np.random.default_rng(seed))]
    plan += [(codec, ("ulaw",), np.random.default_rng(seed + 1 + k))
             for k, codec in enumerate(mobile)]
    for codec, laws_now, rng in plan:
        for i, (kind, name, samples) in enumerate(sources):
            for ratio in ratios:
                for law in laws_now:
                    card = CARDS[int(rng.integers(0, len(CARDS)))]
                    if samples.size < 5 * RATE:
                        continue
                    seeded = seed * 1000 + i * 100 + int(rng.integers(0, 1 << 20))
                    if only is not None and not only(name, ratio, codec or law):
                        continue
                    detune = (detuning(len(card), np.random.default_rng([seeded, 124]))
                              if off_nominal else ())
                    out.append(mix(kind, name, samples, ratio, law, card, tone_dbm0,
                                   seed=seeded, mobile=codec, detune=detune))
    return out


def mask(items: Sequence[Mixture], config: DtmfConfig | None = None,
         events: list[DigitEvent] | None = None) -> list[npt.NDArray[np.float64]]:
    """What the agent hears: every mixture through ONE MaskingPipeline as its own stream
    (``config``: the receiver's, swapped in through the pipeline's detector). The digits the
    pipeline reports (stream ``m<i>`` for mixture i) go to ``events`` if given."""
    policy = MaskingPolicy()
    pipeline = MaskingPipeline(lookahead_ms=26, capacity=max(64, len(items)), seed=1)
    if config is not None:
        # The pipeline builds its detector with default settings; a comparison run replaces
        # it (same size, nothing fed yet) before any stream is opened.
        pipeline._detector = DtmfDetector(pipeline._detector.channels, config)
    codes = [g711.encode(m.audio, m.law).tobytes() for m in items]
    for i in range(len(items)):
        pipeline.open(f"m{i}", policy)
    heard = [np.zeros(m.audio.size) for m in items]
    ticks = max(len(c) for c in codes) // TICK
    for t in range(ticks + 10):
        for i, (m, c) in enumerate(zip(items, codes, strict=True)):
            if (t + 1) * TICK <= len(c):
                pipeline.push(f"m{i}", RtpPacket(PT[m.law], t & 0xFFFF, t * TICK, 0x1600 + i,
                                                 payload=c[t * TICK:(t + 1) * TICK]),
                              CODECS, t * 0.02)
        for stream, packet in pipeline.tick(t * 0.02 + 0.013):
            i = int(stream[1:])
            law = items[i].law
            pos = packet.timestamp
            heard[i][pos:pos + TICK] = g711.decode(np.frombuffer(packet.payload, np.uint8), law)
        drained = pipeline.drain_events()
        if events is not None:
            events += drained
    for i in range(len(items)):
        pipeline.close(f"m{i}")
    if events is not None:
        events += pipeline.drain_events()
    return heard


def _decode(m: Mixture, agent: npt.NDArray[np.float64], offset: int = 0) -> Outcome:
    caller, agent = m.audio[offset:], agent[offset:]
    caller_sp, caller_mm = spandsp_detect(caller), multimon_detect(caller)
    agent_sp, agent_mm = spandsp_detect(agent), multimon_detect(agent)
    under = 0
    if agent_sp or agent_mm:  # only then does the control matter
        under = len(spandsp_detect(m.under[offset:])) + len(multimon_detect(m.under[offset:]))
    return Outcome(m, caller_sp, caller_mm, agent_sp, agent_mm, under)


def run_sweep(items: Sequence[Mixture], config: DtmfConfig | None = None,
              jobs: int = 1, decoder_offset: int = 0) -> list[Outcome]:
    """Every mixture through the pipeline, then both decoders on caller and agent leg
    (``jobs`` mixtures decoded at once: multimon-ng runs as a process of its own).
    ``decoder_offset``: the decoders start that many samples into both signals, so their
    blocks and windows fall elsewhere than the receiver's (a real agent's start anywhere)."""
    return decode_all(items, mask(items, config), jobs, decoder_offset)


def decode_all(items: Sequence[Mixture], heard: Sequence[npt.NDArray[np.float64]],
               jobs: int = 1, decoder_offset: int = 0) -> list[Outcome]:
    """Both decoders on every mixture's caller audio and agent leg (``heard``, from
    :func:`mask`), starting ``decoder_offset`` samples in: one masking run serves several
    offsets."""
    offsets = [decoder_offset] * len(items)
    if jobs <= 1:
        return [_decode(m, agent, decoder_offset) for m, agent in zip(items, heard, strict=True)]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(_decode, items, heard, offsets))


def overridden(config: DtmfConfig, settings: Sequence[str]) -> DtmfConfig:
    """``config`` with ``name=value`` settings (Python literals: 8, 0.4, None) applied, for
    measuring a variant of the default (``--set``)."""
    changes = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep or name not in DtmfConfig.__dataclass_fields__:
            raise ValueError(f"--set {setting!r}: expected NAME=VALUE with a DtmfConfig field")
        try:
            changes[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"--set {setting!r}: {text!r} is not a Python literal") from exc
    return replace(config, **changes)


def summarise(outcomes: Iterable[Outcome]) -> str:
    """One row per (kind, ratio, law): mixtures, audible to a decoder, leaked to the agent."""
    rows: dict[tuple[str, float, str], list[Outcome]] = {}
    for o in outcomes:
        path = o.mixture.mobile or o.mixture.law  # a mobile codec, then µ-law
        if o.mixture.off_nominal:
            path += "/off"  # keys off nominal (Q.24 frequency and twist)
        rows.setdefault((o.mixture.kind, o.mixture.ratio_db, path), []).append(o)
    lines = [f"{'interferer':10} {'ratio dB':>8} {'codec':>10} {'mixtures':>8} "
             f"{'caller: spandsp/multimon digits':>32} {'audible':>8} {'leaked':>7} "
             f"{'agent digits':>12}"]
    for (kind, ratio, law), group in sorted(rows.items(), key=lambda r: (r[0][0], -r[0][1],
                                                                          r[0][2])):
        sp = sum(len(o.caller_spandsp) for o in group)
        mm = sum(len(o.caller_multimon) for o in group)
        keyed_total = sum(len(o.mixture.card) for o in group)
        lines.append(f"{kind:10} {ratio:+8.0f} {law:>10} {len(group):8d} "
                     f"{f'{sp}/{mm} of {keyed_total}':>32} "
                     f"{sum(o.audible for o in group):8d} "
                     f"{sum(o.audible and o.leaked for o in group):7d} "
                     f"{sum(len(o.agent_spandsp) + len(o.agent_multimon) for o in group):12d}")
    return "\n".join(lines)


# --- cost: false masking on DTMF-free speech and music ------------------------------------

@dataclass(frozen=True)
class Cost:
    method: str
    minutes: float
    suspect_blocks: int
    blocks: int
    masked_ms: float  # samples masked (widened, merged), in ms
    packets: int  # 20 ms packets with any sample masked

    def per_minute(self) -> tuple[float, float]:
        return self.masked_ms / self.minutes, self.packets * PACKET_MS / self.minutes


def false_masking(batch: npt.NDArray[np.float32], config: DtmfConfig) -> tuple[int, int, float,
                                                                               int]:
    """Suspect blocks in a (pieces, n) batch fed in 20 ms ticks, and what masking them costs:
    samples masked (widened like the pipeline) and 20 ms packets touched."""
    detector = DtmfDetector(batch.shape[0], config)
    flags: list[npt.NDArray[np.bool_]] = []
    reaches: list[npt.NDArray[np.int64]] = []
    tails: list[npt.NDArray[np.int64]] = []
    starts: list[npt.NDArray[np.int64]] = []
    for t in range(0, batch.shape[1], TICK):
        out = detector.process(batch[:, t:t + TICK])
        flags.append(out.suspect)
        reaches.append(out.reach if out.reach is not None else np.zeros_like(out.suspect, int))
        tails.append(out.tail if out.tail is not None
                     else np.full_like(out.suspect, WIDEN_AFTER, int))
        starts.append(out.block_starts)
    suspect = np.concatenate(flags, axis=0)  # (B, pieces)
    reach = np.concatenate(reaches, axis=0)
    tail = np.concatenate(tails, axis=0)
    block_starts = np.concatenate(starts)
    masked = 0
    packets = 0
    n = batch.shape[1]
    for piece in np.flatnonzero(suspect.any(axis=0)):
        flagged = suspect[:, piece]
        spans = merge([(max(0, int(s) - WIDEN_BEFORE - int(r)),
                        min(n, int(s) + BLOCK_SIZE + int(a)))
                       for s, r, a in zip(block_starts[flagged], reach[flagged, piece],
                                          tail[flagged, piece], strict=True)])
        masked += sum(e - s for s, e in spans)
        touched: set[int] = set()
        for s, e in spans:
            touched.update(range(s // TICK, (e - 1) // TICK + 1))
        packets += len(touched)
    return int(suspect.sum()), int(suspect.size), masked * 1000.0 / RATE, packets


def costs(laws: Sequence[str] = LAWS, quick: bool = False,
          settings: Sequence[str] = ()) -> list[tuple[str, str, Cost]]:
    """False masking of the talk-off corpus (speech, music) for every suspicion method
    (``settings``: ``--set`` overrides, applied to each)."""
    speech_a, speech_b = corpus.espeak_speech(), corpus.codec2_speech()
    material = [
        corpus.Corpus("speech", speech_a.items + speech_b.items, ()),
        corpus.midi_music(),
    ]
    out = []
    for mat in material:
        if quick:
            mat = corpus.Corpus(mat.kind, mat.items[:4], ())
        # No overlap: the minutes counted are the minutes of audio.
        pieces = corpus.as_channels(mat, seconds=10.0, overlap=0.0)
        for law in laws:
            batch = g711.round_trip(pieces, law).astype(np.float32)
            minutes = batch.size / RATE / 60.0
            for method in METHODS:
                config = overridden(replace(DtmfConfig(), suspect_method=method), settings)
                flagged, blocks, ms, packets = false_masking(batch, config)
                out.append((mat.kind, law, Cost(method, minutes, flagged, blocks, ms, packets)))
    return out


def print_costs(rows: list[tuple[str, str, Cost]]) -> None:
    print(f"{'material':22} {'law':>5} {'suspicion':>13} {'minutes':>8} {'blocks %':>9} "
          f"{'masked ms/min':>14} {'packets ms/min':>15}")
    for kind, law, cost in rows:
        ms, pk = cost.per_minute()
        print(f"{kind:22} {law:>5} {cost.method:>13} {cost.minutes:8.1f} "
              f"{100.0 * cost.suspect_blocks / cost.blocks:9.4f} {ms:14.2f} {pk:15.2f}")
    by = {(k, law, c.method): c for k, law, c in rows}
    for kind, law, cost in rows:
        if cost.method == METHODS[0]:
            new_ms = cost.per_minute()[0]
            ratios = []
            for before in METHODS[1:]:
                old_ms = by[(kind, law, before)].per_minute()[0]
                ratios.append(f"/ {before} {new_ms / old_ms:.2f}×" if old_ms else "n/a")
            print(f"  {kind}, {law}: masked time {METHODS[0]} " + ", ".join(ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset")
    parser.add_argument("--tone-dbm0", type=float, default=-12.0)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--method", choices=(*METHODS, "all"), default="all",
                        help="suspicion(s) the sweep runs the pipeline with")
    parser.add_argument("--no-mobile", action="store_true",
                        help="leave out the GSM-FR and AMR-NB round trips (they need sox)")
    parser.add_argument("--off-nominal", choices=("also", "only", "no"), default="also",
                        help="the G.711 (and mobile) mixtures again with keys off nominal "
                             "(±1.5 %%, twist)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="mixtures decoded at once (multimon-ng and spandsp)")
    parser.add_argument("--decoder-offset", default="0",
                        help="samples into caller and agent leg where both decoders start "
                             "(51: half a block, so spandsp's blocks straddle the receiver's); "
                             "a comma list (0,25,51,77) decodes one masking run at each")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a DtmfConfig field for every run (repeatable), e.g. "
                             "window_decoder_windows=2")
    args = parser.parse_args(argv)
    offsets = [int(v) for v in str(args.decoder_offset).split(",")]
    failures = 0
    if not args.skip_sweep:
        mobile = () if args.no_mobile or args.quick else MOBILE_CODECS
        items = [] if args.off_nominal == "only" else mixtures(args.quick, args.tone_dbm0,
                                                              mobile=mobile)
        if args.off_nominal != "no":
            items += mixtures(args.quick, args.tone_dbm0, mobile=mobile, off_nominal=True)
        methods = [m for m in METHODS if args.method in ("all", m)]
        for method, offset in [(m, o) for m in methods for o in offsets]:
            start = time.monotonic()
            if offset == offsets[0]:  # one masking run per method, decoded at every offset
                heard = mask(items, overridden(replace(DtmfConfig(), suspect_method=method),
                                               args.set))
            outcomes = decode_all(items, heard, args.jobs, offset)
            print(f"Talk-over sweep, suspicion {method}: {len(items)} mixtures, tones at "
                  f"{args.tone_dbm0:g} dBm0 each, decoders from sample {offset}, "
                  f"{time.monotonic() - start:.0f} s")
            print(summarise(outcomes))
            for label, group in (
                    ("G.711", [o for o in outcomes
                               if not o.mixture.mobile and not o.mixture.off_nominal]),
                    ("G.711, keys off nominal", [o for o in outcomes if o.mixture.off_nominal
                                                 and not o.mixture.mobile]),
                    ("GSM-FR/AMR-NB", [o for o in outcomes
                                       if o.mixture.mobile and not o.mixture.off_nominal]),
                    ("GSM-FR/AMR-NB, keys off nominal",
                     [o for o in outcomes if o.mixture.mobile and o.mixture.off_nominal])):
                if not group:
                    continue
                leaky = [o for o in group if o.audible and o.leaked]
                sp = sum(len(o.agent_spandsp) for o in leaky)
                mm = sum(len(o.agent_multimon) for o in leaky)
                print(f"  {label}: {len(leaky)} of {sum(o.audible for o in group)} audible "
                      f"mixtures leak a digit to the agent ({sp + mm} digits, spandsp {sp} / "
                      f"multimon-ng {mm}; {sum(o.under_digits > 0 for o in leaky)} of them: "
                      "the decoders also find digits in the interferer alone)")
                for o in leaky:  # which, so a strict xfail can name them (never the card)
                    x = o.mixture
                    print(f"    leak: {x.kind} {x.source} {x.ratio_db:+.0f} dB "
                          f"{x.mobile or x.law}{' off-nominal' if x.off_nominal else ''}: "
                          f"spandsp {len(o.agent_spandsp)}, multimon-ng {len(o.agent_multimon)}")
                if method == METHODS[0]:
                    failures += len(leaky)
    if not args.skip_cost:
        print("False masking of DTMF-free talk-off material (suspect blocks widened "
              f"{WIDEN_BEFORE} samples back and over their reach, on over the receiver's tail "
              f"or {WIDEN_AFTER} samples, as the pipeline does):")
        print_costs(costs(quick=args.quick, settings=args.set))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
