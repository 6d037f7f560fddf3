"""`toneguard scan`: find DTMF in call recordings (a PCI DSS audit of what was recorded).

Each channel of each WAV file is streamed through the same receiver the proxy uses, resampled to
8 kHz where needed, in bounded memory. Findings are printed as a table, or with ``--json`` as
one JSON object per digit on stdout (nothing else goes to stdout). Errors go to stderr and do
not stop the other files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from dsp.dtmf import BLOCK_SIZE, DtmfDetector, DtmfEvent
from dsp.resample import StreamResampler
from proxy.service.wav import WavError, read_frames

RATE = 8000
EXIT_CLEAN = 0
EXIT_DIGITS = 1
EXIT_UNREADABLE = 2


@dataclass(frozen=True)
class Finding:
    file: str
    channel: int
    digit: str
    start_ms: float
    end_ms: float
    low_dbm0: float
    high_dbm0: float


def _findings(path: Path, channel_events: Iterable[DtmfEvent]) -> Iterator[Finding]:
    open_digits: dict[int, DtmfEvent] = {}
    for e in channel_events:
        if e.kind == "on":
            open_digits[e.channel] = e
        elif (on := open_digits.pop(e.channel, None)) is not None:
            yield Finding(str(path), e.channel, on.digit, round(on.sample / RATE * 1000, 1),
                          round(e.sample / RATE * 1000, 1), on.low_dbm0, on.high_dbm0)


def scan_file(path: Path) -> list[Finding]:
    """Every digit in every channel of one WAV file. Raises WavError/OSError if unreadable."""
    info, chunks = read_frames(path)
    resampler = StreamResampler(info.sample_rate, RATE)
    detector = DtmfDetector(info.channels)
    events: list[DtmfEvent] = []
    for chunk in chunks:
        events += detector.process(resampler.push(chunk)).events
    events += detector.process(resampler.push(np.zeros((info.channels, 0)), final=True)).events
    # Trailing silence closes a digit that runs to the end of the recording.
    tail = BLOCK_SIZE * (detector.config.bridge_blocks + 2)
    events += detector.process(np.zeros((info.channels, tail))).events
    return sorted(_findings(path, events), key=lambda f: (f.channel, f.start_ms))


def wav_files(paths: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files to scan: the paths given, and *.wav under directories; (path, error) pairs."""
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".wav"
                           and p.is_file())
            if not found:
                yield path, "no .wav files in this directory"
            for p in found:
                yield p, None
        elif path.exists():
            yield path, None
        else:
            yield path, "no such file or directory"


def scan_command(
    paths: Annotated[list[Path], typer.Argument(help="WAV files or directories (recursive).")],
    json_output: Annotated[bool, typer.Option(
        "--json", help="One JSON object per digit on stdout, nothing else.")] = False,
    fail_on_digits: Annotated[bool, typer.Option(
        "--fail-on-digits", help="Exit 1 if any digit is found.")] = False,
) -> int:
    """Find DTMF digits in call recordings (WAV: 16-bit PCM at any rate, µ-law, A-law).

    Exit codes: 0 = clean (or digits found without --fail-on-digits);
    1 = digits found and --fail-on-digits given;
    2 = a file could not be read (and no digits counted as failure).
    """
    total = 0
    unreadable = 0
    rows: list[Finding] = []
    for path, problem in wav_files(paths):
        try:
            if problem:
                raise WavError(problem)
            found = scan_file(path)
        except (WavError, OSError) as exc:
            unreadable += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"toneguard scan: {path}: {reason}", file=sys.stderr)
            continue
        total += len(found)
        if json_output:
            for f in found:
                sys.stdout.write(json.dumps(asdict(f), ensure_ascii=False) + "\n")
        else:
            rows += found
            if not found:
                rows.append(Finding(str(path), -1, "", 0.0, 0.0, 0.0, 0.0))
    if not json_output:
        _print_table(rows)
    if fail_on_digits and total:
        return EXIT_DIGITS
    return EXIT_UNREADABLE if unreadable else EXIT_CLEAN


def _print_table(rows: list[Finding]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DTMF found in recordings")
    table.add_column("file", overflow="fold")
    for column in ("channel", "digit", "start ms", "end ms", "low dBm0", "high dBm0"):
        table.add_column(column)
    for r in rows:
        if r.channel < 0:
            table.add_row(r.file, "", "[green]none[/]", "", "", "", "")
        else:
            table.add_row(r.file, str(r.channel), f"[red]{r.digit}[/]", f"{r.start_ms:.1f}",
                          f"{r.end_ms:.1f}", f"{r.low_dbm0:.1f}", f"{r.high_dbm0:.1f}")
    Console(width=120).print(table)
