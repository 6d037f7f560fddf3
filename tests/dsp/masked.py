"""The mask spans the live pipeline would build from the receiver alone, for the dsp tests of
the suspicion tiers: what each tier covers, and what the reference decoders hear without it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dsp.dtmf import DtmfConfig, DtmfDetector
from dsp.masker import Span, merge, spans_from_suspect
from proxy.media.masking import WIDEN_AFTER, WIDEN_BEFORE


def mask_spans(x: npt.NDArray[np.float64], config: DtmfConfig | None = None) -> list[Span]:
    """Mask spans of one signal fed in 20 ms ticks, widened as the pipeline widens them."""
    detector = DtmfDetector(1, config)
    spans: list[Span] = []
    for t in range(0, x.size, 160):
        out = detector.process(x[None, t:t + 160])
        reach = None if out.reach is None else out.reach[:, 0]
        tail = None if out.tail is None else out.tail[:, 0]
        spans += spans_from_suspect(out.block_starts, out.suspect[:, 0], out.block_size,
                                    WIDEN_BEFORE, WIDEN_AFTER, reach, tail)
    return merge(spans)


def silenced(x: npt.NDArray[np.float64], spans: list[Span]) -> npt.NDArray[np.float64]:
    """``x`` with every span replaced by silence (the decoders' view of the masked leg)."""
    out = x.copy()
    for s, e in spans:
        out[max(0, s):max(0, e)] = 0.0
    return out
