"""A streaming, multi-channel DTMF receiver (ITU-T Q.23/Q.24) built on a Goertzel-style bank.

Every call to :meth:`DtmfDetector.process` takes a ``channels × samples`` block — one 20 ms
tick of every call a worker relays — and runs each complete 102-sample analysis block of every
channel through ONE matrix product with a fixed basis (the Goertzel recurrence and a DFT bin are
the same number; as a matrix product NumPy/BLAS computes thousands of channels at once). Only
channels whose state changes (a digit starts or ends: rare) are visited in Python.

Per block and per DTMF frequency the basis yields:

* the rectangular DFT of each half block (their sum is the classic Goertzel of the block; their
  ratio says whether the tone fills the whole block, which is how guard time is measured);
* two overlapping Hann-windowed DFTs 34 samples apart. Their magnitude is the tone's level:
  the window's low sidelobes keep a strong partner tone from colouring a weak one under twist,
  and its wide main lobe measures a tone a little off frequency without loss (spandsp's
  rectangular Goertzel errs by 1–2 dB in both cases, then fails the twist test). The phase
  advance between them gives the tone's frequency to a fraction of a percent, which is what lets
  ±1.5 % be accepted and ±3.5 % rejected (a 102-sample Goertzel alone cannot tell them apart).

A block is a *hit* for a key when both tones are loud enough, the twist is within limits, each
tone stands clear of the others in its group, the two tones carry most of the block's energy,
the stronger fills the block evenly, and both are on frequency. Hits of one key, with up to two
missed blocks bridged (dropouts up to 10 ms), form a *segment*. A segment is reported as a digit
once its estimated duration — whole hit blocks plus the fraction of the blocks at either edge that
the tone covers, measured from the coherent amplitude — reaches ``min_duration_ms``: halfway
between the 23 ms that must never be reported and the 40 ms that always must.

Independently, a lenient per-block ``suspect`` flag says "this might be a DTMF tone" long
before a digit is confirmed; the masker acts on it so no tone ever reaches the agent. By
default (``suspect_method="window"``, issue 16) it judges, at the end of every block, the last
three blocks (38.25 ms, about the 40 ms over which multimon-ng integrates) summed coherently at
the eight DTMF frequencies — a few complex multiplies on the block DFTs already computed:

* a key whose two tones carry a quarter of the window's energy, stand 6 dB above the rest of
  their groups, are within 12 dB of each other and above −45 dBm0 (−58 dBm0 where they carry
  half of it), the better-standing tone 10 dB above its neighbourhood (bins 90–280 Hz away, a
  Hann window over the same 38 ms, where voiced speech and music put their next harmonic) and
  the other not below it;
* or, for keys talked over by something whose harmonics crowd both tones, multimon-ng's own
  decision (the decoder tier): its test — each group's best tone 10 dB above the others, the
  two within 4.8 dB, the pair carrying 40 % of the window's energy — a little more leniently
  (38 %, 9.5 dB, 5.25 dB), on multimon-ng's own 40 ms window (25 eighth-block segments, from
  eight DFTs per block) ending at every eighth of a block (so one is never more than 0.8 ms
  from any of multimon-ng's windows, whose 10.02 ms grid drifts over every alignment of
  ours), with no neighbourhood test: where multimon-ng, started anywhere, would hear a key, it
  is suspected, whatever crowds it. (Before it, a second tier approximated this: 42 % of the
  energy, both tones within 4 Hz of nominal, the better one 6 dB above its neighbourhood;
  still callable, ``window_accurate_frequency_hz=4.0``);
* or (off by default: the decoder and spandsp tiers at the decoders' own alignments leave it
  nothing to catch on the sweep), for keys off nominal as real phones' are: each tone's frequency
  found from its block-to-block phase advance, within 1.75 % of nominal and steady (the two
  advances agree within 2 Hz: a voiced sound's harmonics glide), the window's blocks summed in
  phase at it, 42 % of the energy, the better tone 6 dB above its neighbourhood — spandsp,
  with 12.75 ms bins, hears a key 1.5 % off whole, while summed at nominal over 38 ms it
  loses up to 20 dB;
* or spandsp's own decision (the spandsp tier): two consecutive blocks each with the pair 75 %
  of the block's energy, each tone 7 dB over its group, twist within 9/5 dB, above −45 dBm0
  (spandsp: 82 %, 8 dB, 8/4 dB, −42 dBm0), no frequency test — a key whose phase GSM-FR or
  AMR-NB bent from block to block, which the off-nominal tier's steadiness refuses — on the
  receiver's blocks and on blocks a quarter, half and three quarters of a block later (a
  spandsp started elsewhere straddles ours);
* and follow-on: a block continuing a suspected key while its tones stay plausible.

A suspicion covers the window it judged (``DetectorOutput.reach``) and nothing after it
(``DetectorOutput.tail``); a window only the decoder tier suspects, its last 15 ms (enough to
break every multimon-ng window within 0.8 ms of it: the price of speech posing as a key for one
window); a block only follow-on suspects, itself. Only the rare windows
that pass the coherent checks are transformed for the neighbourhood, in one matrix product for
all channels. The earlier rules stay callable for comparisons: ``"narrowband"`` (one block at
60 % of its energy, or the same key as narrowband peaks in two blocks) and ``"energy_share"``
(the one-block rule alone).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from dsp.levels import DBM0_POWER, dbm0_to_amplitude
from dsp.tones import DIGITS, HIGH_FREQS, LOW_FREQS

SAMPLE_RATE = 8000
MAX_CONTINUED_OFFSET = 0.025  # beyond Q.24's ±1.5 %: a half with no tone in it measured noise
FILLER_MEMORY = 2 * 8000  # stalls kept per channel: a key is decided within 50 ms of its start
BLOCK_SIZE = 102  # 12.75 ms: resolves 697 Hz from 770 Hz (spandsp uses the same)
_HALF = BLOCK_SIZE // 2
_HANN_LEN = 68  # two Hann windows, at 0 and 34: frequency from their phase difference
_HANN_HOP = BLOCK_SIZE - _HANN_LEN
FREQS = np.array(LOW_FREQS + HIGH_FREQS, dtype=np.float64)  # 4 low, then 4 high
_NTONES = len(FREQS)
# Basis columns per tone: half A (re, im), half B (re, im), Hann 1 (re, im), Hann 2 (re, im).
_WINDOWS_PER_TONE = 4
_EPS = 1e-9


@dataclass(frozen=True)
class DtmfConfig:
    """Receiver thresholds. The defaults meet ITU-T Q.24 (AT&T column) with margin.

    Levels are per tone in dBm0; ratios in dB; the frequency tolerance is relative.
    """

    sample_rate: int = SAMPLE_RATE
    # Weakest tone accepted (Q.24: must accept −25 dBm0 and below; we accept ≥ 45 dB range).
    min_level_dbm0: float = -50.0
    # Low group louder than high ("normal" twist) accepted up to this (Q.24 AT&T: 8 dB).
    normal_twist_db: float = 9.5
    # High group louder than low ("reverse" twist) accepted up to this (Q.24 AT&T: 4 dB).
    reverse_twist_db: float = 5.5
    # Each tone at least this far above the other tones of its group.
    relative_peak_db: float = 6.0
    # The two tones carry at least this share of the block's energy (speech and music don't).
    min_energy_share: float = 0.85
    # A tone's energy in the two halves of a block differs by at most this (tone fills block).
    max_half_imbalance_db: float = 3.0
    # |measured − nominal| / nominal accepted (Q.24: accept ≤1.5 %, reject ≥3.5 %). None: off.
    frequency_tolerance: float | None = 0.025
    # A key's tones are never an octave apart (the nearest, 1.917, is 4 % short of 2); musical
    # octaves often are. Pairs whose measured ratio is within this of 2:1 are refused.
    octave_tolerance: float | None = 0.01
    # Estimated tone duration needed to report a digit (must: ≤23 ms never, ≥40 ms always).
    min_duration_ms: float = 32.0
    # ...and at least this many whole hit blocks (a 40 ms tone always fills 2 blocks of 12.75 ms
    # whatever its alignment; a single block of music that looks like a key does not).
    min_hit_blocks: int = 2
    # Missed blocks bridged inside one digit (2 blocks: dropouts up to 10 ms bridged, while a
    # 30 ms gap always spoils at least 3 blocks and so always separates two digits).
    bridge_blocks: int = 2
    # The lenient early "tone suspected" flag for the masker: any block a key's tones fill must
    # raise it (a masker holding 30 ms of audio sees every block that completes within 25.5 ms
    # of a tone's onset); speech should seldom raise it.
    suspect_min_level_dbm0: float = -50.0
    suspect_min_energy_share: float = 0.6
    suspect_max_twist_db: float = 12.0
    suspect_relative_peak_db: float = 4.0
    suspect_frequency_tolerance: float | None = 0.05
    # Which suspicion. "window" (default, issue 16): the long-window rule below alone (plus
    # follow-on): one rule for clean, short, quiet and talked-over keys alike. "narrowband"
    # (before it): the rule above made stricter where speech and music fooled it (the peak
    # and frequency figures below), OR the two-block talk-over rule; "energy_share" (before
    # that): the rule above alone (two tones carrying 60 % of one block). Both are kept
    # callable for comparison benchmarks (loadtest.talkover).
    suspect_method: Literal["window", "narrowband", "energy_share"] = "window"
    # "narrowband", single block: relative peak and frequency tolerance of the share rule
    # (4 dB and 5 % let one block of speech in 3 000 through; clean tones still pass by far).
    suspect_clean_relative_peak_db: float = 6.0
    suspect_clean_frequency_tolerance: float = 0.035
    # ...and its tones are not below their neighbourhood (defined below): a keyed tone alone
    # stands far above it, even in the partly filled window of its onset (short, quiet and
    # loud clean keys still leave 0 ms of leak), while one block of speech or music posing as
    # a key often has a harmonic as loud next to it.
    suspect_clean_neighbour_db: float = 0.0
    # "narrowband", talk-over: both blocks of a 25.5 ms window show the same key, each tone
    # this far above the rest of its group and this close to nominal; the two tones carry at
    # least this share of the window's energy (well under what multimon-ng, the more lenient
    # of the two reference decoders, needs: it decodes nothing under white noise 6 dB above
    # the pair, where the share is about a fifth)...
    talkover_relative_peak_db: float = 4.0
    talkover_frequency_tolerance: float = 0.025
    talkover_min_energy_share: float = 0.2
    # ...and each tone stands this far above the strongest of its neighbour bins 90–280 Hz
    # away (Hann window over the two blocks: 39 Hz bins). Voiced speech and most music put a
    # harmonic there (F0 ≥ 85 Hz); a keyed tone does not (the harmonic rule).
    talkover_neighbour_db: float = 6.0
    # A key whose tones stand this far above the rest of their groups and this close to
    # nominal in both blocks (what speech seldom does) needs only this neighbour margin: music
    # under the tones often puts a partial as loud as the tone within 280 Hz.
    talkover_strong_peak_db: float = 10.0
    talkover_strong_frequency_tolerance: float = 0.015
    talkover_strong_neighbour_db: float = -6.0
    # Once a block is suspected, following blocks showing the same key stay suspected while
    # its tones remain plausible (this peak, tolerance and share, over the one block): a tone
    # speech covers for a moment must not come back out between suspected blocks.
    follow_relative_peak_db: float = 4.0
    follow_frequency_tolerance: float = 0.035
    follow_min_energy_share: float = 0.1
    # ...bridging this many blocks where they don't (covered anyway: the masker widens spans
    # by more than a block each way).
    follow_bridge_blocks: int = 1
    # "window": three blocks (38.25 ms, close to the 40 ms over which multimon-ng integrates
    # coherently) summed coherently at the DTMF frequencies, judged at every block's end.
    # multimon-ng decodes a window whose pair carries 40 % of its energy with each tone 10 dB
    # above the rest of its group; this rule asks for less (a share and a group margin below
    # those), a twist within suspect_max_twist_db, each tone above this level...
    window_min_level_dbm0: float = -45.0
    window_min_energy_share: float = 0.25
    # Quieter tones (down to this level over the window) where the pair carries at least this
    # share: a quiet key in the clear (multimon-ng has no level floor at all; a 20 ms key at
    # −50 dBm0 reads −56 dBm0 over the 38 ms window).
    window_quiet_min_level_dbm0: float = -58.0
    window_quiet_min_energy_share: float = 0.5
    window_relative_peak_db: float = 6.0
    # ...and, where speech and music pay, the harmonic rule over the same 38 ms (Hann window,
    # 26 Hz resolution): the louder-standing tone this far above its neighbourhood, the other
    # at least level with it. A keyed tone under speech keeps at least one tone well clear
    # (F1 often crowds the low one); a voiced sound with harmonics on both tones does not.
    window_best_neighbour_db: float = 10.0
    window_worst_neighbour_db: float = 0.0
    # A second tier for keys under talk-over whose neighbourhood is crowded: multimon-ng, which
    # integrates 40 ms coherently, hears a talked-over key only close to nominal (10 Hz off
    # costs 2.4 dB over its window). So: the pair carries this share, each tone this far above
    # its group, both tones within this many Hz of nominal (phase advance from block to block
    # of the window), the better-standing one this far above its neighbourhood. None: off —
    # the default since the decoder tier below asks multimon-ng's own question instead (this
    # tier approximated it): 4.0 Hz masks 3.8 ms/min more µ-law speech and catches nothing
    # the decoder tier misses on the sweep's known leaks and its CI subset.
    window_accurate_min_energy_share: float = 0.42
    window_accurate_relative_peak_db: float = 6.0
    window_accurate_frequency_hz: float | None = None
    window_accurate_best_neighbour_db: float = 6.0
    # The second tier again for keys off nominal as real phones' are (issue 16 follow-up): the
    # tones' frequencies found from their block-to-block phase advance, each within this
    # share of nominal (Q.24 accepts ±1.5 % and spandsp decodes that far under talk-over: a
    # little over it for the estimate's own error), and steady — the advance from the first
    # block to the second and from the second to the third differ by at most this many Hz (a
    # key's tones hold their frequency; a voiced sound's harmonics glide with its pitch, and
    # this is what keeps speech's cost down: measured on the talk-off corpus before the
    # decoder tier, A-law speech masked 18.7 ms/min at 1 Hz, 23.0 at 3 Hz; 0.5 Hz let spandsp
    # hear one off-nominal key of the sweep on the agent leg again. Through GSM-FR, whose
    # frames bend a tone's phase, 1 Hz let spandsp hear 5 off-nominal keys on the agent leg,
    # 2 Hz 2; with the decoder tier, 2 Hz costs no speech and 0.8 ms/min of A-law music).
    # Then the pair's share, group margins and twist
    # are measured at the frequencies found (the window's blocks summed in phase there, as a
    # decoder with wider bins than the window's own hears the key), with the second tier's
    # thresholds (share and group margin; its frequency limit aside). None: off — the default
    # since the decoder tier judges multimon-ng's own window at every eighth of a block and the
    # spandsp tier four alignments of spandsp's blocks: the sweep leaks nothing without it at
    # four decoder offsets, and it cost about 4 ms/min of speech (0.0175 brings it back).
    window_off_nominal_tolerance: float | None = None
    window_off_nominal_max_drift_hz: float = 2.0
    # The decoder tier asks the reference decoder's own question (issue 16): would multimon-ng
    # call this a digit? multimon-ng (demod_dtmf.c, process_block) sums four 10 ms blocks
    # coherently at the nominal frequencies and, every 10 ms, reports the key whose best tone
    # in each group is 10 dB above the group's others, the two within 4.8 dB (3×) of each
    # other, the pair carrying 40 % of the window's energy: no level floor, no frequency or
    # neighbourhood test — so a key whose neighbourhood speech or music crowds (what the
    # harmonic rule refuses) still decodes. This tier applies that test to the 38.25 ms
    # windows ending at every block's middle and end (6.4 ms apart: never more than 3.2 ms
    # from one of multimon-ng's), a little more leniently for the different window and
    # alignment (share, group margin, twist below), the tones above the quiet floor
    # (window_quiet_min_level_dbm0). (The windows are now multimon-ng's own, at every eighth
    # of a block: window_decoder_windows below.)...
    window_decoder_min_energy_share: float | None = 0.38
    window_decoder_relative_peak_db: float = 9.5
    # (Twist: multimon-ng allows 4.8 dB. At 5.0, one multimon-ng talk-off of AMR-NB speech
    # read 5.21 dB over the nearest of our windows and 4.59 over multimon-ng's own; 5.5 costs
    # 2 ms/min more speech than 5.25.)
    window_decoder_max_twist_db: float = 5.25
    # ...on this many consecutive windows with the same key (1 or 2). Measured on the full
    # sweep and the talk-off corpus: 1 leaks 1 of 707 G.711 mixtures and 0 of 690 through
    # GSM-FR/AMR-NB, masking 33.2 ms/min of speech; 2 (judged 6.4 ms later, packets still
    # held) leaks 9 and 12 but masks 22.9 ms/min — speech posing as a key for one window is
    # multimon-ng's own talk-off at one alignment, and also where the marginal keys pass.
    window_decoder_consecutive: int = 1
    # ...judged on this many windows per block. 2: 38.25 ms windows ending at the block's
    # middle and end (6.4 ms apart); 4: also at its quarters, 26 and 77 samples in (3.2 ms
    # apart; two more DFTs per block). 8 (the default): multimon-ng's own window — 25
    # eighth-block segments, 318–319 samples, its 40.1 ms (884 samples at 22 050 Hz) within
    # 0.6 % — ending at every eighth of a block (1.6 ms apart: none of multimon-ng's windows,
    # whose 10.02 ms grid drifts over every alignment of ours, is more than 0.8 ms from one
    # judged); eight DFTs per block. The 38.25 ms windows read a key a mobile codec bent, or
    # speech, up to a dB and a half from what multimon-ng reads over its 40 ms, so 4 still
    # leaked where they read a margin or twist just short. Measured on the full sweep with the
    # decoders started 0/25/51/77 samples in (mixtures leaking at each) and the talk-off
    # corpus (speech / music ms/min, µ-law), with the spandsp tier on four alignments and the
    # off-nominal tier off: 4 leaked 0/0/4/1 (18.0 / 18.1), 8 leaked 0/0/2/0 (15.9 / 18.0);
    # 8 with the twist at 5.25 dB 0/0/0/0 (18.4 / 18.0).
    window_decoder_windows: int = 8
    # The spandsp tier (issue 16): spandsp's own question on the receiver's 12.75 ms blocks —
    # spandsp (dtmf.c) reports a key when two consecutive 102-sample blocks each show it: each
    # tone above −42 dBm0, the high tone at most 4 dB over the low and 8 dB under it, each
    # tone 8 dB above the rest of its group, the pair 82 % of the block's energy (rectangular
    # Goertzel at nominal: a tone 1.5 % off loses only 1.4 dB in a block). Two consecutive
    # blocks passing these a little more leniently (alignment: a decoder's blocks straddle
    # ours) are suspected, with no frequency test: through GSM-FR/AMR-NB an off-nominal
    # key's phase bends from block to block, so the off-nominal tier's steadiness refuses it
    # while spandsp still hears it. None: off.
    window_spandsp_min_energy_share: float | None = 0.75
    window_spandsp_relative_peak_db: float = 7.0
    window_spandsp_normal_twist_db: float = 9.0
    window_spandsp_reverse_twist_db: float = 5.0
    window_spandsp_min_level_dbm0: float = -45.0
    # ...on the receiver's blocks (1), also on blocks half a block later (2), or also a quarter
    # and three quarters later (4, the default): spandsp decoding from elsewhere straddles our
    # blocks, and a key a mobile codec bent can pass its pair of blocks by far while ours, up
    # to half a block off, fall just short (the one spandsp leak of the sweep with the
    # decoders 25 samples in: GSM-FR, off nominal). From the half- and quarter-block DFTs; no
    # cost measurable on the talk-off corpus. With it the off-nominal tier is not needed.
    window_spandsp_alignments: int = 4
    # What a suspicion covers (issue 16, the price per false suspicion). None: the window it
    # judged plus the masker's onset allowance before and hangover after (a block each). Else,
    # for a window only the decoder tier suspects, the last ``window_decoder_cover_ms`` of it
    # and ``window_decoder_tail_ms`` after it: to stop multimon-ng, no 40 ms window may keep
    # the key's coherent sum, and replacing most of the judged window's second part does that
    # for every window within 0.8 ms of it; a key that goes on is suspected again 1.6 ms later.
    window_decoder_cover_ms: float | None = 15.0
    window_decoder_tail_ms: float = 0.0
    # ...and for the other window tiers, how far past the judged window's end (None: the
    # masker's hangover, a block past the suspected block).
    window_tail_ms: float | None = 0.0
    # ...and for a block only follow-on suspects (None: the masker's hangover).
    follow_tail_ms: float | None = 0.0

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"DtmfConfig.sample_rate: only {SAMPLE_RATE} Hz is supported, "
                             f"got {self.sample_rate}")
        if not 0.0 < self.min_energy_share <= 1.0:
            raise ValueError("DtmfConfig.min_energy_share: must be in (0, 1]")
        if self.bridge_blocks < 0:
            raise ValueError("DtmfConfig.bridge_blocks: must be ≥ 0")
        if self.window_decoder_consecutive not in (1, 2):
            raise ValueError("DtmfConfig.window_decoder_consecutive: must be 1 or 2")
        if self.window_spandsp_alignments not in (1, 2, 4):
            raise ValueError("DtmfConfig.window_spandsp_alignments: must be 1, 2 or 4")
        if self.window_decoder_windows not in (2, 4, 8):
            raise ValueError("DtmfConfig.window_decoder_windows: must be 2, 4 or 8")
        if self.frequency_tolerance is not None and self.frequency_tolerance <= 0:
            raise ValueError("DtmfConfig.frequency_tolerance: must be > 0 or None")


@dataclass(frozen=True)
class DtmfEvent:
    """A digit starting ("on") or ending ("off") on one channel."""

    channel: int
    digit: str
    kind: Literal["on", "off"]
    sample: int  # in the channel's own stream: estimated tone start ("on") or end ("off")
    low_dbm0: float  # measured level of the low-group tone
    high_dbm0: float  # measured level of the high-group tone


@dataclass(frozen=True)
class DetectorOutput:
    """What one :meth:`DtmfDetector.process` call produced."""

    events: list[DtmfEvent]
    block_starts: npt.NDArray[np.int64]  # (B,) stream sample where each completed block starts
    block_size: int
    suspect: npt.NDArray[np.bool_]  # (B, channels) a DTMF-like tone is suspected in the block
    # (B, channels) samples before the block's start that its suspicion also covers: the
    # long-window rule suspects the whole 3-block window it judged, which began 2 blocks
    # earlier (already reported by an earlier call, possibly). None: 0 everywhere.
    reach: npt.NDArray[np.int64] | None = None
    # (B, channels) samples after the block's end its suspicion covers (may be negative: a
    # window ending at the block's middle). None: the masker's own hangover everywhere.
    tail: npt.NDArray[np.int64] | None = None


def _basis() -> npt.NDArray[np.float32]:
    n = np.arange(BLOCK_SIZE, dtype=np.float64)
    hann = np.hanning(_HANN_LEN + 2)[1:-1]  # strictly positive taps
    cols = []
    for f in FREQS:
        w = 2 * np.pi * f / SAMPLE_RATE
        first = (n < _HALF).astype(np.float64)
        second = 1.0 - first
        hann1 = np.zeros(BLOCK_SIZE)
        hann1[:_HANN_LEN] = hann
        hann2 = np.zeros(BLOCK_SIZE)
        hann2[_HANN_HOP:] = hann
        for window in (first, second, hann1, hann2):
            # Hann 2 uses its own time origin so a nominal tone advances by ω·hop exactly.
            origin = _HANN_HOP if window is hann2 else 0
            cols.append(window * np.cos(w * (n - origin)))
            cols.append(-window * np.sin(w * (n - origin)))
    return np.stack(cols, axis=1).astype(np.float32)


_BASIS = _basis()
# The decoder tier's quarter windows (``window_decoder_windows=4``) end 26 and 77 samples into a
# block: they need each block's DFT over [0, 26) and [51, 77) (origin at the block's start);
# the other quarters are the half-block DFTs less these.
_QUARTER = 26
_QUARTER_ENDS = (_QUARTER, _HALF + _QUARTER)


def _segment_basis(segments: tuple[tuple[int, int], ...]) -> npt.NDArray[np.float32]:
    """Each [start, end) segment's rectangular DFT at the eight frequencies (origin at the
    block's start): two columns (cos, −sin) per frequency, segment by segment."""
    n = np.arange(BLOCK_SIZE, dtype=np.float64)
    cols = []
    for start, end in segments:
        window = ((n >= start) & (n < end)).astype(np.float64)
        for f in FREQS:
            w = 2 * np.pi * f / SAMPLE_RATE
            cols.append(window * np.cos(w * n))
            cols.append(-window * np.sin(w * n))
    return np.stack(cols, axis=1).astype(np.float32)


