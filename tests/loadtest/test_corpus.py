"""The talk-off corpus: real renders from the Debian tools, cached, failures reported not fatal.

Rendering runs against a fresh cache in tmp_path (TONEGUARD_CACHE), so these tests exercise
espeak-ng and fluidsynth for real on small inputs; the full corpus is the talk-off test's job.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from dsp import tones
from dsp.levels import level_dbm0
from loadtest import corpus


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TONEGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "talkoff"


def _one_note_midi(path: Path, seconds_per_note: float = 0.5, notes: int = 4) -> None:
    """A format-0 MIDI file: piano, a few quarter notes at 120 bpm (96 ticks per quarter)."""
    ticks = int(seconds_per_note * 2 * 96)
    track = b"\x00\xc0\x00"  # program change: acoustic grand piano
    for i in range(notes):
        key = 60 + 2 * i
        track += b"\x00" + bytes([0x90, key, 100])  # note on
        track += bytes([0x80 | (ticks >> 7), ticks & 0x7F]) + bytes([0x80, key, 0])  # off
    track += b"\x00\xff\x2f\x00"  # end of track
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96)
                     + b"MTrk" + struct.pack(">I", len(track)) + track)


def test_speech_text_is_seeded_and_full_of_spoken_numbers() -> None:
    text = corpus.speech_text(60.0, seed=3)
    assert text == corpus.speech_text(60.0, seed=3)
    assert text != corpus.speech_text(60.0, seed=4)
    words = text.split()
    assert len(words) >= 60 * 2.6
    numbers = [w for w in words if w.strip(".,?!") in corpus._NUMBER_WORDS or w[0].isdigit()]
    assert len(numbers) >= len(words) // 10


def test_espeak_renders_8_khz_speech_at_telephone_level_and_caches_it(
        fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "SECONDS_PER_VOICE", 8.0)
    first = corpus.espeak_speech(["en-us+f2"])
    assert first.failures == ()
    (item,) = first.items
    assert 4.0 < item.seconds < 30.0
    assert abs(float(level_dbm0(item.samples)) + 20.0) < 1.0  # normalised to about −20 dBm0
    cached = fresh_cache / f"{item.name}.npy"
    assert cached.exists()
    # A second call reads the cache: overwrite it and see the marker come back.
    np.save(cached, np.full(800, 7, dtype=np.int16))
    (again,) = corpus.espeak_speech(["en-us+f2"]).items
    assert again.samples.size == 800 and np.all(again.samples == 7)


def test_a_missing_voice_is_reported_and_the_others_still_render(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "SECONDS_PER_VOICE", 4.0)
    result = corpus.espeak_speech(["de", "xx-no-such-voice"])
    assert [m.name for m in result.items] == ["espeak-de"]
    (failure,) = result.failures
    assert failure.startswith("xx-no-such-voice:")


def test_fluidsynth_renders_midi_at_8_khz_and_a_broken_file_is_reported(tmp_path: Path) -> None:
    midis = tmp_path / "midi"
    midis.mkdir()
    _one_note_midi(midis / "scale.mid", seconds_per_note=0.5, notes=4)
    (midis / "broken.mid").write_bytes(b"not a midi file")
    music = corpus.midi_music(midis)
    assert [m.name for m in music.items] == ["midi-scale"]
    assert len(music.failures) == 1 and music.failures[0].startswith("broken.mid:")
    samples = music.items[0].samples
    assert 1.9 < samples.size / corpus.RATE < 6.0  # 2 s of notes plus the release tail
    assert 19000 <= np.max(np.abs(samples)) <= 20001  # normalised loud
    # Piano C4 is there: most energy well below 4 kHz, fundamental near 261.6 Hz.
    first_note = samples[: corpus.RATE // 2]
    spectrum = np.abs(np.fft.rfft(first_note))
    peak_hz = np.argmax(spectrum) * corpus.RATE / first_note.size
    assert peak_hz == pytest.approx(261.6, abs=6.0) or peak_hz == pytest.approx(523.3, abs=6.0)


def test_codec2_examples_give_minutes_of_real_8_khz_speech_without_modem_frames() -> None:
    speech = corpus.codec2_speech()
    if not corpus.CODEC2_RAW.is_dir():
        assert speech.items == () and speech.failures
        pytest.fail("codec2-examples is not installed")
    names = [m.name for m in speech.items]
    assert names and not any(tag in n for n in names for tag in corpus.CODEC2_NOT_SPEECH)
    assert speech.seconds >= 60.0
    print(f"\ncodec2-examples speech: {len(names)} files, {speech.seconds / 60:.1f} min")


def test_missing_packages_are_reported_as_failures_not_exceptions(tmp_path: Path) -> None:
    assert corpus.midi_music(tmp_path / "none").failures
    assert corpus.codec2_speech(tmp_path / "none").failures


def test_call_progress_tones_cover_every_kind_at_every_level() -> None:
    cp = corpus.call_progress_tones(seconds_each=2.0)
    assert len(cp.items) == len(corpus.CALL_PROGRESS) * len(corpus.CALL_PROGRESS_LEVELS)
    assert cp.seconds == pytest.approx(2.0 * len(cp.items))
    dial = next(m for m in cp.items if m.name == "dial@-15dBm0")
    # Two tones at −15 dBm0 each: −12 dBm0 in total.
    assert float(level_dbm0(dial.samples)) == pytest.approx(-12.0, abs=0.2)


def test_channel_batches_overlap_so_a_tone_on_a_cut_is_whole_in_one_row() -> None:
    x = np.zeros(int(25 * corpus.RATE))
    tone = tones.dtmf_tone("5", 100.0)
    cut = int(9.95 * corpus.RATE)  # straddles the first 10 s boundary
    x[cut:cut + tone.size] = tone
    batch = corpus.as_channels(corpus.Corpus("t", (corpus.Material("x", x),), ()), seconds=10.0,
                               overlap=0.25)
    assert batch.shape[1] == 10 * corpus.RATE
    hop = batch.shape[1] - int(0.25 * corpus.RATE)
    assert batch.shape[0] == int(np.ceil((x.size - 0.25 * corpus.RATE) / hop))
    whole = [r for r in range(batch.shape[0]) if np.count_nonzero(batch[r]) >= tone.size - 2]
    assert whole == [1]
    assert np.array_equal(batch[1][cut - hop:cut - hop + tone.size], tone)


def test_codec2_modem_frames_and_sines_are_offered_as_signals_not_speech() -> None:
    if not corpus.CODEC2_RAW.is_dir():
        pytest.fail("codec2-examples is not installed")
    signals = {m.name for m in corpus.codec2_signals().items}
    speech = {m.name for m in corpus.codec2_speech().items}
    assert signals and not signals & speech
    assert any("datac" in n for n in signals) and any("sine" in n for n in signals)
    everything = {f"codec2-{p.stem}" for p in corpus.CODEC2_RAW.glob("*.raw") if p.stat().st_size}
    assert signals | speech == everything  # all of codec2-examples is used
