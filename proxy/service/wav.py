"""Reading call recordings: RIFF/WAVE with 16-bit PCM, µ-law or A-law, streamed in chunks.

Python's ``wave`` module reads PCM only; recordings from telephony systems are often G.711
(format tags 7 and 6) and sometimes WAVE_FORMAT_EXTENSIBLE, so the chunks are parsed here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from dsp import g711

FORMAT_PCM = 0x0001
FORMAT_ALAW = 0x0006
FORMAT_ULAW = 0x0007
FORMAT_EXTENSIBLE = 0xFFFE
MAX_CHUNK_BYTES = 1 << 20
STREAMING_SIZE = 0xFFFFFFFF  # data size left as a placeholder by a streaming writer
_CODECS = {FORMAT_PCM: "pcm16", FORMAT_ALAW: "alaw", FORMAT_ULAW: "ulaw"}


class WavError(ValueError):
    """The file is not a WAV file this reader can decode; the message says why."""


@dataclass(frozen=True)
class WavInfo:
    codec: str  # pcm16 | ulaw | alaw
    sample_rate: int
    channels: int
    frames: int  # samples per channel announced by the data chunk
    data_offset: int

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * (2 if self.codec == "pcm16" else 1)


def _chunks(f: BinaryIO, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(id, offset of body, size) of each chunk up to ``end``."""
    pos = 12
    while pos + 8 <= end:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return
        cid, size = struct.unpack("<4sI", header)
        yield cid, pos + 8, size
        pos += 8 + size + (size & 1)  # chunks are word aligned


def read_info(f: BinaryIO) -> WavInfo:
    f.seek(0, 2)
    file_size = f.tell()
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    for cid, offset, size in _chunks(f, file_size):
        if cid == b"fmt ":
            f.seek(offset)
            body = f.read(size)
            if len(body) < 16:
                raise WavError("fmt chunk too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == FORMAT_EXTENSIBLE:
                if len(body) < 26:
                    raise WavError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
                tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            codec = _CODECS.get(tag)
            if codec is None:
                raise WavError(f"unsupported format tag 0x{tag:04x} (PCM, µ-law, A-law only)")
            if codec == "pcm16" and bits != 16:
                raise WavError(f"unsupported PCM sample size {bits} bits (16 only)")
            if channels < 1 or rate < 1000:
                raise WavError(f"implausible fmt: {channels} channels at {rate} Hz")
            per_frame = channels * (2 if codec == "pcm16" else 1)
            available = max(0, min(size, file_size - offset))
            if size == STREAMING_SIZE:
                size = available  # a recorder that never finalised its header: read to EOF
            elif available < size:
                raise WavError(f"truncated: data chunk announces {size} bytes, "
                               f"file holds {available}")
            return WavInfo(codec, rate, channels, size // per_frame, offset)
    raise WavError("no data chunk" if fmt else "no fmt chunk")


def read_frames(path: Path, chunk_frames: int = 40_000) -> tuple[WavInfo, Iterator[npt.NDArray]]:
    """Header, and an iterator of ``(channels, n)`` float64 chunks at 16-bit scale."""
    f = path.open("rb")
    try:
        info = read_info(f)
    except BaseException:
        f.close()
        raise

    # Bounded memory whatever the header claims: at most ~1 MiB of file per chunk.
    per_chunk = max(1, min(chunk_frames, MAX_CHUNK_BYTES // info.bytes_per_frame))

    def frames() -> Iterator[npt.NDArray[np.float64]]:
        with f:
            f.seek(info.data_offset)
            remaining = info.frames
            while remaining > 0:
                n = min(per_chunk, remaining)
                raw = f.read(n * info.bytes_per_frame)
                if len(raw) < n * info.bytes_per_frame:
                    raise WavError("truncated while reading")
                if info.codec == "pcm16":
                    samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
                else:
                    codes = np.frombuffer(raw, dtype=np.uint8)
                    samples = g711.decode(codes, info.codec).astype(np.float64)
                yield samples.reshape(n, info.channels).T
                remaining -= n

    return info, frames()


def write_wav(path: Path, samples: npt.ArrayLike, rate: int = 8000, codec: str = "pcm16",
              extensible: bool = False) -> None:
    """Write ``(channels, n)`` or 1-D 16-bit-scale samples (tests and tools)."""
    x = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    channels = x.shape[0]
    interleaved = np.clip(np.rint(x.T.reshape(-1)), -32768, 32767).astype("<i2")
    if codec == "pcm16":
        tag, bits, data = FORMAT_PCM, 16, interleaved.tobytes()
    elif codec in ("ulaw", "alaw"):
        tag = FORMAT_ULAW if codec == "ulaw" else FORMAT_ALAW
        bits, data = 8, g711.encode(interleaved, codec).tobytes()
    else:
        raise ValueError(f"unknown codec {codec!r}")
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", FORMAT_EXTENSIBLE if extensible else tag, channels, rate,
                      rate * block, block, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    elif tag != FORMAT_PCM:
        fmt += struct.pack("<H", 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an extra chunk readers must skip
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) & 1 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _encode(samples: npt.NDArray[np.float64], codec: str) -> npt.NDArray:
    pcm = np.clip(np.rint(samples), -32768, 32767).astype("<i2")
    return pcm if codec == "pcm16" else g711.encode(pcm, codec)


def rewrite_channel(f: BinaryIO, info: WavInfo, channel: int, start: int,
                    samples: npt.NDArray[np.float64]) -> None:
    """Overwrite ``channel`` of frames [start, start+len(samples)) of an open WAV (``r+b``).

    Only that channel's bytes in those frames change: the header, the other channels and every
    other frame stay byte for byte as they were (a redacted copy is auditable against the
    original). ``samples`` are at 16-bit scale, encoded in the file's own codec.
    """
    n = len(samples)
    if not (0 <= channel < info.channels and 0 <= start <= info.frames - n):
        raise ValueError(f"rewrite_channel: frames {start}..{start + n} of channel {channel} "
                         f"are outside {info.frames} frames × {info.channels} channels")
    dtype = "<i2" if info.codec == "pcm16" else np.uint8
    f.seek(info.data_offset + start * info.bytes_per_frame)
    raw = f.read(n * info.bytes_per_frame)
    frames = np.frombuffer(raw, dtype=dtype).reshape(n, info.channels).copy()
    frames[:, channel] = _encode(samples, info.codec)
    f.seek(info.data_offset + start * info.bytes_per_frame)
    f.write(frames.tobytes())