_QUARTER_BASIS = _segment_basis(((0, _QUARTER), (_HALF, _HALF + _QUARTER)))
# multimon-ng's window (``window_decoder_windows=8``): the block cut into eighths, each one's DFT
# at the eight frequencies (origin at the block's start); a window is 25 consecutive eighths.
# Cut where the half and quarter windows end, so halves and quarters are sums of eighths.
_EIGHTHS = (0, 13, _QUARTER, 38, _HALF, 64, _HALF + _QUARTER, 89, BLOCK_SIZE)
_SEGMENTS = 8
_EXACT_LONG = 319  # samples in a window, as far as levels go (318 or 319)
_EXACT_HISTORY = 3  # blocks kept from before a call (a window reaches into the third before)
_EIGHTH_BASIS = _segment_basis(tuple(itertools.pairwise(_EIGHTHS)))
_BLOCK_BASIS = _segment_basis(((0, BLOCK_SIZE),)).astype(np.float64)  # key_in's whole block
_HANN_GAIN = float(np.hanning(_HANN_LEN + 2)[1:-1].sum())
# Expected Hann-to-Hann phase advance of a nominal tone, and rad → relative frequency error.
_NOMINAL_ADVANCE = 2 * np.pi * FREQS * _HANN_HOP / SAMPLE_RATE
_RAD_TO_REL = SAMPLE_RATE / (2 * np.pi * _HANN_HOP * FREQS)
_LOW = slice(0, 4)
_HIGH = slice(4, 8)

