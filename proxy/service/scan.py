"""`toneguard scan`: find DTMF in call recordings (a PCI DSS audit of what was recorded).

Each channel of each WAV file is streamed through the same receiver the proxy uses, resampled to
8 kHz where needed, in bounded memory. Per file the report says whether a card-number-like run
was keyed: a Luhn-valid 13–19 digit run, or any run of ``LONG_RUN`` digits or more (an expiry
plus security code, or a PAN the caller mistyped, is still card data). Keys are masked unless
``--reveal`` is given: the report must not itself become a record of card numbers.

A file that cannot be read is an error row (and a line on stderr), never an empty "clean" row.
``--redact OUTDIR`` writes a copy of each readable recording in which every detected tone is
replaced by the masking tone, exactly where and how the live masking replaces it: the
receiver's ``suspect`` blocks and digits become mask spans widened by the same margins, filled
with ``dsp.masker``'s replacement under its ramped envelope. Everything outside the spans is
byte-identical to the original.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from math import ceil, floor
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer

from dsp.dtmf import BLOCK_SIZE, DtmfDetector, DtmfEvent
from dsp.masker import Span, envelope, merge, replacement, spans_from_suspect
from dsp.resample import StreamResampler
from proxy.media.masking import RAMP, WIDEN_AFTER, WIDEN_BEFORE
from proxy.media.policy import MaskingPolicy
from proxy.securepay.cards import luhn_valid
from proxy.service.wav import WavError, WavInfo, read_frames, read_info, rewrite_channel

RATE = 8000
EXIT_CLEAN = 0
EXIT_DIGITS = 1
EXIT_UNREADABLE = 2
LONG_RUN = 8  # digits in one run that count as card-number-like even without a Luhn match
PAN_LENGTHS = range(13, 20)  # ISO/IEC 7812 card numbers: 13–19 digits
# Digits keyed further apart than this are separate runs: the secure-pay capture's default
# inter-digit timeout (securepay.inter_digit_timeout_seconds), so a PAN keyed in groups of four
# with pauses is still one run.
RUN_GAP_MS = 10_000.0
MASK = "•"  # stands for a masked digit key (* # A–D are not card data and are shown)

Status = Literal["clean", "digits", "card-number", "error"]


@dataclass(frozen=True)
class Finding:
    """One key press found in a recording."""

    file: str
    channel: int
    digit: str
    start_ms: float
    end_ms: float
    low_dbm0: float
    high_dbm0: float


@dataclass(frozen=True)
class Run:
    """Digit keys (0–9) on one channel with no other key and no long pause between them."""

    channel: int
    keys: str
    start_ms: float
    end_ms: float

    @property
    def luhn(self) -> bool:
        """The run is 13–19 digits and passes Luhn: a card number as keyed.

        Only the whole run is tested: one in ten digit strings passes Luhn by chance, so sliding
        a window over a long run would call nearly every one a PAN. A longer run (a PAN with the
        expiry keyed straight after) is card-like anyway, by its length.
        """
        return len(self.keys) in PAN_LENGTHS and luhn_valid(self.keys)

    @property
    def card_like(self) -> bool:
        return self.luhn or len(self.keys) >= LONG_RUN

    @property
    def kind(self) -> str:
        if self.luhn:
            return "card number (Luhn-valid)"
        return "long digit run" if self.card_like else "digits"


@dataclass
class Recording:
    """What one scan of one file found, and the 8 kHz mask spans of each channel."""

    path: Path
    info: WavInfo
    findings: list[Finding]
    spans: dict[int, list[Span]] = field(default_factory=dict)

    @property
    def runs(self) -> list[Run]:
        return runs_of(self.findings)

    @property
    def status(self) -> Status:
        if not self.findings:
            return "clean"
        return "card-number" if any(r.card_like for r in self.runs) else "digits"


def runs_of(findings: Iterable[Finding]) -> list[Run]:
    """Group digit keys into runs per channel (``findings`` sorted by channel, then time)."""
    runs: list[Run] = []
    current: list[Finding] = []

    def close() -> None:
        if current:
            runs.append(Run(current[0].channel, "".join(f.digit for f in current),
                            current[0].start_ms, current[-1].end_ms))
            current.clear()

    for f in findings:
        if current and (f.channel != current[-1].channel
                        or f.start_ms - current[-1].end_ms > RUN_GAP_MS):
            close()
        if f.digit.isdigit():
            current.append(f)
        else:
            close()
    close()
    return runs


def mask_keys(keys: str, reveal: bool = False) -> str:
    """Digit keys as ``MASK`` unless ``reveal``; other keys (* # A–D) as they are."""
    return keys if reveal else "".join(MASK if k.isdigit() else k for k in keys)


def _findings(path: Path, channel_events: Iterable[DtmfEvent]) -> Iterator[Finding]:
    open_digits: dict[int, DtmfEvent] = {}
    for e in channel_events:
        if e.kind == "on":
            open_digits[e.channel] = e
        elif (on := open_digits.pop(e.channel, None)) is not None:
            yield Finding(str(path), e.channel, on.digit, round(on.sample / RATE * 1000, 1),
                          round(e.sample / RATE * 1000, 1), on.low_dbm0, on.high_dbm0)


def scan_recording(path: Path) -> Recording:
    """Every digit and mask span in every channel of one WAV file.

    Raises WavError/OSError if unreadable. The spans are those the live masking would build
    from the same receiver output (``proxy.media.masking``): each suspect block widened by
    ``WIDEN_BEFORE``/``WIDEN_AFTER``, each digit's onset and end widened the same way.
    """
    info, chunks = read_frames(path)
    resampler = StreamResampler(info.sample_rate, RATE)
    detector = DtmfDetector(info.channels)
    events: list[DtmfEvent] = []
    spans: dict[int, list[Span]] = {}

    def feed(samples: np.ndarray) -> None:
        out = detector.process(samples)
        events.extend(out.events)
        for ch in np.flatnonzero(out.suspect.any(axis=0)).tolist():
            reach = None if out.reach is None else out.reach[:, ch]  # as the live masking
            spans[ch] = [*spans.get(ch, []), *spans_from_suspect(
                out.block_starts, out.suspect[:, ch], out.block_size, WIDEN_BEFORE,
                WIDEN_AFTER, reach)]

    for chunk in chunks:
        feed(resampler.push(chunk))
    feed(resampler.push(np.zeros((info.channels, 0)), final=True))
    # Trailing silence closes a digit that runs to the end of the recording.
    feed(np.zeros((info.channels, BLOCK_SIZE * (detector.config.bridge_blocks + 2))))
    for e in events:
        edge = (e.sample - WIDEN_BEFORE, e.sample) if e.kind == "on" else (
            e.sample, e.sample + WIDEN_AFTER)
        spans[e.channel] = [*spans.get(e.channel, []), edge]
    findings = sorted(_findings(path, events), key=lambda f: (f.channel, f.start_ms))
    return Recording(path, info, findings, {ch: merge(s) for ch, s in sorted(spans.items())})


def scan_file(path: Path) -> list[Finding]:
    """Every digit in every channel of one WAV file. Raises WavError/OSError if unreadable."""
    return scan_recording(path).findings


def native_spans(spans: list[Span], rate: int, frames: int) -> list[Span]:
    """8 kHz spans on the file's own sample clock, rounded outwards, clipped to the file.

    The resampler is zero-phase (``resample_poly``), so 8 kHz sample i is native i·rate/8000.
    """
    out = [(max(0, floor(s * rate / RATE)), min(frames, ceil(e * rate / RATE)))
           for s, e in spans]
    return merge([(s, e) for s, e in out if s < e])


def redact(recording: Recording, out: Path, policy: MaskingPolicy | None = None) -> int:
    """Write a copy of ``recording`` with every mask span replaced; returns masked frames.

    The copy is the original file, byte for byte, then each span of each channel is rewritten
    in place with the replacement signal under the live masking's ramped envelope (inside a span
    the original is gone entirely).
    """
    policy = policy or MaskingPolicy()
    info = recording.info
    rate = info.sample_rate
    ramp = max(1, round(RAMP * rate / RATE))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recording.path, out)
    masked = 0
    with out.open("r+b") as f:
        if read_info(f) != info:
            raise WavError("the recording changed while it was being redacted")
        for channel, spans in recording.spans.items():
            native = native_spans(spans, rate, info.frames)
            for start, end in native:
                n = end - start
                signal = replacement(policy.mode.value, start, n,
                                     frequency=policy.tone_frequency_hz,
                                     dbm0=policy.volume_dbm0, digit=policy.digit, rate=rate)
                rewrite_channel(f, info, channel, start,
                                signal * envelope(native, start, n, ramp))
                masked += n
    return masked


