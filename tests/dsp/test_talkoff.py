"""Talk-off: the receiver must not hear digits in speech, music or call-progress tones.

The material is rendered in the test run from Debian packages (loadtest.corpus, cached). A
deliberately weakened receiver runs on the same material as a control: it MUST find false
digits there, which proves the material is hard enough for the zero to mean something.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsp import g711
from dsp.dtmf import DtmfConfig, DtmfDetector
from loadtest import corpus

pytestmark = pytest.mark.talkoff

THIRTY_MINUTES = 30 * 60
# The control: checks that make a receiver robust, loosened (frequency check off, energy share
# and relative peak low, any twist, partial blocks accepted, short tones reported).
WEAKENED = DtmfConfig(
    frequency_tolerance=None, min_energy_share=0.4, relative_peak_db=1.0,
    normal_twist_db=20.0, reverse_twist_db=20.0, max_half_imbalance_db=20.0,
    min_duration_ms=20.0, min_hit_blocks=1, octave_tolerance=None,
)


def false_digits(batch: np.ndarray, config: DtmfConfig | None) -> int:
    """Digits reported anywhere in a (pieces, n) batch, processed in 20 ms ticks of 1 s."""
    detector = DtmfDetector(batch.shape[0], config)
    found = 0
    for start in range(0, batch.shape[1], 8000):
        found += sum(e.kind == "on" for e in detector.process(batch[:, start:start + 8000]).events)
    flush = detector.process(np.zeros((batch.shape[0], 1000)))
    return found + sum(e.kind == "on" for e in flush.events)


@pytest.fixture(scope="module")
def speech() -> corpus.Corpus:
    espeak, real = corpus.espeak_speech(), corpus.codec2_speech()
    return corpus.Corpus("speech", espeak.items + real.items, espeak.failures + real.failures)


@pytest.fixture(scope="module")
def music() -> corpus.Corpus:
    return corpus.midi_music()


def _check(material: corpus.Corpus, law: str, min_seconds: float) -> None:
    assert material.seconds >= min_seconds, (
        f"only {material.seconds / 60:.1f} min of {material.kind}; failures: {material.failures}")
    batch = g711.round_trip(corpus.as_channels(material), law).astype(np.float32)
    default = false_digits(batch, None)
    control = false_digits(batch, WEAKENED)
    print(f"\ntalk-off {material.kind} ({material.seconds / 60:.1f} min, {law}): "
          f"ToneGuard {default} false digits; weakened control {control}")
    assert control > 0, "the weakened control found nothing: the material does not bite"
    assert default == 0


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_no_false_digits_in_30_minutes_of_speech(speech: corpus.Corpus, law: str) -> None:
    _check(speech, law, THIRTY_MINUTES)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_no_false_digits_in_30_minutes_of_music(music: corpus.Corpus, law: str) -> None:
    _check(music, law, THIRTY_MINUTES)


@pytest.fixture(scope="module")
def signals() -> corpus.Corpus:
    tones, modems = corpus.call_progress_tones(), corpus.codec2_signals()
    return corpus.Corpus("call-progress, fax tones and modem signals", tones.items + modems.items,
                         tones.failures + modems.failures)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_no_false_digits_in_call_progress_fax_tones_and_modem_signals(
        signals: corpus.Corpus, law: str) -> None:
    _check(signals, law, 5 * 60)


def false_digits_with_stalls(batch: np.ndarray, config: DtmfConfig | None, share: float,
                             seed: int = 1) -> int:
    """As :func:`false_digits`, in 20 ms ticks, each channel's tick a stall with probability
    ``share``: filler marked held while that channel's audio waits (as the masking pipeline
    feeds a stalled sender's row), so the detector continues whatever key it was in."""
    rng = np.random.default_rng(seed)
    channels, n = batch.shape
    detector = DtmfDetector(channels, config)
    read = np.zeros(channels, dtype=np.int64)
    found = 0
    while (read + 160 <= n).any():
        held = (rng.random(channels) < share) & (read + 160 <= n)
        ticks = np.zeros((channels, 160), dtype=np.float32)
        for ch in np.flatnonzero(~held & (read + 160 <= n)):
            ticks[ch] = batch[ch, read[ch]:read[ch] + 160]
            read[ch] += 160
        found += sum(e.kind == "on" for e in detector.process(ticks, held=held).events)
    flush = detector.process(np.zeros((channels, 1000)))
    return found + sum(e.kind == "on" for e in flush.events)


def test_a_sender_stalling_often_adds_no_false_digits(
        speech: corpus.Corpus, music: corpus.Corpus) -> None:
    """One tick in ten stalls on every channel: the key continued into the filler must never
    make a key of speech or music (the filler is neither duration nor evidence of a key).
    Measured for the README: at one tick in three, music gave 2 false digits in 67 minutes."""
    for material in (speech, music):
        batch = g711.round_trip(corpus.as_channels(material), "ulaw").astype(np.float32)
        default = false_digits_with_stalls(batch, None, 0.1)
        control = false_digits_with_stalls(batch, WEAKENED, 0.1)
        print(f"\ntalk-off with stalls {material.kind}: ToneGuard {default}; control {control}")
        assert control > 0
        assert default == 0