# The talk-over suspicion's neighbourhood: a Hann window over two blocks (25.5 ms, 39 Hz bins),
# each tone against bins 90–280 Hz below it (and above it where that stays clear of the other
# group): where voiced speech (F0 85–300 Hz) or music puts the neighbouring harmonic. Every
# reference is ≥ 2.3 bins from its tone, so a pure tone reads ≥ 30 dB down there.
_WIDE = 2 * BLOCK_SIZE
_NEIGHBOUR_OFFSETS_HZ = (90.0, 115.0, 145.0, 180.0, 225.0, 280.0)
_GROUP_CLEARANCE_HZ = 100.0  # references keep this far from the other group's tones


def _neighbour_references() -> list[list[float]]:
    refs = []
    for i, f in enumerate(FREQS):
        below = [f - d for d in _NEIGHBOUR_OFFSETS_HZ]
        above = [f + d for d in _NEIGHBOUR_OFFSETS_HZ]
        if i < 4:  # low group: above only while clear of the high group's 1209 Hz
            refs.append(below + [r for r in above if r <= HIGH_FREQS[0] - _GROUP_CLEARANCE_HZ])
        else:  # high group: below only while clear of the low group's 941 Hz
            refs.append([r for r in below if r >= LOW_FREQS[-1] + _GROUP_CLEARANCE_HZ] + above)
    return refs


