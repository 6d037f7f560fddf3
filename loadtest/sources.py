"""What each simulated phone says, built once per run as one G.711 "bank" of audio.

Why a bank: the media thread must not synthesise audio per packet. Everything a run can send
is encoded once — the caller's speech (espeak-ng, rendered once and cached by
:mod:`loadtest.corpus`) or noise, the agent's quiet noise, and one keying segment per test card
(in-band tones, or the silence a phone sends while it signals RFC 4733 events) — and a call is
a list of offsets into it, one per 20 ms tick. The call's timeline is its RTP timestamp
(tick × 160), so the agent-leg audio a relay returns lines up with the keys that were pressed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dsp import g711, tones
from loadtest.scenario import FIELD_PAUSE_MS, CardsSection, Scenario
from proxy.demo.simulate import TEST_CARDS

SAMPLES = 160  # per 20 ms packet
RATE = 8000
EVENT_PT = 101
EVENT_VOLUME = 10  # -10 dBm0, as phones send
LAWS = {"PCMU": "ulaw", "PCMA": "alaw"}
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
AGENT_NOISE_DBM0 = -50.0  # the agent mostly listens
NOISE_SECONDS = 30


@dataclass(frozen=True)
class EventPacket:
    """One RFC 4733 packet the caller sends at a tick of its keying segment."""

    payload: bytes
    marker: bool
    timestamp: int  # relative to the keying segment's first sample


@dataclass
class Keying:
    """One card keyed: its segment in the bank and what a leak check needs to know."""

    brand: str
    keys: str  # number#expiry#code# — test cards only
    offset: int  # in the bank, samples
    ticks: int
    windows: list[tuple[int, int]]  # each key's tone, samples from the segment's start
    events: dict[int, list[EventPacket]] = field(default_factory=dict)  # by tick

    @property
    def digits(self) -> int:
        """Digits a payment captures from this entry (the #s end fields)."""
        return sum(c.isdigit() for c in self.keys)


@dataclass
class Bank:
    codes: npt.NDArray[np.uint8]  # G.711, the whole bank
    speech: tuple[int, int]  # [start, end) samples of the caller's speech/noise
    agent: tuple[int, int]  # [start, end) of the agent's noise
    keyings: dict[str, Keying]
    codec: str

    def offsets(self, region: tuple[int, int], start: int, ticks: int) -> npt.NDArray[np.int64]:
        """Per tick, where its 160 samples start: ``region`` read from ``start``, wrapping."""
        length = (region[1] - region[0]) // SAMPLES * SAMPLES
        return region[0] + (start + np.arange(ticks, dtype=np.int64) * SAMPLES) % length


def _speech(dbm0: float, seconds: float) -> npt.NDArray[np.float64]:
    """espeak-ng speech (two voices, cached under ~/.cache/toneguard), at ``dbm0``."""
    from loadtest.corpus import CorpusError, espeak_speech  # renders on first use only

    corpus = espeak_speech(("en", "en-us+f2"))
    if not corpus.items:
        raise CorpusError("no espeak-ng speech: " + "; ".join(corpus.failures))
    speech = np.concatenate([m.samples for m in corpus.items])
    # The corpus is rendered at about -20 dBm0.
    return speech[: int(seconds * RATE)] * 10 ** ((dbm0 + 20.0) / 20.0)


def keying_segment(keys: str, cards: CardsSection, inband: bool
                   ) -> tuple[npt.NDArray[np.float64], list[tuple[int, int]]]:
    """The caller keying ``keys`` (fields ended by #): a pause before each field, tones (or
    silence, when the phone signals out of band) and gaps; and each key's tone window."""
    rng = np.random.default_rng(len(keys))
    parts: list[npt.NDArray[np.float64]] = []
    windows: list[tuple[int, int]] = []
    position = 0
    tone_n, gap_n = cards.tone_ms * RATE // 1000, cards.gap_ms * RATE // 1000
    for field_keys in keys.split("#")[:-1]:
        pause = FIELD_PAUSE_MS * RATE // 1000
        parts.append(np.zeros(pause))
        position += pause
        for key in field_keys + "#":
            if inband:
                parts.append(tones.dtmf_tone(key, cards.tone_ms, low_dbm0=cards.low_dbm0,
                                             high_dbm0=cards.low_dbm0 + cards.twist_db))
            else:
                parts.append(np.zeros(tone_n))
            parts.append(np.zeros(gap_n))
            windows.append((position, position + tone_n))
            position += tone_n + gap_n
    audio = np.concatenate(parts)
    # A little line noise, so that the "silence" is not digital zero (-70 dBm0).
    audio += tones.white_noise(audio.size, -70.0, rng)
    pad = -audio.size % SAMPLES
    return np.concatenate([audio, np.zeros(pad)]), windows


def keying_events(keys: str, windows: list[tuple[int, int]]) -> dict[int, list[EventPacket]]:
    """RFC 4733 packets for each key: an update every 20 ms of the tone, the first with the
    marker bit, then three end packets, all with the key's start as timestamp."""
    out: dict[int, list[EventPacket]] = {}
    for key, (start, end) in zip(keys, windows, strict=True):
        code = "0123456789*#ABCD".index(key)
        steps = max(1, (end - start) // SAMPLES)
        first = start // SAMPLES
        for step in range(1, steps + 1):
            payload = struct.pack("!BBH", code, EVENT_VOLUME, step * SAMPLES)
            out.setdefault(first + step - 1, []).append(EventPacket(payload, step == 1, start))
        final = struct.pack("!BBH", code, 0x80 | EVENT_VOLUME, steps * SAMPLES)
        out.setdefault(first + steps - 1, []).extend(
            EventPacket(final, False, start) for _ in range(3))
    return out


def build_bank(scenario: Scenario) -> Bank:
    """Everything the run's phones will send, G.711-encoded once."""
    media, cards = scenario.media, scenario.cards
    rng = np.random.default_rng(scenario.calls.seed)
    speech_seconds = max(60.0, scenario.calls.hold_seconds + 5)
    if media.caller_audio == "speech":
        caller = _speech(media.audio_dbm0, speech_seconds)
    else:
        caller = tones.white_noise(int(speech_seconds * RATE), media.audio_dbm0, rng)
    caller = caller[: caller.size // SAMPLES * SAMPLES]
    agent = tones.white_noise(NOISE_SECONDS * RATE, AGENT_NOISE_DBM0, rng)
    parts = [caller, agent]
    position = caller.size + agent.size
    keyings: dict[str, Keying] = {}
    inband = cards.profile in ("inband", "both")
    for brand in cards.brands:
        number, expiry, code = TEST_CARDS[brand]
        keys = f"{number}#{expiry}#{code}#"
        audio, windows = keying_segment(keys, cards, inband)
        events = keying_events(keys, windows) if cards.profile != "inband" else {}
        keyings[brand] = Keying(brand, keys, position, audio.size // SAMPLES, windows, events)
        parts.append(audio)
        position += audio.size
    samples = np.clip(np.rint(np.concatenate(parts)), -32768, 32767)
    codes = g711.encode(samples.astype(np.int16), LAWS[media.codec])
    return Bank(codes, (0, caller.size), (caller.size, caller.size + agent.size), keyings,
                media.codec)

