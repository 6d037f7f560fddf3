"""Masking under talk-over (issue 16): a card keyed while speech, music or noise plays under it.

A seeded, bounded subset of `python -m loadtest.talkover`: test cards keyed at −12 dBm0 per tone
with espeak-ng and codec2 speech, MIDI music and white noise mixed under them at +3, 0 and −3 dB
(interferer power against the tone pair), µ-law and A-law, each through the real MaskingPipeline.
spandsp and multimon-ng decode the caller's audio and the agent leg. The energy-share suspicion
the long-window one replaced runs on the same mixtures as the control: it must leak there, which
proves the material bites. The same mixtures run again with every key off nominal as real phones
send them (±1.5 %, Q.24 twist); the mixtures the full sweep leaked on before the decoder tier,
and before the tiers judged the decoders' own alignments (with the decoders started 0, 25, 51
and 77 samples in), must leak nothing now, each with the suspicion as it was before as its
control (which must leak). The full sweep leaks nothing at those four offsets: no strict xfail.
"""

from __future__ import annotations

from dataclasses import replace
from difflib import SequenceMatcher

import numpy as np
import pytest

from dsp import g711, tones
from dsp.dtmf import DtmfConfig
from loadtest import talkover
from proxy.demo.leak import leaked_ms_per_window
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from proxy.media.types import DigitEvent

RATIOS = (3.0, 0.0, -3.0)
ENERGY_SHARE = replace(DtmfConfig(), suspect_method="energy_share")
# The long window as it was before it judged the decoders' own alignments: 38.25 ms windows at
# every half block for the decoder tier (twist 5 dB), spandsp's question on the receiver's
# blocks only, the off-nominal tier on. The older controls below are built on it.
BEFORE_ALIGNMENTS = replace(DtmfConfig(), window_decoder_windows=2, window_spandsp_alignments=1,
                            window_off_nominal_tolerance=0.0175,
                            window_decoder_max_twist_db=5.0)
# ...as it was before its decoder tier: the nominal second tier instead, the off-nominal
# tier's drift limit at 1 Hz, no spandsp tier.
BEFORE_DECODER_TIER = replace(BEFORE_ALIGNMENTS, window_decoder_min_energy_share=None,
                              window_accurate_frequency_hz=4.0,
                              window_off_nominal_max_drift_hz=1.0,
                              window_spandsp_min_energy_share=None)
# ...and as it was before the spandsp tier and the cheaper covers (a suspicion covered its
# whole window, a block of onset allowance and a block of hangover).
BEFORE_SPANDSP_TIER = replace(BEFORE_ALIGNMENTS, window_spandsp_min_energy_share=None,
                              window_decoder_cover_ms=None, window_tail_ms=None,
                              follow_tail_ms=None)


@pytest.fixture(scope="module")
def items() -> list[talkover.Mixture]:
    return talkover.mixtures(quick=True, ratios=RATIOS)


@pytest.fixture(scope="module")
def window(items: list[talkover.Mixture]) -> list[talkover.Outcome]:
    return talkover.run_sweep(items, DtmfConfig())


@pytest.fixture(scope="module")
def energy_share(items: list[talkover.Mixture]) -> list[talkover.Outcome]:
    return talkover.run_sweep(items, ENERGY_SHARE)


def _agent_digits(outcomes: list[talkover.Outcome]) -> int:
    return sum(len(o.agent_spandsp) + len(o.agent_multimon) for o in outcomes if o.audible)


def test_window_suspicion_leaks_far_fewer_digits_than_energy_share(
        window: list[talkover.Outcome], energy_share: list[talkover.Outcome]) -> None:
    for kind in ("speech", "music", "noise"):
        assert any(o.audible for o in window if o.mixture.kind == kind), kind
    new, old = _agent_digits(window), _agent_digits(energy_share)
    print(f"\ntalk-over subset ({len(window)} mixtures): digits decoded on the agent leg "
          f"window {new}, energy share {old}")
    assert old >= 40, "the control leaks little: the mixtures do not bite"
    assert new * 10 <= old