def wav_files(paths: Iterable[Path]) -> Iterator[tuple[Path, Path, str | None]]:
    """Files to scan: the paths given, and *.wav under directories.

    Yields (path, name for the redacted copy, error): the copy keeps a file's path relative to
    the directory given, so recordings with the same name in different folders do not clash.
    """
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".wav"
                           and p.is_file())
            if not found:
                yield path, Path(path.name), "no .wav files in this directory"
            for p in found:
                yield p, p.relative_to(path), None
        elif path.exists():
            yield path, Path(path.name), None
        else:
            yield path, Path(path.name), "no such file or directory"


@dataclass
class _Summary:
    files: int = 0
    clean: int = 0
    digits: int = 0
    card_number: int = 0
    unreadable: int = 0
    redacted: int = 0

    def add(self, status: Status) -> None:
        self.files += 1
        if status == "clean":
            self.clean += 1
        elif status == "digits":
            self.digits += 1
        elif status == "card-number":
            self.card_number += 1
        else:
            self.unreadable += 1

    def line(self) -> str:
        text = (f"{self.files} file(s) scanned: {self.clean} clean, "
                f"{self.digits + self.card_number} with DTMF "
                f"({self.card_number} with a card-number-like run), "
                f"{self.unreadable} unreadable")
        return text + (f"; {self.redacted} redacted copies written" if self.redacted else "")


