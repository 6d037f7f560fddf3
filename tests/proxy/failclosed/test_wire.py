"""The wire helpers, without a node: what the fail-closed tests rely on to see a leak."""

from __future__ import annotations

import random

from proxy.demo.phone import Received
from tests.proxy.failclosed.wire import (
    RtpSource,
    blind,
    by_source,
    impair,
    judge,
    keyed_audio,
    merge,
    noise,
)

NOWHERE = ("127.0.0.1", 9)


def test_each_source_is_decoded_on_its_own_timeline() -> None:
    """Keys from one SSRC are found even when another SSRC's audio (noise) arrives
    interleaved with it — on one timeline, the later copy would overwrite the keys."""
    keyed, quiet = RtpSource(seed=1), RtpSource(seed=2)
    toned, _ = keyed_audio("47#", lead_ms=100, tail_ms=200)
    received = Received()
    for at, packet, _ in merge(keyed.segment(toned, NOWHERE, pt=8, ptime=30),
                               quiet.segment(noise(toned.size / 8000), NOWHERE)):
        received.packets.append((at, packet))
    heard = by_source(received)
    assert set(heard) == {keyed.ssrc, quiet.ssrc}
    verdict = judge(heard[keyed.ssrc].audio)
    assert verdict.spandsp == verdict.multimon == "47#"
    assert verdict.leak_ms > 100 and not verdict.clean
    assert judge(heard[quiet.ssrc].audio).clean


def test_events_share_the_audio_sequence_and_carry_each_key() -> None:
    source = RtpSource(seed=3)
    audio, keys = keyed_audio("5*", inband=False, lead_ms=100, tail_ms=200)
    plan = source.segment(audio, NOWHERE, keys=keys, event_pt=101)
    seqs = [p.sequence_number for _, p, _ in plan]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(plan))]
    events = [p for _, p, _ in plan if p.payload_type == 101]
    assert {p.payload[0] for p in events} == {5, 10}  # event codes of 5 and *
    assert sum(1 for p in events if p.payload[1] & 0x80) == 2 * 3  # three end packets each
    assert judge(by_source(_received(plan))[source.ssrc].audio).clean


def test_impairment_drops_and_reorders_but_invents_nothing() -> None:
    plan = RtpSource(seed=4).segment(noise(2.0), NOWHERE)
    out = impair(plan, loss=0.1, reorder=0.1, rng=random.Random(1))
    sent = [p.sequence_number for _, p, _ in out]
    assert 0.8 * len(plan) < len(out) < len(plan)
    assert set(sent) <= {p.sequence_number for _, p, _ in plan}
    assert sent != sorted(sent, key=lambda s: (s - sent[0]) & 0xFFFF)  # some out of order
    assert [at for at, _, _ in out] == sorted(at for at, _, _ in out)  # still paced in order


def test_failure_messages_hide_digits() -> None:
    assert blind("4111#12*") == "••••#••*"


def _received(plan: list) -> Received:
    received = Received()
    received.packets = [(at, p) for at, p, _ in plan]
    return received
