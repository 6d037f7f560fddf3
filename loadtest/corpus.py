"""Talk-off material rendered from installed Debian packages, cached, never committed.

* speech: espeak-ng in many voices and languages, reading generated sentences full of spoken
  numbers (what callers say around card entry), plus the real recorded speech that Debian's
  ``codec2-examples`` ships (8 kHz 16-bit raw);
* music: the openMSX MIDI soundtrack (``openttd-openmsx``) rendered by fluidsynth with the
  TimGM6mb General MIDI soundfont;
* call-progress and fax tones at several levels (synthesised: dsp.tones.call_progress), and
  the modem frames and test sines that ``codec2-examples`` also ships.

Everything is 8 kHz float64 at 16-bit scale. Rendering runs in parallel and is cached under
``${TONEGUARD_CACHE:-~/.cache/toneguard}/talkoff/`` so a second run costs nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from dsp import levels, tones

RATE = 8000
CODEC2_RAW = Path("/usr/share/codec2/raw")
# Not speech: modem frames and test sines.
CODEC2_NOT_SPEECH = ("700d", "sine", "test", "datac")
MIDI_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
# espeak-ng voices: several languages, male and female variants, a spread of speeds/pitches.
VOICES = (
    "en", "en-us+f2", "en-gb-x-rp+m3", "de", "de+f3", "fr", "fr+f2", "es", "es+m4", "it+f4",
    "pt", "nl+m2", "pl", "ru+f2", "sv", "cs", "hu", "tr+f3", "el", "fi",
)
SECONDS_PER_VOICE = 110.0  # 20 voices × 110 s ≈ 37 min of synthetic speech
CALL_PROGRESS = ("dial", "ringback", "busy", "reorder", "sit", "cng", "ced")
CALL_PROGRESS_LEVELS = (-5.0, -15.0, -25.0, -35.0)


class CorpusError(RuntimeError):
    """Material could not be rendered (a tool or package is missing)."""


@dataclass(frozen=True)
class Material:
    """One named piece of audio (8 kHz, 16-bit scale)."""

    name: str
    samples: npt.NDArray[np.float64]

    @property
    def seconds(self) -> float:
        return self.samples.size / RATE


@dataclass(frozen=True)
class Corpus:
    """Material of one kind, and what could not be rendered."""

    kind: str
    items: tuple[Material, ...]
    failures: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.items)


def cache_dir() -> Path:
    root = Path(os.environ.get("TONEGUARD_CACHE", Path.home() / ".cache" / "toneguard"))
    path = root / "talkoff"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_wav(path: Path) -> npt.NDArray[np.float64]:
    """16-bit PCM WAV (any rate, any channels) → mono 8 kHz."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise CorpusError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    mono = pcm.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        g = gcd(rate, RATE)
        mono = resample_poly(mono, RATE // g, rate // g)
    return mono


def _cached(name: str, render: Callable[[], npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    path = cache_dir() / f"{name}.npy"
    if path.exists():
        return np.load(path).astype(np.float64)
    samples = np.clip(np.rint(render()), -32768, 32767).astype(np.int16)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, samples)
    tmp.replace(path)  # atomic: a killed run never leaves half a file in the cache
    return samples.astype(np.float64)


# --- speech -----------------------------------------------------------------------------

_WORDS = (
    "account", "number", "card", "payment", "please", "thank", "you", "yes", "no", "sorry",
    "could", "you", "repeat", "that", "again", "my", "name", "is", "the", "balance", "total",
    "amount", "due", "today", "tomorrow", "morning", "afternoon", "reference", "order", "delivery",
    "address", "postcode", "street", "road", "house", "flat", "pounds", "dollars", "euros",
    "cents", "pence", "expiry", "date", "security", "code", "three", "digits", "on", "the", "back",
    "hold", "on", "one", "moment", "let", "me", "find", "it", "okay", "right", "fine", "great",
    "wonderful", "is", "that", "correct", "I", "think", "so", "we", "will", "call", "you", "back",
)
_NUMBER_WORDS = (
    "zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "double",
    "triple",
)


def speech_text(seconds: float, seed: int) -> str:
    """Sentences mixing words, spoken digits and figures: ~2.6 words per second of speech."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    while len(words) < seconds * 2.6:
        sentence = list(rng.choice(_WORDS, size=int(rng.integers(4, 12))))
        if rng.random() < 0.6:
            sentence += list(rng.choice(_NUMBER_WORDS, size=int(rng.integers(2, 8))))
        if rng.random() < 0.5:
            sentence.append(str(int(rng.integers(0, 100_000))))
        words += sentence
        words[-1] += rng.choice([".", "?", ",", "!"])
    return " ".join(words)


def _espeak(voice: str, index: int) -> npt.NDArray[np.float64]:
    if shutil.which("espeak-ng") is None:
        raise CorpusError("espeak-ng is not installed (apt-get install espeak-ng)")
    rng = np.random.default_rng(index)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        out = Path(tmp) / "out.wav"
        text.write_text(speech_text(SECONDS_PER_VOICE, seed=index), encoding="utf-8")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(140, 200))),
             "-p", str(int(rng.integers(30, 75))), "-f", str(text), "-w", str(out)],
            check=True, capture_output=True, timeout=300,
        )
        audio = _read_wav(out)
    # Telephone speech level: about −20 dBm0 on average (plus the peaks of real speech).
    rms = np.sqrt(np.mean(audio**2)) or 1.0
    return audio * (levels.dbm0_to_amplitude(-20.0) / np.sqrt(2) / rms)


def espeak_speech(voices: Iterable[str] = VOICES) -> Corpus:
    voices = list(voices)

    def render(item: tuple[int, str]) -> Material | str:
        i, voice = item
        key = "espeak-" + voice.replace("+", "_")
        try:
            return Material(key, _cached(key, lambda: _espeak(voice, i)))
        except (subprocess.SubprocessError, OSError, CorpusError) as exc:
            return f"{voice}: {exc}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(render, enumerate(voices)))
    return Corpus("speech (espeak-ng)", tuple(r for r in results if isinstance(r, Material)),
                  tuple(r for r in results if isinstance(r, str)))


def codec2_speech(directory: Path = CODEC2_RAW) -> Corpus:
    """Real recorded speech from codec2-examples (8 kHz 16-bit little-endian raw)."""
    if not directory.is_dir():
        return Corpus("speech (codec2-examples)", (), (f"{directory}: not installed",))
    items = []
    for path in sorted(directory.glob("*.raw")):
        if any(tag in path.name for tag in CODEC2_NOT_SPEECH):
            continue
        items.append(Material(f"codec2-{path.stem}",
                              np.fromfile(path, dtype="<i2").astype(np.float64)))
    return Corpus("speech (codec2-examples)", tuple(items), ())


def codec2_signals(directory: Path = CODEC2_RAW) -> Corpus:
    """The rest of codec2-examples: modem frames (700D, DATAC1 OFDM) and spread 1 kHz sines."""
    if not directory.is_dir():
        return Corpus("modem signals (codec2-examples)", (), (f"{directory}: not installed",))
    items = []
    for path in sorted(directory.glob("*.raw")):
        if any(tag in path.name for tag in CODEC2_NOT_SPEECH):
            samples = np.fromfile(path, dtype="<i2").astype(np.float64)
            if samples.size:
                items.append(Material(f"codec2-{path.stem}", samples))
    return Corpus("modem signals (codec2-examples)", tuple(items), ())


# --- music ------------------------------------------------------------------------------

def _fluidsynth(midi: Path) -> npt.NDArray[np.float64]:
    if shutil.which("fluidsynth") is None:
        raise CorpusError("fluidsynth is not installed (apt-get install fluidsynth)")
    if not SOUNDFONT.exists():
        raise CorpusError(f"{SOUNDFONT}: missing (apt-get install timgm6mb-soundfont)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            ["fluidsynth", "-ni", "-g", "0.6", "-F", str(out), "-r", str(RATE),
             str(SOUNDFONT), str(midi)],
            check=True, capture_output=True, timeout=300,
        )
        audio = _read_wav(out)
    peak = np.max(np.abs(audio)) or 1.0
    return audio * (20000.0 / peak)  # loud music: a harder test than quiet music


def midi_music(directory: Path = MIDI_DIR) -> Corpus:
    midis = sorted(directory.glob("*.mid")) if directory.is_dir() else []
    if not midis:
        missing = f"{directory}: no MIDI files (apt-get install openttd-openmsx)"
        return Corpus("music (openMSX MIDI)", (), (missing,))

    def render(midi: Path) -> Material | str:
        key = f"midi-{midi.stem}"
        try:
            return Material(key, _cached(key, lambda: _fluidsynth(midi)))
        except (subprocess.SubprocessError, OSError, CorpusError) as exc:
            return f"{midi.name}: {exc}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(render, midis))
    return Corpus("music (openMSX MIDI)", tuple(r for r in results if isinstance(r, Material)),
                  tuple(r for r in results if isinstance(r, str)))


# --- tones ------------------------------------------------------------------------------

def call_progress_tones(seconds_each: float = 12.0) -> Corpus:
    items = tuple(
        Material(f"{name}@{level:g}dBm0",
                 tones.call_progress(name, seconds_each * 1000.0, dbm0=level))
        for name in CALL_PROGRESS for level in CALL_PROGRESS_LEVELS
    )
    return Corpus("call-progress and fax tones", items, ())


def as_channels(corpus: Corpus, seconds: float = 10.0,
                overlap: float = 0.25) -> npt.NDArray[np.float64]:
    """The corpus cut into overlapping pieces, one per row: a batch for DtmfDetector.

    Pieces overlap by ``overlap`` seconds so a tone on a cut is still seen whole in one piece
    (a false digit in an overlap may be counted twice: the count errs on the safe side).
    """
    n = int(seconds * RATE)
    hop = n - int(overlap * RATE)
    rows = []
    for item in corpus.items:
        x = item.samples
        for start in range(0, max(x.size - int(overlap * RATE), 1), hop):
            piece = np.zeros(n)
            chunk = x[start:start + n]
            piece[: chunk.size] = chunk
            rows.append(piece)
    return np.stack(rows) if rows else np.zeros((0, n))
