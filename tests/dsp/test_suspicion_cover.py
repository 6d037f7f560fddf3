"""What a suspicion covers (issue 16, the price of false masking).

A suspicion used to cover the whole window it judged, a block of onset allowance before it and
a block of hangover after it: about 53 ms for one window, so speech posing as a key for one
window cost more than 50 ms. Now the long-window tiers cover their window and no hangover
(``window_tail_ms``, ``follow_tail_ms``) and a window only the decoder tier suspects covers the
last 15 ms of it (``window_decoder_cover_ms``). Each test here has the cover as it was before
as its control, and checks that the cheaper cover still silences the reference decoders.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from dsp import g711, tones
from dsp.dtmf import _EIGHTHS, BLOCK_SIZE, MASK_WIDEN_BEFORE, DtmfConfig, DtmfDetector
from dsp.masker import Span
from proxy.demo.leak import leaked_ms_per_window
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from proxy.media.masking import WIDEN_BEFORE
from tests.dsp.masked import mask_spans, silenced

WHOLE_WINDOW = replace(DtmfConfig(), window_decoder_cover_ms=None, window_tail_ms=None,
                       follow_tail_ms=None)
NO_DECODER_TIER = replace(DtmfConfig(), window_decoder_min_energy_share=None)
PAD = 2000


def _crowded_key(digit: str, tone_ms: float, seed: int = 16) -> npt.NDArray[np.float64]:
    """``digit`` at −12 dBm0 per tone with a partial 3 dB under each tone 100 Hz outside the
    pair and white noise (what only the decoder tier suspects: tests/dsp/test_decoder_tier.py),
    between 250 ms of silence, after a µ-law hop."""
    low, high = tones.digit_freqs(digit)
    key = tones.dtmf_tone(digit, tone_ms, low_dbm0=-12.0)
    crowd = tones.sine(low - 100.0, tone_ms, -15.0) + tones.sine(high + 100.0, tone_ms, -15.0)
    noise = tones.white_noise(key.size, -12.0, np.random.default_rng(seed))
    x = np.concatenate([np.zeros(PAD), key + crowd[:key.size] + noise, np.zeros(PAD)])
    return g711.round_trip(x, "ulaw").astype(np.float64)


def _clean_key(digit: str, tone_ms: float) -> npt.NDArray[np.float64]:
    x = np.concatenate([np.zeros(PAD), tones.dtmf_tone(digit, tone_ms, low_dbm0=-12.0),
                        np.zeros(PAD)])
    return g711.round_trip(x, "ulaw").astype(np.float64)


def _masked(spans: list[Span]) -> int:
    return sum(e - s for s, e in spans)


def test_the_detector_and_the_masker_agree_on_the_onset_allowance() -> None:
    """The detector states its covers against the masker's backward widening."""
    assert MASK_WIDEN_BEFORE == WIDEN_BEFORE


def test_a_window_only_the_decoder_tier_suspects_costs_its_last_15_ms() -> None:
    """Each block the decoder tier alone suspects covers 15 ms ending where its window ends
    (an eighth of the block: multimon-ng's window is judged every 1.6 ms; all eight windows of
    one block: 26.1 ms), not the 53 ms of the whole window with allowance and hangover."""
    x = _crowded_key("5", 60.0)
    assert not mask_spans(x, NO_DECODER_TIER)  # the decoder tier alone suspects this key
    for config, low, high in ((DtmfConfig(), 120, 120 + BLOCK_SIZE - 13),
                              (WHOLE_WINDOW, 420, 540)):
        detector = DtmfDetector(1, config)
        lengths = []
        for t in range(0, x.size, 160):
            out = detector.process(x[None, t:t + 160])
            assert out.reach is not None and out.tail is not None
            for b in np.flatnonzero(out.suspect[:, 0]):
                start = -WIDEN_BEFORE - int(out.reach[b, 0])
                end = BLOCK_SIZE + int(out.tail[b, 0])
                lengths.append(end - start)
                if config is not WHOLE_WINDOW:
                    assert end in _EIGHTHS[1:]  # a window's end
        judged = [n for n in lengths if n != BLOCK_SIZE + WIDEN_BEFORE]  # not follow-on
        assert judged and all(low <= n <= high for n in judged), (config is WHOLE_WINDOW,
                                                                 lengths)


def test_crowded_keys_masked_by_their_windows_last_15_ms_reach_no_decoder() -> None:
    """Every crowded key multimon-ng decodes from the caller (40 and 60 ms long): silenced
    where the detector now says, neither decoder hears a key, while the whole-window cover
    masked far more of the signal around them."""
    heard = 0
    for digit in tones.DIGITS:
        for tone_ms in (40.0, 60.0):
            x = _crowded_key(digit, tone_ms)
            if multimon_detect(x) != digit:
                continue
            heard += 1
            spans = mask_spans(x)
            agent = silenced(x, spans)
            assert multimon_detect(agent) == "" and spandsp_detect(agent) == "", (digit,
                                                                                tone_ms)
            assert np.any(agent[PAD:-PAD] != 0.0)  # the key's audio did go on, partly
            assert _masked(spans) + 160 <= _masked(mask_spans(x, WHOLE_WINDOW)), (digit, tone_ms)
    assert heard >= 16


def test_a_clean_keys_mask_ends_with_its_last_suspected_window() -> None:
    """No hangover: a clean key (40 and 100 ms) is masked from before its onset to the end of
    the last window it still fills a quarter of (at most 30 ms after the key), where the
    whole-window cover, the control, went a block further; it leaves 0 ms of DTMF energy
    and no digit to either decoder."""
    for tone_ms in (40.0, 100.0):
        x = _clean_key("7", tone_ms)
        end = PAD + round(tone_ms * 8)
        spans = mask_spans(x)
        assert len(spans) == 1 and spans[0][0] <= PAD
        assert spans[0][1] <= end + 240
        assert mask_spans(x, WHOLE_WINDOW)[0][1] >= spans[0][1] + BLOCK_SIZE
        agent = silenced(x, spans)
        assert leaked_ms_per_window(agent, [(PAD - 160, end + 160)]) == [0.0]
        assert multimon_detect(agent) == "" and spandsp_detect(agent) == ""
        assert multimon_detect(x) == "7" and spandsp_detect(x) == "7"  # they hear the key