def test_no_digit_reaches_the_agent_wherever_a_decoder_hears_one(
        window: list[talkover.Outcome]) -> None:
    """The issue's rule on the seeded subset (it leaked 16 of 54 mixtures before the
    long-window suspicion). The full sweep (`python -m loadtest.talkover`) still finds a few
    leaking mixtures among its 707: see the README and the strict expected failure below."""
    assert sum(o.audible for o in window) >= 50
    leaky = [o for o in window if o.audible and o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# Mixtures the full sweep leaked on before the decoder tier (19 of 707 exact, 12 of 660 off
# nominal, all to multimon-ng): speech and music whose harmonics crowd both tones, so the
# harmonic rule refused the key while multimon-ng still decoded it.
LEAKED_BEFORE = {
    ("espeak-pl", 6.0, "alaw"), ("codec2-g3plx", 3.0, "alaw"),
    ("midi-moo_redfarn", 0.0, "ulaw"), ("midi-modern_motion", 6.0, "ulaw"),
}
LEAKED_BEFORE_OFF_NOMINAL = {
    ("espeak-it_f4", -6.0, "alaw"), ("midi-busy_schedule", 0.0, "ulaw"),
    ("midi-city_blues_redfarn", 3.0, "ulaw"),
}


def test_the_mixtures_the_full_sweep_leaked_on_before_the_decoder_tier_leak_nothing() -> None:
    items = talkover.mixtures(quick=False, only=lambda *key: key in LEAKED_BEFORE)
    items += talkover.mixtures(quick=False, off_nominal=True,
                               only=lambda *key: key in LEAKED_BEFORE_OFF_NOMINAL)
    assert len(items) == len(LEAKED_BEFORE) + len(LEAKED_BEFORE_OFF_NOMINAL)
    control = talkover.run_sweep(items, BEFORE_DECODER_TIER)
    assert sum(o.audible and o.leaked for o in control) >= len(items) - 1, "does not bite"
    outcomes = talkover.run_sweep(items)
    assert all(o.audible for o in outcomes)
    leaky = [o for o in outcomes if o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# What the full sweep leaked on before the tiers judged the decoders' own alignments: with
# the decoders from the first sample, one G.711 mixture (a key's last 17 ms and the speech
# after it fill 40 % of one multimon-ng window, between two of the half-block windows)...
LEAKED_BEFORE_ALIGNMENTS = {("espeak-fi", 6.0, "ulaw")}


def test_the_mixture_the_full_sweep_leaked_on_before_the_alignments_leaks_nothing() -> None:
    items = talkover.mixtures(quick=False, only=lambda *key: key in LEAKED_BEFORE_ALIGNMENTS)
    assert len(items) == len(LEAKED_BEFORE_ALIGNMENTS)
    control = talkover.run_sweep(items, BEFORE_ALIGNMENTS)
    assert all(o.audible and o.leaked for o in control), "does not bite"
    outcomes = talkover.run_sweep(items)
    assert all(o.audible for o in outcomes)
    leaky = [o for o in outcomes if o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# ...and with both decoders started later into both legs, so spandsp's blocks straddle the
# receiver's and multimon-ng's windows fall elsewhere (a real agent's decoders start
# anywhere): 25 samples later 5 mixtures, half a block (51) later 6, 77 later 3 (all but two
# to multimon-ng; three are multimon-ng's talk-off on the interferer alone, before the card).
# (source, ratio, codec, keys off nominal).
LEAKED_LATER_BEFORE_ALIGNMENTS = {
    25: {("midi-train_filled_with_cash", -3.0, "alaw", True),
         ("codec2-ve9qrp_10s", 0.0, "gsm", False), ("espeak-fr", -6.0, "amr-nb", False),
         ("codec2-kristoff", 10.0, "gsm", True), ("codec2-ve9qrp_10s", 0.0, "gsm", True)},
    51: {("midi-moo_redfarn", 3.0, "alaw", False), ("espeak-fi", 0.0, "amr-nb", False),
         ("midi-the_hobo_redfarn", 0.0, "amr-nb", False),
         ("midi-ttsong_iv_imuh3", 0.0, "amr-nb", False), ("espeak-fi", 0.0, "amr-nb", True),
         ("midi-slow_neasy_redfarn", 6.0, "amr-nb", True)},
    77: {("espeak-fr_f2", -3.0, "alaw", False), ("midi-say_what_redfarn", -3.0, "amr-nb", False),
         ("codec2-ve9qrp_10s", 6.0, "amr-nb", True)},
}


@pytest.mark.parametrize("offset", sorted(LEAKED_LATER_BEFORE_ALIGNMENTS))
def test_the_mixtures_that_leaked_to_decoders_starting_later_leak_nothing(offset: int) -> None:
    names = LEAKED_LATER_BEFORE_ALIGNMENTS[offset]
    items = []
    for off in (False, True):
        items += talkover.mixtures(quick=False, mobile=talkover.MOBILE_CODECS, off_nominal=off,
                                   only=lambda *key, off=off: (*key, off) in names)
    assert len(items) == len(names)
    control = talkover.run_sweep(items, BEFORE_ALIGNMENTS, decoder_offset=offset)
    assert all(o.audible and o.leaked for o in control), "does not bite"
    outcomes = talkover.run_sweep(items, decoder_offset=offset)
    assert all(o.audible for o in outcomes)
    leaky = [o for o in outcomes if o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# --- keys off nominal, as real phones send them (issue 16 follow-up) -----------------------

@pytest.fixture(scope="module")
def off_items() -> list[talkover.Mixture]:
    return talkover.mixtures(quick=True, ratios=RATIOS, off_nominal=True)


def test_off_nominal_mixtures_are_the_exact_ones_with_their_keys_detuned(
        items: list[talkover.Mixture], off_items: list[talkover.Mixture]) -> None:
    """Same cards, timing, interferer stretch and level (so figures stay comparable); every
    key's tones within ±1.5 % and twist within Q.24's −8..+4 dB, some right on ±1.0/±1.5 %."""
    assert len(off_items) == len(items)
    for exact, off in zip(items, off_items, strict=True):
        assert not exact.off_nominal and off.off_nominal
        assert (off.card, off.windows, off.source) == (exact.card, exact.windows, exact.source)
        assert np.array_equal(off.under, exact.under)
        assert len(off.detune) == len(off.card)
    errors = np.array([(lo, hi) for m in off_items for lo, hi, _ in m.detune])
    twists = np.array([t for m in off_items for _, _, t in m.detune])
    assert np.abs(errors).max() <= talkover.OFF_NOMINAL_MAX
    assert np.isclose(np.abs(errors), 0.015).any() and np.isclose(np.abs(errors), 0.01).any()
    assert (np.abs(errors) > 0.005).mean() > 0.5
    assert twists.min() >= -8.0 and twists.max() <= 4.0


def test_no_off_nominal_digit_reaches_the_agent_wherever_a_decoder_hears_one(
        off_items: list[talkover.Mixture]) -> None:
    """The issue's rule on the same seeded subset with its keys off nominal."""
    outcomes = talkover.run_sweep(off_items)
    assert sum(o.audible for o in outcomes) >= 45
    assert sum(bool(o.caller_spandsp) for o in outcomes) >= 30  # spandsp hears them too
    leaky = [o for o in outcomes if o.audible and o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# Off-nominal mixtures of the full sweep on which spandsp decoded a key from the agent leg
# before the off-nominal tier (tones up to 1.5 % off lose most of their power summed at
# nominal over 38 ms; spandsp's 12.75 ms blocks hear them whole).
SPANDSP_LEAKED_OFF_NOMINAL = {
    ("espeak-en-gb-x-rp_m3", -3.0, "ulaw"), ("espeak-fr", 10.0, "ulaw"),
    ("codec2-hts", 3.0, "alaw"), ("midi-ttsong_iv_imuh3", -6.0, "alaw"),
}


def test_off_nominal_keys_spandsp_heard_through_the_nominal_tiers_are_masked() -> None:
    items = talkover.mixtures(quick=False, off_nominal=True,
                              only=lambda *key: key in SPANDSP_LEAKED_OFF_NOMINAL)
    assert len(items) == len(SPANDSP_LEAKED_OFF_NOMINAL)
    # Control: neither the off-nominal tier nor the spandsp tier (each masks them alone).
    control = talkover.run_sweep(items, replace(DtmfConfig(), window_off_nominal_tolerance=None,
                                                window_spandsp_min_energy_share=None))
    assert sum(o.audible and bool(o.agent_spandsp) for o in control) >= 3, "does not bite"
    outcomes = talkover.run_sweep(items)
    assert all(o.audible for o in outcomes)
    leaky = [o for o in outcomes if o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


# Keys off nominal through a mobile codec: what the full sweep leaked on before the spandsp
# tier — spandsp heard two (GSM-FR and AMR-NB bend the tones' phase, so the off-nominal tier's
# steadiness test refuses them; the spandsp tier asks spandsp's own question), multimon-ng one.
LEAKED_BEFORE_MOBILE_OFF_NOMINAL = {
    ("codec2-kristoff", -6.0, "gsm"), ("espeak-nl_m2", -3.0, "amr-nb"),
    ("midi-careless_perc_redfarn", 3.0, "gsm"),
}


def test_the_mobile_off_nominal_mixtures_the_full_sweep_leaked_on_leak_nothing() -> None:
    items = talkover.mixtures(quick=False, mobile=talkover.MOBILE_CODECS, off_nominal=True,
                              only=lambda *key: key in LEAKED_BEFORE_MOBILE_OFF_NOMINAL)
    assert len(items) == len(LEAKED_BEFORE_MOBILE_OFF_NOMINAL)
    control = talkover.run_sweep(items, BEFORE_SPANDSP_TIER)
    assert sum(o.audible and o.leaked for o in control) >= 2, "does not bite"
    outcomes = talkover.run_sweep(items)
    assert all(o.audible for o in outcomes)
    leaky = [o for o in outcomes if o.leaked]
    assert not leaky, f"{len(leaky)} mixtures leak"


def test_speech_well_below_the_tones_leaks_nothing_and_every_key_is_captured() -> None:
    """Speech and noise 10 dB under the tones: nothing reaches the agent, and the receiver
    reports the card's keys to the pipeline's digit stream (capture follows)."""
    items = [m for m in talkover.mixtures(quick=True, ratios=(-10.0,), laws=("ulaw",))
             if m.kind != "music"]
    events: list[DigitEvent] = []
    heard = talkover.mask(items, events=events)
    for i, (m, agent) in enumerate(zip(items, heard, strict=True)):
        caller = spandsp_detect(m.audio)
        heard_card = len(caller) >= len(m.card) - 2  # spandsp does hear the card
        assert heard_card, m.source
        silent = spandsp_detect(agent) == "" and multimon_detect(agent) == ""
        assert silent, m.source
        found = "".join(e.digit for e in events if e.stream_id == f"m{i}")
        # Compared as counts so a failure never prints the card. The receiver's digit decision
        # is untouched by this work; under speech it misses or splits a key now and then (its
        # 85 % energy-share test: measured here, up to 2 of 16 keys at −10 dB).
        matched = sum(b.size for b in SequenceMatcher(None, found, m.card).get_matching_blocks())
        captured = matched >= len(m.card) - 2 and len(found) <= len(m.card) + 1
        assert captured, f"{m.source}: {len(found)} keys reported, {matched} matched"


@pytest.mark.parametrize(("tone_ms", "dbm0"), [(20, -20.0), (100, -40.0), (60, -3.0)])
def test_clean_short_and_quiet_keys_are_masked_completely(tone_ms: int, dbm0: float) -> None:
    """No interferer: what the energy-share rule masked, the long-window suspicion masks too —
    short tones, quiet tones, loud tones: 0 ms of DTMF energy above −45 dBm0 per key."""
    card = talkover.CARDS[0]
    rng = np.random.default_rng(tone_ms)
    parts, windows, pos = [np.zeros(4000)], [], 4000
    for key in card:
        tone = tones.dtmf_tone(key, tone_ms, low_dbm0=dbm0)
        gap = np.zeros(int(rng.integers(400, 800)))
        parts += [tone, gap]
        windows.append((pos, pos + tone.size))
        pos += tone.size + gap.size
    parts.append(np.zeros(4000))
    audio = g711.round_trip(np.concatenate(parts), "ulaw").astype(np.float64)
    mixture = talkover.Mixture("clean", "none", -99.0, "ulaw", card, audio, tuple(windows),
                               np.zeros(audio.size))
    agent = talkover.mask([mixture])[0]
    leaks = leaked_ms_per_window(agent, [(s - 160, e + 160) for s, e in windows])
    assert max(leaks) == 0.0
    assert spandsp_detect(agent) == "" and multimon_detect(agent) == ""
    assert np.any(agent != 0.0)  # the agent leg did carry audio: the masker's replacement


@pytest.mark.parametrize("codec", talkover.MOBILE_CODECS)
def test_a_mobile_callers_clean_keys_are_masked_completely(codec: str) -> None:
    """A card keyed on a mobile phone (GSM-FR or AMR-NB round trip through sox, then µ-law):
    a decoder hears it from the caller (AMR-NB bends the tones enough that spandsp loses most
    keys; multimon-ng hears them), neither decoder from the agent leg, which does carry audio."""
    card = talkover.CARDS[1]
    mixture = talkover.mix("clean", "none", np.zeros(20 * 8000), 0.0, "ulaw", card, -12.0,
                           seed=16, mobile=codec)
    assert mixture.mobile == codec
    heard_sp, heard_mm = spandsp_detect(mixture.audio), multimon_detect(mixture.audio)
    assert max(len(heard_sp), len(heard_mm)) >= len(card) - 2
    agent = talkover.mask([mixture])[0]
    assert spandsp_detect(agent) == "" and multimon_detect(agent) == ""
    assert np.any(agent != 0.0)
