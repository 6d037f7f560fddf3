"""Pieces of the load generator that need no relay: call schedule, sampling, RFC 3550 jitter,
RFC 4733 keying packets, and reading an agent leg back (SRTP) for the leak check."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest

from dsp import g711
from loadtest.media import rfc3550_jitter
from loadtest.runner import _spread, agent_leg_audio, schedule
from loadtest.scenario import parse_scenario
from loadtest.sources import EVENT_PT, build_bank, keying_events, keying_segment
from proxy.control import sdes
from proxy.demo.spandsp import spandsp_detect
from proxy.media.srtp import SrtpSender


def test_first_calls_spread_over_the_ramp_then_each_replaces_an_ended_one() -> None:
    s = parse_scenario({"calls": {"total": 6, "concurrency": 3, "ramp_seconds": 3,
                                  "hold_seconds": 10}})
    assert schedule(s) == pytest.approx([0, 1, 2, 10.2, 11.2, 12.2])


@pytest.mark.parametrize(("share", "chosen"), [(0.0, 0), (0.1, 2), (0.5, 10), (1.0, 20)])
def test_a_share_of_calls_is_chosen_evenly(share: float, chosen: int) -> None:
    picks = _spread(20, share)
    assert sum(picks) == chosen
    if 0 < chosen < 20:  # evenly: never two in a row at these shares
        assert not any(a and b for a, b in itertools.pairwise(picks))


def test_constant_transit_has_no_jitter_and_lost_packets_are_skipped() -> None:
    assert rfc3550_jitter(np.array([0.05, 0.05, np.nan, 0.05])) == 0.0


def test_jitter_converges_on_the_mean_transit_difference() -> None:
    # Transit alternating 0 / 10 ms: |D| = 10 ms every packet; J -> 10 ms (1/16 per step).
    transit = np.tile([0.0, 0.010], 200)
    assert rfc3550_jitter(transit) == pytest.approx(0.010, rel=1e-3)
    assert rfc3550_jitter(transit[:2]) == pytest.approx(0.010 / 16)


def test_each_key_is_updates_then_three_end_packets_with_one_timestamp() -> None:
    cards = parse_scenario({"cards": {"tone_ms": 80, "gap_ms": 80}}).cards
    _, windows = keying_segment("5#", cards, inband=False)
    events = keying_events("5#", windows)
    packets = [(tick, p) for tick, ps in sorted(events.items()) for p in ps]
    first = [p for _, p in packets if struct.unpack("!BBH", p.payload)[0] == 5]
    assert len(first) == 4 + 3 and first[0].marker and not any(p.marker for p in first[1:])
    assert {p.timestamp for p in first} == {windows[0][0]}
    assert [struct.unpack("!BBH", p.payload)[1] & 0x80 for p in first] == [0] * 4 + [0x80] * 3
    assert struct.unpack("!BBH", first[-1].payload)[2] == 4 * 160  # 80 ms


def test_the_bank_keys_the_card_in_band_at_the_levels_asked() -> None:
    bank = build_bank(parse_scenario({"media": {"caller_audio": "noise"},
                                      "cards": {"brands": ["visa"]}}))
    keying = bank.keyings["visa"]
    codes = bank.codes[keying.offset:keying.offset + keying.ticks * 160]
    assert spandsp_detect(g711.decode(codes, "ulaw")).replace("#", "") == \
        keying.keys.replace("#", "")
    assert keying.digits == 16 + 4 + 3


def test_agent_leg_is_rebuilt_on_the_callers_timeline_from_srtp() -> None:
    key = sdes.generate("AES_CM_128_HMAC_SHA1_80").params
    sender = SrtpSender(key)
    tone = (8000 * np.sin(np.arange(320) * 0.3)).astype(np.int16)
    codes = g711.encode(tone, "ulaw").tobytes()
    wires = []
    for seq, ts in ((1, 160), (3, 480)):  # tick 2 lost
        payload = codes[(ts // 160 - 1) * 160:(ts // 160) * 160] if ts == 160 else codes[160:]
        wires.append(sender.protect(struct.pack("!BBHII", 0x80, 0, seq, ts, 7) + payload))
    wires.append(sender.protect(struct.pack("!BBHII", 0x80, EVENT_PT, 4, 480, 7) +
                                b"\x05\x0a\x00\xa0"))
    audio, heard, events = agent_leg_audio(wires, key, 0, "PCMU", ticks=5)
    assert (heard, events) == (2, 1)
    assert audio.size == 800
    assert np.all(audio[:160] == 0) and np.all(audio[320:480] == 0)  # before and lost
    assert np.abs(audio[160:320].astype(int) - tone[:160]).max() < 300