def _problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def scan_command(
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH...", help="WAV files or directories (recursive).", show_default=False)],
    json_output: Annotated[bool, typer.Option(
        "--json", help="One JSON object per file on stdout (then a summary object), "
                       "nothing else.")] = False,
    fail_on_digits: Annotated[bool, typer.Option(
        "--fail-on-digits", help="Exit 1 if any digit is found.")] = False,
    reveal: Annotated[bool, typer.Option(
        "--reveal", help="Show the digits keyed (masked as • by default).")] = False,
    redact_dir: Annotated[Path | None, typer.Option(
        "--redact", metavar="OUTDIR",
        help="Write a copy of each recording to OUTDIR with every detected tone replaced "
             "by the masking tone (all other audio byte-identical).")] = None,
) -> int:
    """Find DTMF in call recordings (WAV: 16-bit PCM at any rate, µ-law, A-law).

    Per file: clean, digits, or card-number (a Luhn-valid 13-19 digit run, or a run of 8 or
    more digits), with the keys masked unless --reveal. Unreadable files are errors.

    Exit codes: 0 = clean (or digits found without --fail-on-digits);
    1 = digits found and --fail-on-digits given;
    2 = a file could not be read (and no digits counted as failure).
    """
    summary = _Summary()
    rows: list[tuple[str, Recording | None, str]] = []  # (file, recording, error)
    for path, copy_name, problem in wav_files(paths):
        try:
            if problem:
                raise WavError(problem)
            recording = scan_recording(path)
            if redact_dir is not None:
                out = redact_dir / copy_name
                if out.resolve() == path.resolve():
                    raise WavError(f"--redact {redact_dir} would overwrite the original")
                redact(recording, out)
                summary.redacted += 1
        except (WavError, OSError) as exc:
            summary.add("error")
            print(f"toneguard scan: {path}: {_problem(exc)}", file=sys.stderr)
            rows.append((str(path), None, _problem(exc)))
            if json_output:
                _write_json({"file": str(path), "status": "error", "error": _problem(exc)})
            continue
        summary.add(recording.status)
        rows.append((str(path), recording, ""))
        if json_output:
            _write_json(_file_json(recording, reveal))
    if json_output:
        _write_json({"summary": asdict(summary)})
    else:
        _print_table(rows, reveal)
        print(summary.line())
    if fail_on_digits and summary.digits + summary.card_number:
        return EXIT_DIGITS
    return EXIT_UNREADABLE if summary.unreadable else EXIT_CLEAN


def _write_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _file_json(recording: Recording, reveal: bool) -> dict[str, object]:
    return {
        "file": str(recording.path),
        "status": recording.status,
        "runs": [{"channel": r.channel, "keys": mask_keys(r.keys, reveal),
                  "digits": len(r.keys), "kind": r.kind, "card_like": r.card_like,
                  "luhn": r.luhn, "start_ms": r.start_ms, "end_ms": r.end_ms}
                 for r in recording.runs],
        "tones": [{**asdict(f), "digit": mask_keys(f.digit, reveal)} for f in recording.findings],
    }


def _print_table(rows: list[tuple[str, Recording | None, str]], reveal: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="DTMF in recordings")
    table.add_column("file", overflow="fold")
    for column in ("result", "channel", "keys", "start ms", "end ms"):
        table.add_column(column)
    for name, recording, error in rows:
        file = escape(name)
        if recording is None:
            table.add_row(file, f"[bold red]ERROR[/]: {escape(error)}", "", "", "", "")
        elif not recording.findings:
            table.add_row(file, "[green]clean[/]", "", "", "", "")
        else:
            for channel, keys, kind, start, end in _key_rows(recording, reveal):
                style = "bold red" if kind.startswith(("card", "long")) else "yellow"
                table.add_row(file, f"[{style}]{kind}[/]", str(channel), escape(keys),
                              f"{start:.1f}", f"{end:.1f}")
    # Wide enough that a file name is never folded across lines (grep-able, copyable paths).
    longest = max((len(name) for name, _, _ in rows), default=0)
    Console(width=max(120, longest + 90)).print(table)


def _key_rows(recording: Recording, reveal: bool) -> Iterator[tuple[int, str, str, float, float]]:
    """One row per digit run, and one per other key (* # A–D), in time order per channel."""
    runs = {(r.channel, r.start_ms): r for r in recording.runs}
    for f in recording.findings:
        run = runs.get((f.channel, f.start_ms))
        if run is not None:
            label = run.kind if run.card_like else f"{len(run.keys)} digit(s)"
            yield run.channel, mask_keys(run.keys, reveal), label, run.start_ms, run.end_ms
        elif not f.digit.isdigit():
            yield f.channel, f.digit, "key", f.start_ms, f.end_ms
