"""Streaming rational resampling to 8 kHz for long recordings read in chunks.

``scipy.signal.resample_poly`` on a whole file would hold it all in memory; on separate chunks
it would click at every seam. This feeds it overlapping chunks aligned on the resampling period
and keeps only the part of each output that its filter saw in full, so the result matches the
one-shot call (to float rounding) with memory bounded by the chunk size.
"""

from __future__ import annotations

from math import gcd

import numpy as np
import numpy.typing as npt


class StreamResampler:
    """Resample ``(channels, n)`` chunks from ``rate_in`` to ``rate_out`` with no seams."""

    def __init__(self, rate_in: int, rate_out: int = 8000) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} → {rate_out}")
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        # resample_poly's default filter spans 10·max(up, down) taps each side at the up-sampled
        # rate; keep that much input context on each side, rounded to whole periods.
        half = 10 * max(self.up, self.down) // self.up + 1
        self._context = -(-half // self.down) * self.down
        self._buffer: npt.NDArray[np.float64] | None = None
        self._consumed = 0  # input samples whose output has been produced (period multiple)

    @property
    def passthrough(self) -> bool:
        return self.up == self.down

    def push(self, chunk: npt.NDArray[np.float64], final: bool = False) -> npt.NDArray[np.float64]:
        """Add input; return every output sample that is now final."""
        if self.passthrough:
            return chunk
        buf = chunk if self._buffer is None else np.concatenate([self._buffer, chunk], axis=1)
        self._buffer = buf
        ctx = self._context
        start = min(self._consumed, ctx)  # context available before the first new sample
        available = buf.shape[1] - start
        # Without more input to come, only whole periods whose right-hand context has arrived.
        ready = available if final else (max(available - ctx, 0) // self.down) * self.down
        if ready <= 0:
            return np.zeros((buf.shape[0], 0))
        stop = min(buf.shape[1], start + ready + (0 if final else ctx))
        # Imported here: scipy.signal costs ~1.5 s CPU to import, and every `toneguard`
        # command (serve too, whose restart gap it lengthened) imports this module via scan.
        from scipy.signal import resample_poly

        out = resample_poly(buf[:, :stop], self.up, self.down, axis=1)
        first = start * self.up // self.down
        count = -(-ready * self.up // self.down) if final else ready * self.up // self.down
        result = out[:, first:first + count]
        # Keep ``ctx`` samples of history before the next new sample.
        keep_from = max(start + ready - ctx, 0)
        self._buffer = buf[:, keep_from:]
        self._consumed = start + ready - keep_from
        return result