def _neighbour_basis(length: int = _WIDE) -> tuple[npt.NDArray[np.float32],
                                                   npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Basis (``length`` × 2·F) of the tone bins then all reference bins, and per tone the
    column indices of its references (padded; the mask says which are real)."""
    refs = _neighbour_references()
    freqs = list(FREQS) + [r for group in refs for r in group]
    n = np.arange(length, dtype=np.float64)
    hann = np.hanning(length + 2)[1:-1]
    cols = [hann * np.cos(2 * np.pi * f * n / SAMPLE_RATE) for f in freqs]
    cols += [-hann * np.sin(2 * np.pi * f * n / SAMPLE_RATE) for f in freqs]
    width = max(len(r) for r in refs)
    index = np.zeros((_NTONES, width), dtype=np.int64)
    valid = np.zeros((_NTONES, width), dtype=bool)
    column = _NTONES
    for i, group in enumerate(refs):
        index[i, :len(group)] = np.arange(column, column + len(group))
        valid[i, :len(group)] = True
        column += len(group)
    return np.stack(cols, axis=1).astype(np.float32), index, valid


_NEIGHBOUR_BASIS, _NEIGHBOUR_INDEX, _NEIGHBOUR_VALID = _neighbour_basis()
# The long-window rule: three blocks (38.25 ms) summed coherently, its neighbourhood over the
# same span (Hann: 26 Hz resolution, so every reference is ≥ 3.4 bins from its tone).
_LONG_BLOCKS = 3
_LONG = _LONG_BLOCKS * BLOCK_SIZE
_LONG_BASIS = _neighbour_basis(_LONG)[0]
# How far before its last block a long-window suspicion reaches: to the window's start, less
# the block the masker already widens every suspect block by (its onset allowance).
_LONG_REACH = _LONG - 2 * BLOCK_SIZE
# Phase of each block's DFT (origin at the block's start) moved to the window's start.
_LONG_ROTATION = np.exp(-2j * np.pi * np.outer(np.arange(_LONG_BLOCKS) * BLOCK_SIZE, FREQS)
                        / SAMPLE_RATE)  # (3, 8)
# The decoder tier's window ending at a block's middle spans halves of four blocks.
_DECODER_ROTATION = np.exp(-2j * np.pi
                           * np.outer(np.arange(_LONG_BLOCKS + 1) * BLOCK_SIZE, FREQS)
                           / SAMPLE_RATE)  # (4, 8)
# ...and so reaches half a block further back than a window ending at the block's end.
_MID_REACH = _LONG_REACH + _HALF
# The masker widens every suspect block back by this (proxy.media.masking.WIDEN_BEFORE: a
# block for the onset, 2 ms for packet timing) and on by a block (its hangover) unless the
# detector gives a suspicion's tail.
MASK_WIDEN_BEFORE = BLOCK_SIZE + 16
MASK_HANGOVER = BLOCK_SIZE
# Samples kept from before a call's first block: the long window's two blocks (the decoder
# tier needs no samples: it works on the half-block DFTs).
_X_HISTORY = _LONG - BLOCK_SIZE


def _neighbour_margins(windows: npt.NDArray[np.float32], key: npt.NDArray[np.int64],
                       basis: npt.NDArray[np.float32] = _NEIGHBOUR_BASIS
                       ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """For (M, L) windows and the key suspected in each: the energy ratio of the key's low and
    of its high tone to the strongest reference bin of its neighbourhood."""
    y = (windows @ basis).astype(np.float64)
    half = y.shape[1] // 2
    power = y[:, :half] ** 2 + y[:, half:] ** 2  # (M, F)
    rows = np.arange(key.size)
    ratios = []
    for tone in (key // 4, key % 4 + 4):
        refs = power[rows[:, None], _NEIGHBOUR_INDEX[tone]]  # (M, width)
        strongest = np.where(_NEIGHBOUR_VALID[tone], refs, 0.0).max(axis=1)
        ratios.append(power[rows, tone] / np.maximum(strongest, _EPS))
    return ratios[0], ratios[1]


def _stands_out(windows: npt.NDArray[np.float32], key: npt.NDArray[np.int64],
                factor: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """For (M, 2 blocks) windows and the key suspected in each: do both of the key's tones
    stand ``factor`` (energy) above every reference bin of their neighbourhood?"""
    low, high = _neighbour_margins(windows, key)
    return (low >= factor) & (high >= factor)


def _off_nominal_tier(turned: list[npt.NDArray[np.complex128]],
                      steps: list[npt.NDArray[np.complex128]],
                      advance: npt.NDArray[np.complex128], energy: npt.NDArray[np.float64],
                      cfg: DtmfConfig) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """The long window's second tier for keys off nominal (``turned``: the window's block DFTs
    at the nominal frequencies, phased to its start, (C, count, 8) each; ``steps``: their
    block-to-block advances, ``advance`` their sum; ``energy`` the window's, as |DFT|²).

    A tone Δ Hz off nominal turns by 2π·Δ·102/8000 from one block to the next, so summed
    coherently at nominal over the window it loses up to 20 dB (1.5 % of 1633 Hz is 24.5 Hz,
    next to the 38 ms window's first null at 26 Hz) while a decoder with 12.75 ms bins
    (spandsp) hears it whole. Summing the blocks in phase at the advance measured, and undoing
    each block's own loss at that offset, measures each tone where it is. Returns, per
    window, whether the key found that way passes the coherent checks (the caller applies
    the neighbourhood test), and that key."""
    assert cfg.window_off_nominal_tolerance is not None
    step = np.angle(advance)  # (C, count, 8) radians per block
    offset_hz = np.abs(step) * SAMPLE_RATE / (2 * np.pi * BLOCK_SIZE)
    drift_hz = (np.abs(np.angle(steps[1] * np.conj(steps[0])))
                * SAMPLE_RATE / (2 * np.pi * BLOCK_SIZE))
    aligned = sum(t * np.exp(-1j * k * step) for k, t in enumerate(turned))
    # A block's rectangular DFT of a tone δ cycles/sample off: |sin(πδN) / (N·sin(πδ))|.
    delta = step / (2 * np.pi * BLOCK_SIZE)
    gain = np.abs(np.sinc(delta * BLOCK_SIZE) / np.sinc(delta))
    power = np.abs(aligned) ** 2 / np.maximum(gain, 0.5) ** 2
    plausible = ((offset_hz <= cfg.window_off_nominal_tolerance * FREQS)
                 & (drift_hz <= cfg.window_off_nominal_max_drift_hz))
    candidate = np.where(plausible, power, 0.0)
    low_i = np.argmax(candidate[..., _LOW], axis=-1)
    high_i = np.argmax(candidate[..., _HIGH], axis=-1)

    def tone(group: slice, i: npt.NDArray[np.int64]) -> tuple[npt.NDArray, npt.NDArray,
                                                              npt.NDArray]:
        """The chosen tone's power, whether it is plausible, and its group's runner-up."""
        p = power[..., group]
        chosen = np.take_along_axis(p, i[..., None], -1)[..., 0]
        ok = np.take_along_axis(plausible[..., group], i[..., None], -1)[..., 0]
        others = np.where(np.arange(4) == i[..., None], 0.0, p).max(axis=-1)
        return chosen, ok, others

    low, low_ok, low_other = tone(_LOW, low_i)
    high, high_ok, high_other = tone(_HIGH, high_i)
    twist = _power_ratio(cfg.suspect_max_twist_db)
    margin = _power_ratio(cfg.window_accurate_relative_peak_db)
    floor = (dbm0_to_amplitude(cfg.window_min_level_dbm0) * _LONG / 2.0) ** 2
    passes = (low_ok & high_ok
              & (np.minimum(low, high) >= floor)
              & (high <= twist * low) & (low <= twist * high)
              & (low >= margin * low_other) & (high >= margin * high_other)
              & (low + high >= cfg.window_accurate_min_energy_share * energy))
    return passes, low_i * 4 + high_i


def _decoder_tier(halves: npt.NDArray[np.complex128], half_e: npt.NDArray[np.float64],
                  cfg: DtmfConfig, quarters: npt.NDArray[np.complex128] | None = None,
                  quarter_e: npt.NDArray[np.float64] | None = None,
                  ) -> dict[int, tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]]:
    """Would multimon-ng call it a digit? For every block of this call, its test (with the
    margins of ``cfg.window_decoder_*``) on the 38.25 ms window ending at the block's end and
    on the one ending at its middle (and, given ``quarters``, at its quarters). ``halves``
    (C, 3 + count, 2, 8): each block's half-block DFTs at the nominal frequencies (origin at
    the block's start), the three blocks before this call first; ``half_e`` (C, 3 + count, 2)
    their energies; ``quarters``/``quarter_e`` the same for [0, 26) and [51, 77). Per window,
    keyed by where in the block it ends (samples): whether it passes, and the key."""
    n = halves.shape[1] - _LONG_BLOCKS
    full = halves.sum(axis=2)
    e = half_e.sum(axis=2)
    rot = _DECODER_ROTATION

    def window(first: npt.NDArray, first_e: npt.NDArray, last: npt.NDArray,
               last_e: npt.NDArray) -> tuple[npt.NDArray, npt.NDArray]:
        """The window of the tail ``first`` of block b−3, blocks b−2 and b−1, and the head
        ``last`` of block b (each (C, 3 + count, 8), energies (C, 3 + count))."""
        z = (first[:, 0:n] * rot[0] + full[:, 1:1 + n] * rot[1] + full[:, 2:2 + n] * rot[2]
             + last[:, 3:3 + n] * rot[3])
        energy = first_e[:, 0:n] + e[:, 1:1 + n] + e[:, 2:2 + n] + last_e[:, 3:3 + n]
        return z, energy

    # Block b of this call is index 3 + b; the window ending at its end holds blocks b−2..b.
    end = (sum(full[:, 1 + k:1 + k + n] * rot[k] for k in range(_LONG_BLOCKS)),
           sum(e[:, 1 + k:1 + k + n] for k in range(_LONG_BLOCKS)))
    # ...the one ending at its middle: the second half of b−3, blocks b−2 and b−1, the first
    # half of b.
    mid = window(halves[..., 1, :], half_e[..., 1], halves[..., 0, :], half_e[..., 0])
    out = {BLOCK_SIZE: _decoder_says(*end, cfg), _HALF: _decoder_says(*mid, cfg)}
    if quarters is not None and quarter_e is not None:
        # Ending 26 in: b−3 less its first quarter, ..., b's first quarter; ending 77 in: the
        # last 25 samples of b−3 (its second half less [51, 77)), ..., b up to 77.
        first = _decoder_says(*window(full - quarters[..., 0, :], e - quarter_e[..., 0],
                                      quarters[..., 0, :], quarter_e[..., 0]), cfg)
        third = _decoder_says(*window(
            halves[..., 1, :] - quarters[..., 1, :], half_e[..., 1] - quarter_e[..., 1],
            halves[..., 0, :] + quarters[..., 1, :], half_e[..., 0] + quarter_e[..., 1]), cfg)
        out[_QUARTER_ENDS[0]], out[_QUARTER_ENDS[1]] = first, third
    return out


def _decoder_says(window: npt.NDArray[np.complex128], energy: npt.NDArray[np.float64],
                  cfg: DtmfConfig, length: int = _LONG,
                  ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """multimon-ng's decision (demod_dtmf.c ``process_block``) on (C, n, 8) coherent window
    sums over ``length`` samples and the windows' (C, n) energies, with this tier's margins;
    and the key."""
    assert cfg.window_decoder_min_energy_share is not None
    power = np.abs(window) ** 2  # (A·N/2)² for a sine of amplitude A filling the window
    low = np.sort(power[..., _LOW], axis=-1)
    high = np.sort(power[..., _HIGH], axis=-1)
    best_low, best_high = low[..., -1], high[..., -1]
    peak = _power_ratio(cfg.window_decoder_relative_peak_db)
    twist = _power_ratio(cfg.window_decoder_max_twist_db)
    floor = (dbm0_to_amplitude(cfg.window_quiet_min_level_dbm0) * length / 2.0) ** 2
    passes = ((best_low >= peak * low[..., -2]) & (best_high >= peak * high[..., -2])
              & (best_high <= twist * best_low) & (best_low <= twist * best_high)
              & (np.minimum(best_low, best_high) >= floor)
              & (best_low + best_high
                 >= cfg.window_decoder_min_energy_share * energy * (length / 2.0)))
    key = np.argmax(power[..., _LOW], axis=-1) * 4 + np.argmax(power[..., _HIGH], axis=-1)
    return passes, key


def _exact_tier(head: npt.NDArray[np.complex128], head_e: npt.NDArray[np.float64],
                cfg: DtmfConfig) -> dict[int, tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]]:
    """The decoder tier on multimon-ng's own window: 25 eighth-block segments ending at every
    eighth of each block of this call. ``head`` (C, 3 + count, 9, 8): each block's sums of
    its first 0..8 eighths' DFTs (origin at the block's start), the three blocks before this
    call first; ``head_e`` (C, 3 + count, 9) the same of their energies. Keyed by where in
    the block a window ends (samples): whether it passes, and the key."""
    n = head.shape[1] - _EXACT_HISTORY
    rot = _DECODER_ROTATION  # block k of b−3 .. b moved to b−3's time origin
    # The window ending after eighth t of block b is b−3 from its eighth t − 1 on, b−2 and
    # b−1 whole, and b's first t eighths.
    full, full_e = head[:, :, -1:], head_e[..., -1:]
    b = slice(_EXACT_HISTORY, None)  # this call's blocks
    b3, b2, b1 = (slice(_EXACT_HISTORY - k, _EXACT_HISTORY - k + n) for k in (3, 2, 1))
    window = ((full[:, b3] - head[:, b3, :_SEGMENTS]) * rot[0]
              + (full[:, b2] * rot[1] + full[:, b1] * rot[2])
              + head[:, b, 1:] * rot[3])  # (C, count, 8 ends, 8 tones)
    energy = (full_e[:, b3] - head_e[:, b3, :_SEGMENTS] + full_e[:, b2] + full_e[:, b1]
              + head_e[:, b, 1:])
    passes, key = _decoder_says(window, energy, cfg, _EXACT_LONG)
    return {_EIGHTHS[t]: (passes[..., t - 1], key[..., t - 1])
            for t in range(1, _SEGMENTS + 1)}


def _spandsp_shifted(halves: npt.NDArray[np.complex128], half_e: npt.NDArray[np.float64],
                     quarters: npt.NDArray[np.complex128] | None,
                     quarter_e: npt.NDArray[np.float64] | None,
                     cfg: DtmfConfig) -> dict[int, npt.NDArray[np.bool_]]:
    """The spandsp tier on 102-sample blocks that end ``p`` samples into each of ours (51, and
    with ``quarters`` 26 and 77): per block of this call, whether the shifted block ending in
    it and the one before both pass with the same key. Arrays as for :func:`_decoder_tier`."""
    assert cfg.window_spandsp_min_energy_share is not None
    full = halves.sum(axis=2)
    e = half_e.sum(axis=2)
    rot = _DECODER_ROTATION
    parts = {_HALF: (halves[..., 1, :], half_e[..., 1], halves[..., 0, :], half_e[..., 0])}
    if quarters is not None and quarter_e is not None:
        parts[_QUARTER_ENDS[0]] = (full - quarters[..., 0, :], e - quarter_e[..., 0],
                                   quarters[..., 0, :], quarter_e[..., 0])
        parts[_QUARTER_ENDS[1]] = (halves[..., 1, :] - quarters[..., 1, :],
                                   half_e[..., 1] - quarter_e[..., 1],
                                   halves[..., 0, :] + quarters[..., 1, :],
                                   half_e[..., 0] + quarter_e[..., 1])
    floor = dbm0_energy(cfg.window_spandsp_min_level_dbm0)
    share = cfg.window_spandsp_min_energy_share
    peak = _power_ratio(cfg.window_spandsp_relative_peak_db)
    normal = _power_ratio(cfg.window_spandsp_normal_twist_db)
    reverse = _power_ratio(cfg.window_spandsp_reverse_twist_db)
    # Block ending p into block i: the tail of i − 1 and the head of i; all alignments at once.
    ends = list(parts)
    z = np.stack([tail[:, :-1] * rot[0] + head[:, 1:] * rot[1]
                  for tail, _, head, _ in parts.values()], axis=2)  # (C, 2 + count, P, 8)
    total = np.maximum(np.stack([tail_e[:, :-1] + head_e[:, 1:]
                                 for _, tail_e, _, head_e in parts.values()], axis=2), _EPS)
    energy = 2.0 / BLOCK_SIZE * np.abs(z) ** 2  # as _measure's rectangular "nominal"
    low = np.sort(energy[..., _LOW], axis=-1)
    high = np.sort(energy[..., _HIGH], axis=-1)
    low_e, high_e = low[..., -1], high[..., -1]
    tilt = high_e / np.maximum(low_e, _EPS)
    passes = ((low_e >= floor) & (high_e >= floor)
              & (tilt <= reverse) & (tilt >= 1.0 / normal)
              & (low_e >= peak * low[..., -2]) & (high_e >= peak * high[..., -2])
              & (low_e + high_e >= share * total))
    key = np.argmax(energy[..., _LOW], axis=-1) * 4 + np.argmax(energy[..., _HIGH], axis=-1)
    hit = np.where(passes, key, -1)
    two = (hit[:, 2:] >= 0) & (hit[:, 2:] == hit[:, 1:-1])  # (C, count, P)
    return {p: two[..., k] for k, p in enumerate(ends)}


@dataclass
class _BlockMeasures:
    """Everything the decision logic needs about one block of every channel."""

    amp: npt.NDArray[np.float64]  # (C, 8) coherent amplitude of the whole-block DFT
    energy: npt.NDArray[np.float64]  # (C, 8) tone energy in the block (robust to ±2.5 %)
    hit_digit: npt.NDArray[np.int64]  # (C,) key index 0..15 of a hit, −1 otherwise
    suspect: npt.NDArray[np.bool_]  # (C,)
    # For the talk-over suspicion (two blocks): the block's strongest key, whether it passes
    # the per-block talk-over checks, the key's tone energy and the block's total energy.
    key: npt.NDArray[np.int64] | None = None  # (C,)
    talkover: npt.NDArray[np.bool_] | None = None  # (C,)
    strong: npt.NDArray[np.bool_] | None = None  # (C,) ...and passes the strong-key checks
    follow: npt.NDArray[np.bool_] | None = None  # (C,) the key may continue a suspicion
    spandsp: npt.NDArray[np.bool_] | None = None  # (C,) spandsp would call the block a hit
    pair: npt.NDArray[np.float64] | None = None  # (C,)
    total: npt.NDArray[np.float64] | None = None  # (C,)
    coherent: npt.NDArray[np.complex128] | None = None  # (C, 8) rectangular block DFT
    # For the decoder tier: each half block's rectangular DFT (origin at the block's start)
    # and energy, so windows can also end at a block's middle.
    halves: npt.NDArray[np.complex128] | None = None  # (C, 2, 8)
    half_total: npt.NDArray[np.float64] | None = None  # (C, 2)
    # ...and with quarter windows, the DFTs and energies of [0, 26) and [51, 77).
    quarters: npt.NDArray[np.complex128] | None = None  # (C, 2, 8)
    quarter_total: npt.NDArray[np.float64] | None = None  # (C, 2)
    # ...and with multimon-ng's window, each eighth's DFT and energy.
    eighths: npt.NDArray[np.complex128] | None = None  # (C, 8, 8)
    eighth_total: npt.NDArray[np.float64] | None = None  # (C, 8)


def _wrap(phase: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return (phase + np.pi) % (2 * np.pi) - np.pi


def _power_ratio(db: float) -> float:
    """An energy (power) ratio given in dB, as a plain factor: 6 dB -> 3.98."""
    return 10.0 ** (db / 10.0)


def _group_best(energy: npt.NDArray[np.float64]) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray]:
    """Index of the strongest tone in a (C, 4) group, its energy, and the runner-up's."""
    order = np.argsort(energy, axis=1)
    best = order[:, -1]
    rows = np.arange(energy.shape[0])
    return best, energy[rows, best], energy[rows, order[:, -2]]


def _measure(blocks: npt.NDArray[np.float32], config: DtmfConfig) -> _BlockMeasures:
    """Measure (C, N) blocks: the vectorised heart of the receiver."""
    y = (blocks @ _BASIS).astype(np.float64)
    y = y.reshape(blocks.shape[0], _NTONES, _WINDOWS_PER_TONE, 2)
    z = y[..., 0] + 1j * y[..., 1]  # (C, 8, 4) complex
    half_a, half_b, hann1, hann2 = z[:, :, 0], z[:, :, 1], z[:, :, 2], z[:, :, 3]
    amp = np.abs(half_a + half_b)
    # A sine of amplitude A has energy N·A²/2 over the block; a window's DFT of it has
    # magnitude A·Σw/2. Rectangular (Σw = N) picks the key; Hann measures the level.
    nominal = 2.0 / BLOCK_SIZE * amp**2
    energy = (BLOCK_SIZE / 2.0) * (2.0 / _HANN_GAIN) ** 2 * (
        np.abs(hann1) ** 2 + np.abs(hann2) ** 2) / 2.0
    total = np.einsum("cn,cn->c", blocks, blocks, dtype=np.float64)

    low, low_e, low_second = _group_best(nominal[:, _LOW])
    high, high_e, high_second = _group_best(nominal[:, _HIGH])
    rows = np.arange(blocks.shape[0])
    high_i = high + 4
    low_level = energy[rows, low]
    high_level = energy[rows, high_i]
    twist = high_level / np.maximum(low_level, _EPS)  # > 1: high group louder (reverse)
    share = (low_level + high_level) / np.maximum(total, _EPS)

    level_floor = dbm0_energy(config.min_level_dbm0)
    hit = (
        (low_level >= level_floor)
        & (high_level >= level_floor)
        & (twist <= _power_ratio(config.reverse_twist_db))
        & (twist >= 1.0 / _power_ratio(config.normal_twist_db))
        & (low_e >= _power_ratio(config.relative_peak_db) * low_second)
        & (high_e >= _power_ratio(config.relative_peak_db) * high_second)
        & (share >= config.min_energy_share)
    )
    # Does the tone fill the block? Judged on the stronger tone: the weaker one's half-block
    # DFTs (51 samples, 157 Hz bins) carry too much leakage from a strong partner under twist.
    limit = _power_ratio(config.max_half_imbalance_db)
    stronger = np.where(high_level > low_level, high_i, low)
    ea = np.abs(half_a[rows, stronger]) ** 2
    eb = np.abs(half_b[rows, stronger]) ** 2
    hit &= (ea <= limit * eb) & (eb <= limit * ea)
    if config.frequency_tolerance is not None:
        advance = np.angle(hann2 * np.conj(hann1))
        error = _wrap(advance - _NOMINAL_ADVANCE) * _RAD_TO_REL  # (C, 8) relative
        hit &= np.abs(error[rows, low]) <= config.frequency_tolerance
        hit &= np.abs(error[rows, high_i]) <= config.frequency_tolerance
        if config.octave_tolerance is not None:
            ratio = (FREQS[high_i] * (1 + error[rows, high_i])) / (
                FREQS[low] * (1 + error[rows, low]))
            hit &= np.abs(ratio / 2.0 - 1.0) > config.octave_tolerance

    suspect_floor = dbm0_energy(config.suspect_min_level_dbm0)
    suspect_twist = _power_ratio(config.suspect_max_twist_db)
    # Cheapest first, shared by both suspicions: level and twist of the strongest pair.
    plausible = (
        (low_e >= suspect_floor)
        & (high_e >= suspect_floor)
        & (high_e <= suspect_twist * low_e)
        & (low_e <= suspect_twist * high_e)
    )
    advance = np.angle(hann2 * np.conj(hann1))
    error = np.abs(_wrap(advance - _NOMINAL_ADVANCE) * _RAD_TO_REL)
    worst_error = np.maximum(error[rows, low], error[rows, high_i])
    peak = np.minimum(low_e / np.maximum(low_second, _EPS),
                      high_e / np.maximum(high_second, _EPS))
    narrowband = config.suspect_method != "energy_share"
    peak_db = (config.suspect_clean_relative_peak_db if narrowband
               else config.suspect_relative_peak_db)
    tolerance = (config.suspect_clean_frequency_tolerance if narrowband
                 else config.suspect_frequency_tolerance)
    suspect = (
        plausible
        & (peak >= _power_ratio(peak_db))
        & ((low_e + high_e) >= config.suspect_min_energy_share * np.maximum(total, _EPS))
    )
    if tolerance is not None:
        suspect &= worst_error <= tolerance
    if config.suspect_method == "window":
        suspect = np.zeros_like(suspect)  # the long-window rule decides alone
    hit_digit = np.where(hit, low * 4 + high, -1)
    measures = _BlockMeasures(amp=amp, energy=energy, hit_digit=hit_digit, suspect=suspect)
    if narrowband:
        measures.key = low * 4 + high
        measures.talkover = (plausible
                             & (peak >= _power_ratio(config.talkover_relative_peak_db))
                             & (worst_error <= config.talkover_frequency_tolerance))
        measures.strong = (measures.talkover
                           & (peak >= _power_ratio(config.talkover_strong_peak_db))
                           & (worst_error <= config.talkover_strong_frequency_tolerance))
        measures.pair = low_e + high_e
        measures.total = total
        measures.coherent = half_a + half_b
        if config.suspect_method == "window" and config.window_decoder_min_energy_share:
            measures.halves = np.stack([half_a, half_b], axis=1)
            first = np.einsum("cn,cn->c", blocks[:, :_HALF], blocks[:, :_HALF],
                              dtype=np.float64)
            measures.half_total = np.stack([first, total - first], axis=1)
            if config.window_decoder_windows == 8:
                y8 = (blocks @ _EIGHTH_BASIS).astype(np.float64).reshape(
                    blocks.shape[0], _SEGMENTS, _NTONES, 2)
                measures.eighths = y8[..., 0] + 1j * y8[..., 1]
                sq = blocks.astype(np.float64) ** 2
                measures.eighth_total = np.add.reduceat(sq, _EIGHTHS[:-1], axis=1)
            if measures.eighths is not None and measures.eighth_total is not None:
                # [0, 26) is the first two eighths, [51, 77) the fifth and sixth.
                measures.quarters = np.stack([measures.eighths[:, 0] + measures.eighths[:, 1],
                                              measures.eighths[:, 4] + measures.eighths[:, 5]],
                                             axis=1)
                measures.quarter_total = np.stack(
                    [measures.eighth_total[:, 0] + measures.eighth_total[:, 1],
                     measures.eighth_total[:, 4] + measures.eighth_total[:, 5]], axis=1)
            elif config.window_decoder_windows == 4 or config.window_spandsp_alignments == 4:
                q = (blocks @ _QUARTER_BASIS).astype(np.float64).reshape(
                    blocks.shape[0], 2, _NTONES, 2)
                measures.quarters = q[..., 0] + 1j * q[..., 1]
                measures.quarter_total = np.stack([
                    np.einsum("cn,cn->c", part, part, dtype=np.float64)
                    for part in (blocks[:, :_QUARTER], blocks[:, _HALF:_HALF + _QUARTER])],
                    axis=1)
        if (config.suspect_method == "window"
                and config.window_spandsp_min_energy_share is not None):
            floor = dbm0_energy(config.window_spandsp_min_level_dbm0)
            tilt = high_e / np.maximum(low_e, _EPS)  # > 1: high group louder (reverse)
            measures.spandsp = (
                (low_e >= floor) & (high_e >= floor)
                & (tilt <= _power_ratio(config.window_spandsp_reverse_twist_db))
                & (tilt >= 1.0 / _power_ratio(config.window_spandsp_normal_twist_db))
                & (peak >= _power_ratio(config.window_spandsp_relative_peak_db))
                & (low_e + high_e
                   >= config.window_spandsp_min_energy_share * np.maximum(total, _EPS)))
        measures.follow = (plausible
                           & (peak >= _power_ratio(config.follow_relative_peak_db))
                           & (worst_error <= config.follow_frequency_tolerance)
                           & (low_e + high_e >= config.follow_min_energy_share * total))
    return measures


def dbm0_energy(dbm0: float) -> float:
    """Energy over one block of a sine at ``dbm0`` (the unit :func:`_measure` works in)."""
    return BLOCK_SIZE * DBM0_POWER * 10.0 ** (dbm0 / 10.0)


def _energy_dbm0(energy: float) -> float:
    return 10.0 * math.log10(max(energy, _EPS) / (BLOCK_SIZE * DBM0_POWER))


@dataclass
class _Segments:
    """Per-channel state of the digit currently being tracked (vectors over channels)."""

    channels: int
    digit: npt.NDArray[np.int64] = field(init=False)  # key index, −1: none
    start: npt.NDArray[np.float64] = field(init=False)  # estimated start sample (global)
    last_hit_end: npt.NDArray[np.int64] = field(init=False)
    post_cover: npt.NDArray[np.float64] = field(init=False)  # tone in block after last hit
    misses: npt.NDArray[np.int64] = field(init=False)
    hits: npt.NDArray[np.int64] = field(init=False)
    amp_sum: npt.NDArray[np.float64] = field(init=False)  # (C, 2) coherent amps over hits
    energy_sum: npt.NDArray[np.float64] = field(init=False)  # (C, 2)
    reported: npt.NDArray[np.bool_] = field(init=False)
    filler_hits: npt.NDArray[np.int64] = field(init=False)  # hits on blocks mostly filler

    def __post_init__(self) -> None:
        c = self.channels
        self.digit = np.full(c, -1, dtype=np.int64)
        self.start = np.zeros(c)
        self.last_hit_end = np.zeros(c, dtype=np.int64)
        self.post_cover = np.zeros(c)
        self.misses = np.zeros(c, dtype=np.int64)
        self.hits = np.zeros(c, dtype=np.int64)
        self.amp_sum = np.zeros((c, 2))
        self.energy_sum = np.zeros((c, 2))
        self.reported = np.zeros(c, dtype=bool)
        self.filler_hits = np.zeros(c, dtype=np.int64)

    def resized(self, channels: int) -> _Segments:
        bigger = _Segments(channels)
        n = min(channels, self.channels)
        for name in ("digit", "start", "last_hit_end", "post_cover", "misses", "hits",
                     "amp_sum", "energy_sum", "reported", "filler_hits"):
            getattr(bigger, name)[:n] = getattr(self, name)[:n]
        return bigger

    def clear(self, ch: npt.NDArray[np.int64] | int) -> None:
        self.digit[ch] = -1
        self.misses[ch] = 0
        self.hits[ch] = 0
        self.amp_sum[ch] = 0.0
        self.energy_sum[ch] = 0.0
        self.reported[ch] = False
        self.post_cover[ch] = 0.0
        self.filler_hits[ch] = 0


@dataclass
class _TalkoverState:
    """Per channel, the last block of the previous ``process`` call, as the talk-over
    suspicion needs it (its window spans two blocks)."""

    channels: int
    key: npt.NDArray[np.int64] = field(init=False)
    candidate: npt.NDArray[np.bool_] = field(init=False)
    pair: npt.NDArray[np.float64] = field(init=False)
    total: npt.NDArray[np.float64] = field(init=False)
    block: npt.NDArray[np.float32] = field(init=False)
    held: npt.NDArray[np.int64] = field(init=False)  # key suspected last, −1: none
    missed: npt.NDArray[np.int64] = field(init=False)  # blocks since it was last suspected
    strong: npt.NDArray[np.bool_] = field(init=False)
    # The long-window rule's view of the two blocks before this call's first one.
    long_z: npt.NDArray[np.complex128] = field(init=False)  # (C, 2, 8) block DFTs
    long_e: npt.NDArray[np.float64] = field(init=False)  # (C, 2) block energies
    long_x: npt.NDArray[np.float32] = field(init=False)  # (C, 2 blocks) samples
    # The decoder tier's view of the three blocks before this call's first one, by halves.
    half_z: npt.NDArray[np.complex128] = field(init=False)  # (C, 3, 2, 8)
    half_e: npt.NDArray[np.float64] = field(init=False)  # (C, 3, 2)
    quarter_z: npt.NDArray[np.complex128] = field(init=False)  # (C, 3, 2, 8)
    quarter_e: npt.NDArray[np.float64] = field(init=False)  # (C, 3, 2)
    # ...and for multimon-ng's window, each of the three blocks' sums of its first 0..8 eighths.
    eighth_z: npt.NDArray[np.complex128] = field(init=False)  # (C, 3, 9, 8)
    eighth_e: npt.NDArray[np.float64] = field(init=False)  # (C, 3, 9)
    dec_end: npt.NDArray[np.bool_] = field(init=False)  # last block's end window passed
    dec_end_key: npt.NDArray[np.int64] = field(init=False)  # ...with this key
    sp_hit: npt.NDArray[np.int64] = field(init=False)  # last block's spandsp-like key, −1

    def __post_init__(self) -> None:
        c = self.channels
        self.long_z = np.zeros((c, _LONG_BLOCKS - 1, _NTONES), dtype=np.complex128)
        self.long_e = np.zeros((c, _LONG_BLOCKS - 1))
        self.long_x = np.zeros((c, _X_HISTORY), dtype=np.float32)
        self.half_z = np.zeros((c, _LONG_BLOCKS, 2, _NTONES), dtype=np.complex128)
        self.half_e = np.zeros((c, _LONG_BLOCKS, 2))
        self.quarter_z = np.zeros((c, _LONG_BLOCKS, 2, _NTONES), dtype=np.complex128)
        self.quarter_e = np.zeros((c, _LONG_BLOCKS, 2))
        self.eighth_z = np.zeros((c, _EXACT_HISTORY, _SEGMENTS + 1, _NTONES),
                                 dtype=np.complex128)
        self.eighth_e = np.zeros((c, _EXACT_HISTORY, _SEGMENTS + 1))
        self.dec_end = np.zeros(c, dtype=bool)
        self.dec_end_key = np.full(c, -1, dtype=np.int64)
        self.sp_hit = np.full(c, -1, dtype=np.int64)
        self.key = np.full(c, -1, dtype=np.int64)
        self.held = np.full(c, -1, dtype=np.int64)
        self.missed = np.zeros(c, dtype=np.int64)
        self.strong = np.zeros(c, dtype=bool)
        self.candidate = np.zeros(c, dtype=bool)
        self.pair = np.zeros(c)
        self.total = np.zeros(c)
        self.block = np.zeros((c, BLOCK_SIZE), dtype=np.float32)

    def resized(self, channels: int) -> _TalkoverState:
        bigger = _TalkoverState(channels)
        n = min(channels, self.channels)
        for name in ("key", "candidate", "pair", "total", "block", "held", "missed",
                     "strong", "long_z", "long_e", "long_x", "half_z", "half_e",
                     "quarter_z", "quarter_e", "eighth_z", "eighth_e",
                     "dec_end", "dec_end_key", "sp_hit"):
            getattr(bigger, name)[:n] = getattr(self, name)[:n]
        return bigger

    def clear(self, ch: int) -> None:
        self.key[ch] = -1
        self.held[ch] = -1
        self.missed[ch] = 0
        self.strong[ch] = False
        self.candidate[ch] = False
        self.pair[ch] = 0.0
        self.total[ch] = 0.0
        self.block[ch] = 0.0
        self.long_z[ch] = 0.0
        self.long_e[ch] = 0.0
        self.long_x[ch] = 0.0
        self.half_z[ch] = 0.0
        self.half_e[ch] = 0.0
        self.quarter_z[ch] = 0.0
        self.quarter_e[ch] = 0.0
        self.eighth_z[ch] = 0.0
        self.eighth_e[ch] = 0.0
        self.dec_end[ch] = False
        self.dec_end_key[ch] = -1
        self.sp_hit[ch] = -1


def _tone_indices(digit: npt.NDArray[np.int64]) -> tuple[npt.NDArray, npt.NDArray]:
    return digit // 4, digit % 4 + 4


def _overlap(spans: list[tuple[int, int]], start: float, end: float) -> float:
    """How much of [start, end) the (disjoint) ``spans`` cover."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


def key_in(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """For each row (one block of samples), the key (index into ``DIGITS``) whose two tones
    carry most of its energy and stand clear of the rest of their groups, or −1: a lenient
    look at a key just started (a partial block is not a hit yet, but its tones are there)."""
    n = rows.shape[1]
    dft = rows.astype(np.float64) @ _BLOCK_BASIS  # (cos, −sin) per frequency
    power = dft[:, 0::2] ** 2 + dft[:, 1::2] ** 2
    lo = np.argmax(power[:, :4], axis=1)
    hi = np.argmax(power[:, 4:], axis=1) + 4
    ix = np.arange(len(rows))
    pair = power[ix, lo] + power[ix, hi]
    share = 2.0 * pair / n / np.maximum((rows.astype(np.float64) ** 2).sum(axis=1), _EPS)
    second_lo = np.sort(power[:, :4], axis=1)[:, -2]
    second_hi = np.sort(power[:, 4:], axis=1)[:, -2]
    clear = (power[ix, lo] > 10 * second_lo) & (power[ix, hi] > 10 * second_hi)  # 10 dB
    return np.where((share >= 0.7) & clear, lo * 4 + (hi - 4), -1)


ONSET_FLOOR_DBM0 = -50.0  # 2 samples of a -25 dBm0 key read -37 over 8: only silence is below
ONSET_RISE = 4.0  # amplitude (12 dB) over the whole stretch before: a start, not a steady sound
# A key started k samples before the end shows in the first of these stretches ≥ k:
ONSET_LENGTHS = (8, 16, 32, 64, 128)
ONSET_TAIL = 2 * ONSET_LENGTHS[-1]  # samples :func:`may_start_a_key` reads
_ONSET_BASES = tuple(np.exp(-2j * np.pi * np.outer(FREQS, np.arange(n)) / SAMPLE_RATE)
                     for n in ONSET_LENGTHS)  # each stretch's DFT at the eight frequencies


def may_start_a_key(tail: npt.ArrayLike) -> bool:
    """Whether the end of ``tail`` (its last ``ONSET_TAIL`` samples) could be the first
    milliseconds of a key: over its last 8, 16, 32, 64 or 128 samples some DTMF frequency is above
    ``ONSET_FLOOR_DBM0`` and 12 dB above the level of everything in the stretch just before
    (as a sine's amplitude). Lenient on purpose — a few samples of a tone do not resolve one
    frequency from the next, and a leak meter hears them — but blind to a steady sound
    (speech, noise, a tone going on), which rises nowhere.
    It judges the end of a sender's audio that the detector will only ever see followed by
    silence it made up."""
    x = np.asarray(tail, dtype=np.float64)[-ONSET_TAIL:]
    floor = dbm0_to_amplitude(ONSET_FLOOR_DBM0)
    for n, basis in zip(ONSET_LENGTHS, _ONSET_BASES, strict=True):
        if x.size < 2 * n:
            break
        last = 2.0 * np.abs(basis @ x[-n:]) / n
        before = math.sqrt(2.0 * float(np.mean(x[-2 * n:-n] ** 2)))
        if np.any((last > floor) & (last > ONSET_RISE * before)):
            return True
    return False


def continued_tones(recent: npt.NDArray[np.float32], digit: npt.NDArray[np.int64],
                    n: int) -> npt.NDArray[np.float32]:
    """The next ``n`` samples of each row of ``recent`` as its key ``digit`` (index into
    ``DIGITS``) would go on: its two tones fitted to the row by least squares and run on in
    phase (what a stalled sender would have sent had it not stalled, to the detector). Each
    tone's frequency is first found from its phase advance between the row's two halves:
    phones send keys up to 1.5 % off nominal, and a nominal fit would jump in phase."""
    out = np.zeros((len(digit), n), dtype=np.float32)
    size = recent.shape[1]
    half = size // 2
    before = np.arange(-size, 0)
    lo, hi = _tone_indices(digit)
    for row, (f_lo, f_hi) in enumerate(zip(FREQS[lo], FREQS[hi], strict=True)):
        y = recent[row].astype(np.float64)
        w = 2 * np.pi * np.array([f_lo, f_hi]) / SAMPLE_RATE
        first = _tone_phasors(before[:half], y[:half], w)
        second = _tone_phasors(before[half:2 * half], y[half:2 * half], w)
        shift = _wrap(np.angle(second) - np.angle(first)) / half
        w = np.where(np.abs(shift) <= MAX_CONTINUED_OFFSET * w, w + shift, w)  # else: noise
        phasors = _tone_phasors(before, y, w)
        out[row] = np.real(phasors[None, :] * np.exp(1j * np.outer(np.arange(n), w))).sum(1)
    return out


def _tone_phasors(t: npt.NDArray[np.int64], y: npt.NDArray[np.float64],
                  w: npt.NDArray[np.float64]) -> npt.NDArray[np.complex128]:
    """Least-squares complex amplitude of each tone (radian frequency ``w``) in ``y(t)``:
    y ≈ Re Σ p·e^{iwt}."""
    phase = np.outer(t, w)
    coef, *_ = np.linalg.lstsq(np.concatenate([np.cos(phase), -np.sin(phase)], axis=1), y,
                               rcond=None)
    k = len(w)
    return coef[:k] + 1j * coef[k:]


class DtmfDetector:
    """DTMF receiver for ``channels`` independent streams advancing together."""

    def __init__(self, channels: int, config: DtmfConfig | None = None) -> None:
        if channels < 1:
            raise ValueError(f"DtmfDetector: channels must be ≥ 1, got {channels}")
        self._config = config or DtmfConfig()
        self._channels = channels
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._recent = np.zeros((channels, BLOCK_SIZE), dtype=np.float32)  # latest samples
        self._filler: dict[int, list[tuple[int, int]]] = {}  # channel → recent filler spans
        self._seen = 0  # samples consumed per channel (global clock)
        self._origin = np.zeros(channels, dtype=np.int64)  # global sample of each stream's 0
        self._prev_amp = np.zeros((channels, _NTONES))
        self._talk = _TalkoverState(channels)
        self._seg = _Segments(channels)
        self._min_duration = self._config.min_duration_ms * SAMPLE_RATE / 1000.0

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def samples_seen(self) -> int:
        """Samples of every channel consumed so far (complete blocks plus the pending tail)."""
        return self._seen + self._pending.shape[1]

    @property
    def config(self) -> DtmfConfig:
        return self._config

    def reset(self, channel: int) -> None:
        """Forget ``channel``'s history: its slot now carries a new stream starting now."""
        if not 0 <= channel < self._channels:
            raise IndexError(f"DtmfDetector.reset: no channel {channel}")
        self._pending[channel] = 0.0
        self._recent[channel] = 0.0
        self._filler.pop(channel, None)
        self._prev_amp[channel] = 0.0
        self._talk.clear(channel)
        self._seg.clear(channel)
        self._origin[channel] = self.samples_seen

    def resize(self, channels: int) -> None:
        """Change the number of channels, keeping the state of the ones that remain (a worker
        grows its detector as calls arrive; new channels start fresh, aligned with the rest)."""
        if channels < 1:
            raise ValueError(f"DtmfDetector.resize: channels must be ≥ 1, got {channels}")
        n = min(channels, self._channels)
        pending = np.zeros((channels, self._pending.shape[1]), dtype=np.float32)
        pending[:n] = self._pending[:n]
        prev = np.zeros((channels, _NTONES))
        prev[:n] = self._prev_amp[:n]
        recent = np.zeros((channels, BLOCK_SIZE), dtype=np.float32)
        recent[:n] = self._recent[:n]
        self._recent = recent
        self._filler = {ch: spans for ch, spans in self._filler.items() if ch < n}
        origin = np.full(channels, self.samples_seen, dtype=np.int64)
        origin[:n] = self._origin[:n]
        self._pending, self._prev_amp, self._origin = pending, prev, origin
        self._talk = self._talk.resized(channels)
        self._seg = self._seg.resized(channels)
        self._channels = channels

    def process(self, samples: npt.ArrayLike, held: npt.ArrayLike | None = None
                ) -> DetectorOutput:
        """Consume a ``(channels, n)`` block (16-bit scale, int16 or float) of every channel.

        ``held`` (one flag per channel) marks channels whose ``n`` samples are filler: their
        stream had nothing for this slot (its sender stalled) and its timeline waits for it.
        The channels advance together, so a stalled one must be fed something, and silence
        in the middle of a key cut it in two, or lost it. So the detector writes the filler
        itself: the key it was in (latest block a hit, or a key just starting by
        :func:`key_in`) continued in phase, else silence (in a pause between keys silence
        is what was there). The filler is not evidence: a key's duration leaves it out and
        it needs a hit on a block mostly of media, so a stall never makes a key of a blip.
        """
        x = np.asarray(samples)
        if x.ndim != 2 or x.shape[0] != self._channels:
            raise ValueError(f"DtmfDetector.process: expected shape ({self._channels}, n), "
                             f"got {x.shape}")
        held_now = (np.zeros(self._channels, dtype=bool) if held is None
                    else np.asarray(held, dtype=bool))
        if held_now.shape != (self._channels,):
            raise ValueError(f"DtmfDetector.process: held must have shape ({self._channels},),"
                             f" got {held_now.shape}")
        x = x.astype(np.float32, copy=bool(held_now.any()))
        if self._filler:  # forget stalls no segment can still reach back to
            oldest = self.samples_seen - FILLER_MEMORY
            self._filler = {ch: kept for ch, spans in self._filler.items()
                            if (kept := [sp for sp in spans if sp[1] > oldest])}
        if held_now.any():
            self._write_filler(x, held_now)
        data = np.concatenate([self._pending, x], axis=1)
        count = data.shape[1] // BLOCK_SIZE
        used = count * BLOCK_SIZE
        self._pending = data[:, used:].copy()
        self._recent = (x[:, -BLOCK_SIZE:].copy() if x.shape[1] >= BLOCK_SIZE else
                        np.concatenate([self._recent, x], axis=1)[:, -BLOCK_SIZE:])
        events: list[DtmfEvent] = []
        starts = self._seen + BLOCK_SIZE * np.arange(count, dtype=np.int64)
        suspect = np.zeros((count, self._channels), dtype=bool)
        reach = np.zeros((count, self._channels), dtype=np.int64)
        tail = np.full((count, self._channels), MASK_HANGOVER, dtype=np.int64)
        if count:
            blocks = data[:, :used].reshape(self._channels * count, BLOCK_SIZE)
            measures = _measure(blocks, self._config)
            long_reach = np.zeros(self._channels * count, dtype=np.int64)
            long_tail = np.full(self._channels * count, MASK_HANGOVER, dtype=np.int64)
            if self._config.suspect_method == "window":
                measures.suspect, long_reach, long_tail = self._long_window(
                    data[:, :used], measures, count)
                judged = measures.suspect
                measures.suspect = self._follow(measures, count)
                # A block only follow-on suspects covers itself and the masker's hangover.
                follow_tail = (MASK_HANGOVER if self._config.follow_tail_ms is None
                               else round(self._config.follow_tail_ms * SAMPLE_RATE / 1000))
                long_tail = np.where(judged, long_tail, follow_tail)
            elif measures.talkover is not None:
                measures.suspect = self._talkover(data[:, :used], measures, count)
                measures.suspect = self._follow(measures, count)
            for b in range(count):
                sel = slice(b, None, count)  # block b of every channel
                m = _BlockMeasures(
                    amp=measures.amp[sel], energy=measures.energy[sel],
                    hit_digit=measures.hit_digit[sel], suspect=measures.suspect[sel],
                )
                suspect[b] = m.suspect
                reach[b] = long_reach[sel]
                tail[b] = long_tail[sel]
                self._decide(int(starts[b]), m, events, self._mostly_filler(int(starts[b])))
                self._prev_amp = m.amp
            self._seen += used
        return DetectorOutput(events=events, block_starts=starts, block_size=BLOCK_SIZE,
                              suspect=suspect, reach=reach,
                              tail=tail if self._config.suspect_method == "window" else None)

    def _write_filler(self, x: npt.NDArray[np.float32], held: npt.NDArray[np.bool_]) -> None:
        """Replace held channels' samples with the key they were in continued, or silence."""
        seg = self._seg
        rows = np.flatnonzero(held)
        key = np.where((seg.digit[rows] >= 0) & (seg.misses[rows] == 0), seg.digit[rows],
                       key_in(self._recent[rows]))  # a key just starting has no hit yet
        x[rows] = 0.0
        keyed = key >= 0
        x[rows[keyed]] = continued_tones(self._recent[rows[keyed]], key[keyed], x.shape[1])
        first = self.samples_seen
        for ch in rows.tolist():
            self._filler.setdefault(ch, []).append((first, first + x.shape[1]))

    def _mostly_filler(self, start: int) -> npt.NDArray[np.bool_] | None:
        """Which channels' block at ``start`` is more filler than media (None: no channel has
        filler): its hit is the continuation's, not evidence of a key."""
        near = [(ch, spans) for ch, spans in self._filler.items() if spans[-1][1] > start]
        if not near:
            return None
        mostly = np.zeros(self._channels, dtype=bool)
        for ch, spans in near:
            mostly[ch] = 2 * _overlap(spans, start, start + BLOCK_SIZE) > BLOCK_SIZE
        return mostly

    def _filler_within(self, ch: npt.NDArray[np.int64], start: npt.NDArray[np.float64],
                       end: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Samples of filler between ``start`` and ``end`` of each channel in ``ch``."""
        return np.array([_overlap(self._filler.get(c, []), float(start[i]), float(end[i]))
                         for i, c in enumerate(ch.tolist())], dtype=np.float64)

    def _long_window(self, data: npt.NDArray[np.float32], m: _BlockMeasures, count: int
                     ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64],
                                npt.NDArray[np.int64]]:
        """The long-window suspicion of every block (flattened like ``m``): the three blocks
        ending with it, summed coherently at the DTMF frequencies, show a key as multimon-ng
        would see it over 40 ms (with margin), and the harmonic rule holds over the same span.
        The coherent sums cost a few complex multiplies per block; only windows that pass them
        are transformed for the neighbourhood, all in one product. Also each suspicion's
        reach (samples before its block's start that the suspicion covers) and tail (samples
        after its block's end)."""
        assert m.coherent is not None and m.total is not None
        cfg, state, c = self._config, self._talk, self._channels
        z = np.concatenate([state.long_z, m.coherent.reshape(c, count, _NTONES)], axis=1)
        e = np.concatenate([state.long_e, m.total.reshape(c, count)], axis=1)
        window = sum(z[:, k:k + count] * _LONG_ROTATION[k] for k in range(_LONG_BLOCKS))
        power = np.abs(window) ** 2  # (C, count, 8): (A·N/2)² for a sine of amplitude A
        energy = sum(e[:, k:k + count] for k in range(_LONG_BLOCKS)) * (_LONG / 2.0)
        order_low = np.sort(power[..., _LOW], axis=-1)
        order_high = np.sort(power[..., _HIGH], axis=-1)
        best_low, best_high = order_low[..., -1], order_high[..., -1]
        def level(dbm0: float) -> float:  # a tone at dbm0 filling the window, as |DFT|²
            return (dbm0_to_amplitude(dbm0) * _LONG / 2.0) ** 2

        weaker = np.minimum(best_low, best_high)
        pair = best_low + best_high
        loud = ((weaker >= level(cfg.window_min_level_dbm0))
                & (pair >= cfg.window_min_energy_share * energy))
        quiet = ((weaker >= level(cfg.window_quiet_min_level_dbm0))
                 & (pair >= cfg.window_quiet_min_energy_share * energy))
        twist = _power_ratio(cfg.suspect_max_twist_db)
        common = (best_high <= twist * best_low) & (best_low <= twist * best_high)

        def stands(db: float) -> npt.NDArray[np.bool_]:
            ratio = _power_ratio(db)
            return ((best_low >= ratio * order_low[..., -2])
                    & (best_high >= ratio * order_high[..., -2]))

        gate = common & (loud | quiet) & stands(cfg.window_relative_peak_db)
        accurate = np.zeros_like(gate)
        off_nominal = np.zeros_like(gate)
        off_key = np.zeros(gate.shape, dtype=np.int64)
        if (cfg.window_accurate_frequency_hz is not None
                or cfg.window_off_nominal_tolerance is not None):
            # Frequency offset of every tone from the phase advance between adjacent blocks.
            turned = [z[:, k:k + count] * _LONG_ROTATION[k] for k in range(_LONG_BLOCKS)]
            steps = [turned[k + 1] * np.conj(turned[k]) for k in range(_LONG_BLOCKS - 1)]
            advance = sum(steps)
            offset_hz = np.abs(np.angle(advance)) * SAMPLE_RATE / (2 * np.pi * BLOCK_SIZE)
        if cfg.window_off_nominal_tolerance is not None:
            off_nominal, off_key = _off_nominal_tier(turned, steps, advance,
                                                     np.asarray(energy, np.float64), cfg)
        if cfg.window_accurate_frequency_hz is not None:
            low_i = np.argmax(power[..., _LOW], axis=-1)[..., None]
            high_i = 4 + np.argmax(power[..., _HIGH], axis=-1)[..., None]
            worst_hz = np.maximum(np.take_along_axis(offset_hz, low_i, -1),
                                  np.take_along_axis(offset_hz, high_i, -1))[..., 0]
            accurate = (common & stands(cfg.window_accurate_relative_peak_db)
                        & (weaker >= level(cfg.window_min_level_dbm0))
                        & (pair >= cfg.window_accurate_min_energy_share * energy)
                        & (worst_hz <= cfg.window_accurate_frequency_hz))
        x = np.concatenate([state.long_x, data], axis=1)
        state.long_z, state.long_e = z[:, count:].copy(), e[:, count:].copy()
        state.long_x = x[:, x.shape[1] - _X_HISTORY:].copy()
        out = np.zeros((c, count), dtype=bool)
        ch, b = np.nonzero(gate | accurate)
        if ch.size:
            key = (np.argmax(power[ch, b][:, _LOW], axis=1) * 4
                   + np.argmax(power[ch, b][:, _HIGH], axis=1))
            starts = b * BLOCK_SIZE
            windows = x[ch[:, None], starts[:, None] + np.arange(_LONG)]
            low, high = _neighbour_margins(windows, key, _LONG_BASIS)
            best, worst = np.maximum(low, high), np.minimum(low, high)
            out[ch, b] = ((gate[ch, b]
                           & (best >= _power_ratio(cfg.window_best_neighbour_db))
                           & (worst >= _power_ratio(cfg.window_worst_neighbour_db)))
                          | (accurate[ch, b]
                             & (best >= _power_ratio(cfg.window_accurate_best_neighbour_db))))
        # Keys off nominal: their own key (found at the measured frequencies), the same
        # neighbourhood test as the second tier (every reference is ≥ 90 Hz from nominal, so
        # ≥ 61 Hz from a tone 1.75 % off: still over 2 bins of the 26 Hz Hann window).
        ch, b = np.nonzero(off_nominal & ~out)
        if ch.size:
            starts = b * BLOCK_SIZE
            windows = x[ch[:, None], starts[:, None] + np.arange(_LONG)]
            low, high = _neighbour_margins(windows, off_key[ch, b], _LONG_BASIS)
            out[ch, b] = (np.maximum(low, high)
                          >= _power_ratio(cfg.window_accurate_best_neighbour_db))
        reach = np.where(out, _LONG_REACH, 0)
        ms = SAMPLE_RATE // 1000
        tail = np.full((c, count), MASK_HANGOVER if cfg.window_tail_ms is None
                       else round(cfg.window_tail_ms * ms), dtype=np.int64)
        h = he = q = qe = None
        if m.halves is not None and m.half_total is not None:
            h = np.concatenate([state.half_z, m.halves.reshape(c, count, 2, _NTONES)], axis=1)
            he = np.concatenate([state.half_e, m.half_total.reshape(c, count, 2)], axis=1)
            state.half_z, state.half_e = h[:, count:].copy(), he[:, count:].copy()
            if m.quarters is not None and m.quarter_total is not None:
                q = np.concatenate([state.quarter_z, m.quarters.reshape(c, count, 2, _NTONES)],
                                   axis=1)
                qe = np.concatenate([state.quarter_e, m.quarter_total.reshape(c, count, 2)],
                                    axis=1)
                state.quarter_z, state.quarter_e = q[:, count:].copy(), qe[:, count:].copy()
            if m.eighths is not None and m.eighth_total is not None:
                z8 = m.eighths.reshape(c, count, _SEGMENTS, _NTONES)
                e8 = m.eighth_total.reshape(c, count, _SEGMENTS)
                # Each block's sums of its first 0..8 eighths, computed once and kept.
                g = np.concatenate([state.eighth_z, np.concatenate(
                    [np.zeros_like(z8[:, :, :1]), np.cumsum(z8, axis=2)], axis=2)], axis=1)
                ge = np.concatenate([state.eighth_e, np.concatenate(
                    [np.zeros_like(e8[..., :1]), np.cumsum(e8, axis=2)], axis=2)], axis=1)
                state.eighth_z, state.eighth_e = g[:, count:].copy(), ge[:, count:].copy()
                windows = _exact_tier(g, ge, cfg)
                span = _EXACT_LONG  # a window's length: a whole-window cover starts there
            else:
                windows = _decoder_tier(h, he, cfg, q, qe)
                span = _LONG
            (end, end_key), (mid, mid_key) = windows[BLOCK_SIZE], windows[_HALF]
            # Where in the block the earliest and the latest suspected window ends.
            ends = sorted(windows)
            first_end = np.full((c, count), BLOCK_SIZE + 1, dtype=np.int64)
            last_end = np.zeros((c, count), dtype=np.int64)
            for p in reversed(ends):
                first_end = np.where(windows[p][0], p, first_end)
            for p in ends:
                last_end = np.where(windows[p][0], p, last_end)
            heard = last_end > 0
            if cfg.window_decoder_consecutive >= 2:
                # Two windows in a row (half a block apart) show the same key: the window
                # ending at the previous block's end and this block's middle, or this block's
                # middle and its end. A key lasts; speech that poses as one for a single
                # window does not. Judged 6.4 ms later, while the packets are still held.
                prev_end = np.concatenate([state.dec_end[:, None], end[:, :-1]], axis=1)
                prev_key = np.concatenate([state.dec_end_key[:, None], end_key[:, :-1]],
                                          axis=1)
                state.dec_end, state.dec_end_key = end[:, -1].copy(), end_key[:, -1].copy()
                early = mid & prev_end & (mid_key == prev_key)
                end = end & mid & (end_key == mid_key)
                mid = early
                reach = np.where(mid, _MID_REACH + _HALF,
                                 np.where(end, _MID_REACH, reach))
                heard = end | mid
            elif cfg.window_decoder_cover_ms is None:
                # The whole window: it starts _LONG − (BLOCK_SIZE − end) before the block.
                reach = np.where(heard, np.maximum(reach, span - BLOCK_SIZE - first_end),
                                 reach)
            else:
                # Only the last part of the judged window (and a little after it) where the
                # decoder tier alone suspects; with another tier the wider cover stands. A
                # window ending p samples into the block ends at s + p; the masker's span is
                # [s − widen − reach, s + 102 + tail): from the earliest suspected window's
                # end less the cover to the latest one's end plus the tail.
                cover = round(cfg.window_decoder_cover_ms * ms)
                after = round(cfg.window_decoder_tail_ms * ms)
                own = heard & ~out
                reach = np.where(own, cover - MASK_WIDEN_BEFORE - first_end,
                                 np.where(heard, np.maximum(reach,
                                                            span - BLOCK_SIZE - first_end),
                                          reach))
                tail = np.where(own, after - (BLOCK_SIZE - last_end), tail)
            out |= heard
        if m.spandsp is not None and m.key is not None:
            # Two consecutive blocks spandsp would call the same key: suspect the second,
            # covering both (the masker's onset allowance spans the first).
            hit = np.where(m.spandsp, m.key, -1).reshape(c, count)
            prev = np.concatenate([state.sp_hit[:, None], hit[:, :-1]], axis=1)
            state.sp_hit = hit[:, -1].copy()
            two = (hit >= 0) & (hit == prev) & ~out
            reach = np.where(two, 0, reach)
            tail = np.where(two, 0, tail)
            if (cfg.window_spandsp_alignments > 1 and h is not None and he is not None):
                # The same question on blocks a decoder starting elsewhere would use: ending
                # half a block (and a quarter, three quarters) into each of ours, from the
                # half- and quarter-block DFTs. A pair ending p samples in spans
                # [s + p − 204, s + p): reach 204 − p less the masker's onset allowance.
                for p, shifted in _spandsp_shifted(h, he, q, qe, cfg).items():
                    more = shifted & ~out
                    start = np.where(more, 2 * BLOCK_SIZE - p - MASK_WIDEN_BEFORE, 0)
                    stop = np.where(more, p - BLOCK_SIZE, 0)
                    reach = np.where(more, np.where(two, np.maximum(reach, start), start),
                                     reach)
                    tail = np.where(more, np.where(two, np.maximum(tail, stop), stop), tail)
                    two |= more
            out |= two
        return out.reshape(-1), reach.reshape(-1), tail.reshape(-1)

    def _talkover(self, data: npt.NDArray[np.float32], m: _BlockMeasures,
                  count: int) -> npt.NDArray[np.bool_]:
        """The talk-over suspicion of every block (flattened like ``m``): the block and the one
        before it show the same key passing the per-block checks, the key's tones carry the
        window's share, and both stand out of their neighbourhood over the two blocks. Only
        the (rare) windows that get that far are transformed, all in one product."""
        assert m.key is not None and m.talkover is not None
        assert m.pair is not None and m.total is not None and m.strong is not None
        cfg, state, c = self._config, self._talk, self._channels
        key, cand = m.key.reshape(c, count), m.talkover.reshape(c, count)
        strong = m.strong.reshape(c, count)
        prev_strong = np.concatenate([state.strong[:, None], strong[:, :-1]], axis=1)
        pair, total = m.pair.reshape(c, count), m.total.reshape(c, count)
        prev_key = np.concatenate([state.key[:, None], key[:, :-1]], axis=1)
        prev_cand = np.concatenate([state.candidate[:, None], cand[:, :-1]], axis=1)
        prev_pair = np.concatenate([state.pair[:, None], pair[:, :-1]], axis=1)
        prev_total = np.concatenate([state.total[:, None], total[:, :-1]], axis=1)
        two = (cand & prev_cand & (key == prev_key)
               & (pair + prev_pair >= cfg.talkover_min_energy_share * (total + prev_total)))
        clean = m.suspect.reshape(c, count)
        out = np.zeros((c, count), dtype=bool)
        ch, b = np.nonzero(two | clean)
        if ch.size:
            blocks = data.reshape(c, count, BLOCK_SIZE)
            prev = np.where((b == 0)[:, None], state.block[ch],
                            blocks[ch, np.maximum(b - 1, 0)])
            windows = np.concatenate([prev, blocks[ch, b]], axis=1)
            # The margin each path asks for; a window on several paths needs the smallest.
            margin = np.full(ch.size, np.inf)
            margin = np.where(clean[ch, b], cfg.suspect_clean_neighbour_db, margin)
            on_two = two[ch, b]
            strong_two = on_two & strong[ch, b] & prev_strong[ch, b]
            margin = np.where(on_two, np.minimum(margin, cfg.talkover_neighbour_db), margin)
            margin = np.where(strong_two, np.minimum(margin, cfg.talkover_strong_neighbour_db),
                              margin)
            out[ch, b] = _stands_out(windows, key[ch, b], 10.0 ** (margin / 10.0))
        state.key, state.candidate = key[:, -1].copy(), cand[:, -1].copy()
        state.strong = strong[:, -1].copy()
        state.pair, state.total = pair[:, -1].copy(), total[:, -1].copy()
        state.block = data[:, -BLOCK_SIZE:].copy()
        return out.reshape(-1)

    def _follow(self, m: _BlockMeasures, count: int) -> npt.NDArray[np.bool_]:
        """Suspicion carried forward block by block (vectorised over channels) while the
        suspected key's tones persist."""
        assert m.key is not None and m.follow is not None
        c, state = self._channels, self._talk
        key, follow = m.key.reshape(c, count), m.follow.reshape(c, count)
        suspect = m.suspect.reshape(c, count).copy()
        held, missed = state.held, state.missed
        bridge = self._config.follow_bridge_blocks
        for b in range(count):
            suspect[:, b] |= follow[:, b] & (key[:, b] == held)
            missed = np.where(suspect[:, b], 0, missed + 1)
            held = np.where(suspect[:, b], key[:, b], np.where(missed > bridge, -1, held))
        state.held, state.missed = held, missed
        return suspect.reshape(-1)

    # --- the decision logic: vectorised except where a digit starts or ends -----------------

    def _cover(self, amp: npt.NDArray[np.float64], ch: npt.NDArray[np.int64],
               digit: npt.NDArray[np.int64], reference: npt.NDArray[np.float64]) -> npt.NDArray:
        """Fraction of a block the key's tones fill, from coherent amplitude vs a full block.

        The smaller of the two tones' fractions: a real key's two tones start and stop together,
        while music that merely has energy near one of them must not lengthen a segment.
        """
        lo, hi = _tone_indices(digit)
        ratio = np.minimum(amp[ch, lo] / np.maximum(reference[:, 0], _EPS),
                           amp[ch, hi] / np.maximum(reference[:, 1], _EPS))
        return np.clip(ratio, 0.0, 1.0)

    def _decide(self, start: int, m: _BlockMeasures, events: list[DtmfEvent],
                filler: npt.NDArray[np.bool_] | None = None) -> None:
        seg = self._seg
        end = start + BLOCK_SIZE
        hit = m.hit_digit >= 0
        tracking = seg.digit >= 0
        same = hit & (m.hit_digit == seg.digit)
        other = hit & tracking & ~same
        missed = tracking & ~same

        # A miss right after a hit: measure how much of this block the tone still fills.
        first_miss = np.flatnonzero(missed & (seg.misses == 0))
        if first_miss.size:
            mean_amp = seg.amp_sum[first_miss] / seg.hits[first_miss, None]
            seg.post_cover[first_miss] = self._cover(m.amp, first_miss, seg.digit[first_miss],
                                                     mean_amp)
            self._confirm(first_miss, with_tail=True, events=events)
        seg.misses[missed] += 1
        ended = np.flatnonzero(missed & ((seg.misses > self._config.bridge_blocks) | other))
        for ch in ended:
            self._finish(int(ch), events)

        # Hits continuing a segment.
        cont = np.flatnonzero(same)
        if cont.size:
            lo, hi = _tone_indices(seg.digit[cont])
            seg.hits[cont] += 1
            if filler is not None:
                seg.filler_hits[cont] += filler[cont]
            seg.misses[cont] = 0
            seg.last_hit_end[cont] = end
            seg.amp_sum[cont] += np.stack([m.amp[cont, lo], m.amp[cont, hi]], axis=1)
            seg.energy_sum[cont] += np.stack([m.energy[cont, lo], m.energy[cont, hi]], axis=1)
            self._confirm(cont[~seg.reported[cont]], with_tail=False, events=events)

        # Hits starting a segment (nothing tracked, or another key took over).
        new = np.flatnonzero(hit & (seg.digit < 0))
        if new.size:
            digit = m.hit_digit[new]
            lo, hi = _tone_indices(digit)
            first_amp = np.stack([m.amp[new, lo], m.amp[new, hi]], axis=1)
            pre = self._cover(self._prev_amp, new, digit, first_amp)
            seg.digit[new] = digit
            seg.start[new] = start - pre * BLOCK_SIZE
            seg.hits[new] = 1
            seg.filler_hits[new] = 0 if filler is None else filler[new]
            seg.misses[new] = 0
            seg.last_hit_end[new] = end
            seg.amp_sum[new] = first_amp
            seg.energy_sum[new] = np.stack([m.energy[new, lo], m.energy[new, hi]], axis=1)
            seg.reported[new] = False
            self._confirm(new, with_tail=False, events=events)

    def _confirm(self, ch: npt.NDArray[np.int64], with_tail: bool,
                 events: list[DtmfEvent]) -> None:
        """Report the digits of channels ``ch`` whose estimated duration is now long enough."""
        seg = self._seg
        if not ch.size:
            return
        ch = ch[~seg.reported[ch]]
        duration = seg.last_hit_end[ch] - seg.start[ch]
        if self._filler:  # a stall's filler is not the tone's duration
            duration = duration - self._filler_within(ch, seg.start[ch], seg.last_hit_end[ch])
        if with_tail:
            duration = duration + seg.post_cover[ch] * BLOCK_SIZE
        long_enough = (duration >= self._min_duration) & (
            seg.hits[ch] >= self._config.min_hit_blocks) & (seg.hits[ch] > seg.filler_hits[ch])
        for c in ch[long_enough]:
            seg.reported[c] = True
            events.append(self._event(int(c), "on", seg.start[c]))

    def _finish(self, ch: int, events: list[DtmfEvent]) -> None:
        seg = self._seg
        if seg.reported[ch]:
            end = seg.last_hit_end[ch] + seg.post_cover[ch] * BLOCK_SIZE
            events.append(self._event(ch, "off", end))
        seg.clear(ch)

    def _event(self, ch: int, kind: Literal["on", "off"], global_sample: float) -> DtmfEvent:
        seg = self._seg
        low_e, high_e = seg.energy_sum[ch] / max(int(seg.hits[ch]), 1)
        return DtmfEvent(
            channel=ch,
            digit=DIGITS[int(seg.digit[ch])],
            kind=kind,
            sample=max(0, round(global_sample) - int(self._origin[ch])),
            low_dbm0=round(_energy_dbm0(low_e), 2),
            high_dbm0=round(_energy_dbm0(high_e), 2),
        )


def detect_digits(samples: npt.ArrayLike, config: DtmfConfig | None = None) -> list[DtmfEvent]:
    """All digit events in one whole 8 kHz signal (16-bit scale), closing any digit at the end."""
    x = np.asarray(samples, dtype=np.float32).reshape(1, -1)
    detector = DtmfDetector(1, config)
    tail = np.zeros((1, BLOCK_SIZE * (detector.config.bridge_blocks + 2)), dtype=np.float32)
    out = detector.process(x)
    return out.events + detector.process(tail).events


def digits_in(samples: npt.ArrayLike, config: DtmfConfig | None = None) -> str:
    """The keys found in a whole signal, as a string (for tests and audits)."""
    return "".join(e.digit for e in detect_digits(samples, config) if e.kind == "on")
