"""proxy.demo.multimon: multimon-ng decodes keys from 8 kHz audio (an independent decoder)."""

from __future__ import annotations

import numpy as np

from dsp.tones import dtmf_sequence, sine
from proxy.demo.multimon import multimon_detect


def test_multimon_recovers_a_keyed_card_number() -> None:
    audio = dtmf_sequence("4111111111111111", tone_ms=70, gap_ms=60, lead_ms=100, tail_ms=100,
                          low_dbm0=-10.0)
    assert multimon_detect(np.rint(audio).astype(np.int16)) == "4111111111111111"


def test_multimon_finds_no_key_in_an_off_band_monotone() -> None:
    assert multimon_detect(np.rint(sine(400.0, 1000, -10.0)).astype(np.int16)) == ""
