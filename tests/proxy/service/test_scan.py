"""`toneguard scan`: DTMF found in WAV recordings of every supported kind, errors per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from dsp import tones
from proxy.service.cli import main
from proxy.service.scan import scan_file
from proxy.service.wav import MAX_CHUNK_BYTES, read_frames, write_wav


def _keyed(keys: str, lead_ms: float = 300.0) -> np.ndarray:
    return tones.dtmf_sequence(keys, tone_ms=70, gap_ms=80, lead_ms=lead_ms, tail_ms=200,
                               low_dbm0=-12.0)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("codec", ["pcm16", "ulaw", "alaw"])
def test_finds_digits_with_times_and_levels_in_8_khz_files(tmp_path: Path, codec: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / f"call-{codec}.wav"
    write_wav(path, _keyed("4#7"), codec=codec)
    assert main(["scan", "--json", str(path)]) == 0
    found = _json_lines(capsys.readouterr().out)
    assert [f["digit"] for f in found] == ["4", "#", "7"]
    first = found[0]
    assert set(first) == {"file", "channel", "digit", "start_ms", "end_ms", "low_dbm0",
                          "high_dbm0"}
    assert first["file"] == str(path) and first["channel"] == 0
    assert abs(first["start_ms"] - 300) <= 10 and abs(first["end_ms"] - 370) <= 10
    assert abs(first["low_dbm0"] + 12) <= 1.5 and abs(first["high_dbm0"] + 12) <= 1.5


def test_stereo_16_khz_pcm_reports_digits_on_the_channel_that_has_them(tmp_path: Path) -> None:
    caller = resample_poly(_keyed("59"), 2, 1)
    agent = np.zeros_like(caller)
    path = tmp_path / "stereo16k.wav"
    write_wav(path, np.stack([agent, caller]), rate=16000)
    found = scan_file(path)
    assert [(f.channel, f.digit) for f in found] == [(1, "5"), (1, "9")]


def test_extensible_format_and_44_1_khz_are_read(tmp_path: Path) -> None:
    signal = resample_poly(_keyed("*0"), 441, 80)
    path = tmp_path / "ext.wav"
    write_wav(path, signal, rate=44100, extensible=True)
    assert [f.digit for f in scan_file(path)] == ["*", "0"]


def test_long_file_is_scanned_in_chunks_with_digits_across_chunk_seams(tmp_path: Path) -> None:
    # 45 s, digits placed every ~4.5 s, so several straddle the reader's 5 s chunk boundaries.
    rng = np.random.default_rng(3)
    signal = tones.white_noise(8000 * 45, -40.0, rng)
    keys = "123456789"
    for i, key in enumerate(keys):
        start = int((4.97 + 4.5 * i) * 8000)
        tone = tones.dtmf_tone(key, 80, low_dbm0=-10.0)
        signal[start:start + tone.size] += tone
    path = tmp_path / "long.wav"
    write_wav(path, signal, codec="ulaw")
    assert "".join(f.digit for f in scan_file(path)) == keys


def test_fail_on_digits_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean = tmp_path / "clean.wav"
    dirty = tmp_path / "dirty.wav"
    write_wav(clean, tones.white_noise(8000, -30.0, np.random.default_rng(1)))
    write_wav(dirty, _keyed("1"))
    assert main(["scan", "--fail-on-digits", str(clean)]) == 0
    assert main(["scan", "--fail-on-digits", str(clean), str(dirty)]) == 1
    assert main(["scan", str(dirty)]) == 0  # without the flag, finding digits is not failure
    capsys.readouterr()


def test_bad_files_get_clear_errors_and_do_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = tmp_path / "good.wav"
    write_wav(good, _keyed("8"))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:2000])
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    missing = tmp_path / "missing.wav"
    code = main(["scan", "--json", str(truncated), str(not_wav), str(empty_dir), str(missing),
                 str(good)])
    out, err = capsys.readouterr()
    assert [f["digit"] for f in _json_lines(out)] == ["8"]  # stdout: only the JSON
    assert f"{truncated}: truncated" in err
    assert f"{not_wav}: not a RIFF/WAVE file" in err
    assert f"{empty_dir}: no .wav files" in err
    assert f"{missing}: no such file" in err
    assert code == 2


def test_unreadable_file_with_digits_elsewhere_exits_1_under_fail_on_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dirty = tmp_path / "dirty.wav"
    write_wav(dirty, _keyed("3"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["scan", "--fail-on-digits", str(bad), str(dirty)]) == 1
    capsys.readouterr()


def test_directories_are_scanned_recursively_and_human_output_is_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nested = tmp_path / "2026" / "11"
    nested.mkdir(parents=True)
    write_wav(nested / "a.WAV", _keyed("6"))
    write_wav(tmp_path / "b.wav", np.zeros(8000))
    assert main(["scan", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a.WAV" in out and "b.wav" in out and "none" in out


def test_unsupported_formats_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "float.wav"
    write_wav(path, np.zeros(100))
    data = bytearray(path.read_bytes())
    data[20:22] = (3).to_bytes(2, "little")  # IEEE float format tag
    path.write_bytes(bytes(data))
    assert main(["scan", str(path)]) == 2
    assert "unsupported format tag 0x0003" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture) -> None:
    assert main(["scan", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = clean" in text and "1 = digits found" in text and "2 = a file could not" in text


def test_chunks_stay_bounded_however_many_channels_the_header_claims(tmp_path: Path) -> None:
    path = tmp_path / "wide.wav"
    write_wav(path, np.zeros((64, 20_000)))
    info, chunks = read_frames(path, chunk_frames=1_000_000)
    sizes = [c.shape for c in chunks]
    assert info.channels == 64 and sum(s[1] for s in sizes) == 20_000
    assert all(s[0] == 64 and s[1] * info.bytes_per_frame <= MAX_CHUNK_BYTES for s in sizes)
    assert len(sizes) > 1


def test_a_streaming_header_with_placeholder_size_is_read_to_the_end_of_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.wav"
    write_wav(path, _keyed("27"), codec="ulaw")
    data = path.read_bytes()
    at = data.index(b"data") + 4
    path.write_bytes(data[:4] + b"\xff\xff\xff\xff" + data[8:at] + b"\xff\xff\xff\xff"
                     + data[at + 4:])
    assert [f.digit for f in scan_file(path)] == ["2", "7"]
