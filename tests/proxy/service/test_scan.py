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
    assert main(["scan", "--json", "--reveal", str(path)]) == 0
    report = _json_lines(capsys.readouterr().out)
    found = report[0]["tones"]
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
    report = _json_lines(out)  # stdout: only the JSON, one object per file, then the summary
    assert [(r["file"], r["status"]) for r in report[:-1]] == [
        (str(truncated), "error"), (str(not_wav), "error"), (str(empty_dir), "error"),
        (str(missing), "error"), (str(good), "digits")]
    assert [t["digit"] for t in report[4]["tones"]] == ["•"]
    assert report[-1]["summary"]["unreadable"] == 4 and report[-1]["summary"]["files"] == 5
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
    assert "a.WAV" in out and "b.wav" in out and "clean" in out


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


# --- the auditor's report: card-number-like runs, masked keys, errors as rows, a summary ------

PAN = "4111111111111111"


def _card_call(keys: str = PAN) -> np.ndarray:
    # Keyed in groups of four with a pause between groups, as callers do.
    groups = [keys[i:i + 4] for i in range(0, len(keys), 4)]
    parts = [tones.dtmf_sequence(g, tone_ms=70, gap_ms=80, lead_ms=400, tail_ms=0,
                                 low_dbm0=-12.0) for g in groups]
    return np.concatenate([*parts, np.zeros(1600)])


def test_keyed_card_number_is_reported_as_such_with_digits_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "payment.wav"
    write_wav(path, _card_call(), codec="ulaw")
    assert main(["scan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "card number (Luhn-valid)" in out
    assert "•" * 16 in out
    assert PAN not in out and "1111" not in out.replace(str(path), "")
    assert "1 file(s) scanned: 0 clean, 1 with DTMF (1 with a card-number-like run)" in out


def test_reveal_shows_the_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "payment.wav"
    write_wav(path, _card_call())
    assert main(["scan", "--json", "--reveal", str(path)]) == 0
    report = _json_lines(capsys.readouterr().out)
    assert report[0]["runs"] == [{"channel": 0, "keys": PAN, "digits": 16,
                                  "kind": "card number (Luhn-valid)", "card_like": True,
                                  "luhn": True, "start_ms": report[0]["runs"][0]["start_ms"],
                                  "end_ms": report[0]["runs"][0]["end_ms"]}]


@pytest.mark.parametrize(("keys", "status", "kind"), [
    ("4111111111111112", "card-number", "long digit run"),  # Luhn fails, still 16 digits
    ("12345678", "card-number", "long digit run"),
    ("1234567", "digits", "digits"),
])
def test_long_runs_are_card_like_without_luhn(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              keys: str, status: str, kind: str) -> None:
    path = tmp_path / "call.wav"
    write_wav(path, _card_call(keys))
    main(["scan", "--json", str(path)])
    report = _json_lines(capsys.readouterr().out)[0]
    assert report["status"] == status
    assert [(r["kind"], r["digits"], r["keys"]) for r in report["runs"]] == [
        (kind, len(keys), "•" * len(keys))]


def test_star_or_long_pause_splits_runs(tmp_path: Path) -> None:
    from proxy.service.scan import Finding, runs_of

    def f(digit: str, at: float) -> Finding:
        return Finding("x.wav", 0, digit, at, at + 70, -12, -12)

    keys = [f(d, 150.0 * i) for i, d in enumerate("1234*5678")]
    keys.append(f("9", keys[-1].end_ms + 10_001))
    assert [r.keys for r in runs_of(keys)] == ["1234", "5678", "9"]


def test_missing_and_broken_files_are_error_rows_not_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    clean = tmp_path / "clean.wav"
    write_wav(clean, np.zeros(8000))
    code = main(["scan", str(tmp_path / "missing.wav"), str(broken), str(clean)])
    out = capsys.readouterr().out
    assert code == 2
    assert out.count("ERROR") == 2 and "no such file or directory" in out
    assert "3 file(s) scanned: 1 clean, 0 with DTMF (0 with a card-number-like run), "\
           "2 unreadable" in out


# --- --redact: a copy with every tone replaced, the rest byte-identical ------------------------

def _channel(path: Path, channel: int) -> np.ndarray:
    info, chunks = read_frames(path)
    x = np.concatenate(list(chunks), axis=1)[channel]
    return resample_poly(x, 8000, info.sample_rate) if info.sample_rate != 8000 else x


@pytest.mark.parametrize(("codec", "rate"), [("ulaw", 8000), ("pcm16", 16000), ("alaw", 8000)])
def test_redacted_copy_has_no_dtmf_for_spandsp_or_multimon_and_is_otherwise_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture, codec: str, rate: int
) -> None:
    from proxy.demo.multimon import multimon_detect
    from proxy.demo.spandsp import spandsp_detect
    from proxy.service.scan import native_spans, scan_recording

    rng = np.random.default_rng(7)
    caller = _card_call() + tones.white_noise(_card_call().size, -45.0, rng)
    agent = tones.white_noise(caller.size, -35.0, rng)
    if rate != 8000:
        caller, agent = resample_poly(caller, rate, 8000), resample_poly(agent, rate, 8000)
    original = tmp_path / "calls" / "payment.wav"
    original.parent.mkdir()
    write_wav(original, np.stack([agent, caller]), rate=rate, codec=codec)
    out_dir = tmp_path / "redacted"
    assert main(["scan", "--redact", str(out_dir), str(tmp_path / "calls")]) == 0
    assert "1 redacted copies written" in capsys.readouterr().out
    copy = out_dir / "payment.wav"

    # The original really carries the card number (both independent decoders hear it) ...
    assert spandsp_detect(_channel(original, 1)) == PAN
    assert multimon_detect(_channel(original, 1)) == PAN
    # ... and the copy carries no key at all, on either channel.
    for channel in (0, 1):
        assert spandsp_detect(_channel(copy, channel)) == ""
        assert multimon_detect(_channel(copy, channel)) == ""

    # Outside the mask spans the copy is the original byte for byte (header, agent channel,
    # and the caller's audio between and around the keys).
    recording = scan_recording(original)
    info = recording.info
    assert list(recording.spans) == [1]
    spans = native_spans(recording.spans[1], rate, info.frames)
    before, after = original.read_bytes(), copy.read_bytes()
    assert len(before) == len(after)
    end = info.data_offset + info.frames * info.bytes_per_frame
    assert before[:info.data_offset] == after[:info.data_offset] and before[end:] == after[end:]
    dtype = "<i2" if codec == "pcm16" else np.uint8
    a = np.frombuffer(before[info.data_offset:end], dtype).reshape(-1, 2)
    b = np.frombuffer(after[info.data_offset:end], dtype).reshape(-1, 2)
    assert np.array_equal(a[:, 0], b[:, 0])
    inside = np.zeros(info.frames, dtype=bool)
    for s, e in spans:
        inside[s:e] = True
    assert np.array_equal(a[~inside, 1], b[~inside, 1])
    # The spans cover the 16 keys and not much more (70 ms tones, ~30 ms of margin each; ~40 ms
    # since the decoder tier, issue 16: windows a clean key still fills 38 % of are judged too;
    # 137 ms a key since those windows end at every eighth of a block, not every half).
    masked_ms = inside.sum() / rate * 1000
    assert 16 * 70 <= masked_ms <= 16 * 140, masked_ms
    assert not np.array_equal(a[inside, 1], b[inside, 1])


def test_redact_refuses_to_overwrite_the_original(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "call.wav"
    write_wav(path, _keyed("5"))
    before = path.read_bytes()
    assert main(["scan", "--redact", str(tmp_path), str(path)]) == 2
    assert "would overwrite the original" in capsys.readouterr().err
    assert path.read_bytes() == before
