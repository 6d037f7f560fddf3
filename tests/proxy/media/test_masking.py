"""Zero bleed: card digits keyed by the caller never reach the agent, checked three ways.

The MaskingPipeline is driven directly with the RTP packets of synthetic calls (no sockets):
test card numbers keyed in-band across Q.24's ranges, as RFC 4733 events, and as both, with
real speech (espeak-ng) around them, packet loss, reordering and jitter, PCMU and PCMA. What the
agent receives is decoded by spandsp AND multimon-ng (independent receivers): they must find
nothing, and the DTMF energy that leaked must be 0 ms above −45 dBm0 per digit. The same calls
with masking off are the control: both decoders must recover every digit there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from dsp import g711, tones
from loadtest import corpus
from proxy.demo.leak import leaked_ms_per_window
from proxy.demo.multimon import multimon_detect
from proxy.demo.spandsp import spandsp_detect
from proxy.media.masking import MaskingPipeline
from proxy.media.policy import UNMASKED, DtmfSecurityMode, MaskingPolicy
from proxy.media.rfc4733 import TelephoneEvent
from proxy.media.rtp import RtpPacket

LOOKAHEAD_MS = 26  # the default: 2 detector blocks (25.5 ms) after any onset
CARDS = ("4111111111111111", "5555555555554444", "378282246310005")
CODECS = {0: "PCMU", 8: "PCMA", 101: "telephone-event"}
LAW = {"PCMU": "ulaw", "PCMA": "alaw"}
PT = {"PCMU": 0, "PCMA": 8}


@dataclass
class KeyedCall:
    audio: np.ndarray  # what the caller sends, 8 kHz
    digits: str
    windows: list[tuple[int, int]]  # where each digit is, in samples
    events: list[tuple[str, int, int]]  # RFC 4733 (key, start, samples)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    material = corpus.espeak_speech(voices=("en",))
    assert material.items, material.failures
    return material.items[0].samples


def keyed_call(speech: np.ndarray, card: str, seed: int, *, inband: bool = True,
               rfc4733: bool = False) -> KeyedCall:
    """Speech, then the card keyed with Q.24-range levels, durations, gaps and twist, then
    speech. Levels −3 … −35 dBm0 per tone, twist within ±4 dB, tones 40–200 ms, gaps 30–100."""
    rng = np.random.default_rng(seed)
    lead = int(rng.integers(2, 4) * 8000)
    offset = int(rng.integers(0, speech.size - 12 * 8000))
    parts = [speech[offset:offset + lead]]
    pos = lead
    windows, events = [], []
    for key in card:
        gap = int(rng.integers(30, 101)) * 8
        tone_ms = int(rng.integers(40, 201))
        level = float(rng.uniform(-35.0, -3.0))
        twist = float(rng.uniform(-4.0, 4.0))
        low, high = (level, level + twist) if twist < 0 else (level - twist, level)
        tone = tones.dtmf_tone(key, tone_ms, low_dbm0=max(low, -40), high_dbm0=max(high, -40))
        parts += [np.zeros(gap), tone if inband else np.zeros(tone.size)]
        pos += gap
        windows.append((pos, pos + tone.size))
        if rfc4733:
            events.append((key, pos, tone.size))
        pos += tone.size
    parts += [np.zeros(400), speech[offset + lead:offset + lead + 2 * 8000]]
    return KeyedCall(np.concatenate(parts), card, windows, events)


def packetise(call: KeyedCall, codec: str, seed: int) -> list[RtpPacket]:
    """RTP packets in send order: audio every 20 ms, RFC 4733 updates interleaved."""
    law = LAW[codec]
    codes = g711.encode(call.audio, law).tobytes()
    ts0, seq = 1000, 5000
    packets: list[tuple[int, RtpPacket]] = []
    for i in range(0, len(codes) - 159, 160):
        packets.append((i, RtpPacket(PT[codec], 0, ts0 + i, 0xCAFE, i == 0,
                                     payload=codes[i:i + 160])))
    for key, start, length in call.events:
        code = "0123456789*#ABCD".index(key)
        for d in range(160, length + 1, 160):
            ev = TelephoneEvent(code, False, 10, d)
            packets.append((start + d - 1, RtpPacket(101, 0, ts0 + start, 0xCAFE, d == 160,
                                                     payload=bytes(ev))))
        for _ in range(3):
            ev = TelephoneEvent(code, True, 10, length)
            packets.append((start + length, RtpPacket(101, 0, ts0 + start, 0xCAFE,
                                                      payload=bytes(ev))))
    packets.sort(key=lambda p: p[0])
    out = []
    for when, p in packets:
        p.sequence_number = seq & 0xFFFF
        seq += 1
        out.append((when, p))
    return [p for _, p in out]


def run_pipeline(packets: list[RtpPacket], policy: MaskingPolicy, *, loss: float = 0.0,
                 reorder: float = 0.0, jitter_ms: float = 0.0, seed: int = 0
                 ) -> tuple[list[RtpPacket], MaskingPipeline]:
    """Push packets at their send time (+ jitter), tick every 20 ms, collect what is released."""
    rng = random.Random(seed)
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS, seed=seed)
    pipeline.open("caller", policy)
    ts0 = packets[0].timestamp
    arrivals = []
    for p in packets:
        if p.payload_type != 101 and rng.random() < loss:
            continue
        t = (p.timestamp - ts0) / 8000 + rng.uniform(0, jitter_ms) / 1000
        if rng.random() < reorder:
            t += 0.021  # arrives after its successor
        arrivals.append((t, p))
    arrivals.sort(key=lambda a: a[0])
    out: list[RtpPacket] = []
    now, i = 0.0073, 0  # ticks at an arbitrary phase to the packets
    end = arrivals[-1][0] + 1.0
    while now < end:
        while i < len(arrivals) and arrivals[i][0] <= now:
            pipeline.push("caller", arrivals[i][1], CODECS, now)
            i += 1
        out += [p for _, p in pipeline.tick(now)]
        now += 0.02
    return out, pipeline


def agent_audio(packets: list[RtpPacket], codec: str, ts0: int, n: int) -> np.ndarray:
    audio = np.zeros(n)
    for p in packets:
        if p.payload_type == PT[codec]:
            start = p.timestamp - ts0
            samples = g711.decode(np.frombuffer(p.payload, np.uint8), LAW[codec])
            audio[start:start + samples.size] = samples[: max(0, n - start)]
    return audio


CASES = [
    pytest.param(card, codec, source, loss, reorder, id=f"{card[:4]}-{codec}-{source}"
                 f"{'-lossy' if loss else ''}")
    for card, codec, source, loss, reorder in [
        (CARDS[0], "PCMU", "inband", 0.0, 0.0),
        (CARDS[1], "PCMA", "inband", 0.0, 0.0),
        (CARDS[2], "PCMU", "inband", 0.02, 0.05),
        (CARDS[0], "PCMA", "inband", 0.02, 0.05),
        (CARDS[1], "PCMU", "rfc4733", 0.0, 0.0),
        (CARDS[2], "PCMA", "both", 0.0, 0.0),
        (CARDS[0], "PCMU", "both", 0.02, 0.05),
    ]
]


@pytest.mark.parametrize(("card", "codec", "source", "loss", "reorder"), CASES)
def test_no_digit_reaches_the_agent(speech: np.ndarray, card: str, codec: str, source: str,
                                    loss: float, reorder: float) -> None:
    seed = int(card[:6]) % 1000 + (1 if codec == "PCMA" else 0)
    call = keyed_call(speech, card, seed, inband=source != "rfc4733",
                      rfc4733=source != "inband")
    packets = packetise(call, codec, seed)
    out, pipeline = run_pipeline(packets, MaskingPolicy(), loss=loss, reorder=reorder,
                                 jitter_ms=8.0, seed=seed)
    heard = agent_audio(out, codec, packets[0].timestamp, call.audio.size)
    pcm = heard.astype(np.int16)
    leaks = leaked_ms_per_window(heard, [(s - 160, e + 160) for s, e in call.windows])
    print(f"\n{card[:4]}… {codec} {source} loss={loss}: leak ms per digit {leaks}; "
          f"masked packets {pipeline.counters().masked_packets}")
    # What passes: every audio packet that was not lost, and the speech before the card
    # essentially as it was sent (so the decoders below listened to real audio, not silence).
    audio_in = [p for p in packets if p.payload_type == PT[codec]]
    audio_out = [p for p in out if p.payload_type == PT[codec]]
    assert len(audio_out) >= (1 - 2 * loss) * len(audio_in) if loss else \
        len(audio_out) == len(audio_in)
    lead = slice(0, call.windows[0][0] - 800)
    sent = g711.decode(g711.encode(call.audio[lead], LAW[codec]), LAW[codec])
    kept = np.abs(heard[lead] - sent) < 1.0
    assert kept.mean() > (0.9 if loss else 0.99), kept.mean()
    assert np.sqrt(np.mean(heard[lead] ** 2)) > 100  # speech, not silence
    # What is stopped: every digit.
    assert spandsp_detect(pcm) == ""
    assert multimon_detect(pcm) == ""
    assert max(leaks) == 0.0
    assert not [p for p in out if p.payload_type == 101]  # no event reaches the agent
    events = pipeline.drain_events()
    found = "".join(e.digit for e in events)
    if loss == 0.0:
        assert found == card  # every key reported exactly once
        expected = {"inband": "inband", "rfc4733": "rfc4733", "both": "both"}[source]
        assert {e.source for e in events} == {expected}
    else:
        assert len(found) >= len(card) - 2  # a lost packet inside a key may cost that key


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_control_without_masking_both_decoders_recover_every_digit(
        speech: np.ndarray, codec: str) -> None:
    call = keyed_call(speech, CARDS[0], 99)
    packets = packetise(call, codec, 99)
    out, pipeline = run_pipeline(packets, UNMASKED.__class__(masked=False, detect=True),
                                 jitter_ms=8.0)
    heard = agent_audio(out, codec, packets[0].timestamp, call.audio.size).astype(np.int16)
    assert spandsp_detect(heard) == CARDS[0]
    assert multimon_detect(heard) == CARDS[0]
    assert "".join(e.digit for e in pipeline.drain_events()) == CARDS[0]


def test_both_copies_of_a_key_count_once_with_source_both(speech: np.ndarray) -> None:
    call = keyed_call(speech, "4242", 5, inband=True, rfc4733=True)
    _out, pipeline = run_pipeline(packetise(call, "PCMU", 5), MaskingPolicy())
    events = pipeline.drain_events()
    assert [e.digit for e in events] == list("4242")
    assert {e.source for e in events} == {"both"}


def _packets(audio: np.ndarray) -> list[RtpPacket]:
    codes = g711.encode(audio, "ulaw").tobytes()
    return [RtpPacket(0, 100 + k, 160 * k, 1, payload=codes[160 * k:160 * k + 160])
            for k in range(len(codes) // 160)]


def test_audio_without_dtmf_passes_byte_for_byte() -> None:
    rng = np.random.default_rng(3)
    audio = tones.sine(1000, 3000, -12.0) + tones.white_noise(24000, -40.0, rng)
    packets = _packets(audio)
    out, pipeline = run_pipeline(packets, MaskingPolicy())
    assert [p.payload for p in out] == [p.payload for p in packets]
    assert [p.sequence_number for p in out] == list(range(100, 100 + len(packets)))
    assert pipeline.counters().masked_packets == 0


def test_speech_is_rarely_touched(speech: np.ndarray) -> None:
    """The early suspect flag is lenient by design; on real speech it should seldom fire."""
    packets = _packets(speech[: 60 * 8000])
    out, _ = run_pipeline(packets, MaskingPolicy())
    touched = sum(a.payload != b.payload for a, b in zip(out, packets, strict=True))
    print(f"\nspeech packets masked: {touched}/{len(packets)}")
    assert len(out) == len(packets)
    assert touched / len(packets) < 0.02


@pytest.mark.parametrize("mode", ["silence", "tone", "zero"])
def test_modes_replace_the_tone_with_their_signal(mode: str) -> None:
    audio = np.concatenate([np.zeros(1600), tones.dtmf_tone("7", 120, low_dbm0=-10),
                            np.zeros(2400)])
    codes = g711.encode(audio, "ulaw").tobytes()
    packets = [RtpPacket(0, k, 160 * k, 1, payload=codes[160 * k:160 * k + 160])
               for k in range(len(codes) // 160)]
    policy = MaskingPolicy().with_mode(DtmfSecurityMode(mode))
    out, _ = run_pipeline(packets, policy)
    heard = agent_audio(out, "PCMU", 0, audio.size).astype(np.int16)
    tone_region = heard[1600:1600 + 960].astype(float)
    if mode == "silence":
        assert np.max(np.abs(tone_region)) < 50
    elif mode == "tone":
        spectrum = np.abs(np.fft.rfft(tone_region))
        assert abs(np.argmax(spectrum) * 8000 / tone_region.size - 400) < 20
    else:
        assert spandsp_detect(heard) in ("0", "00")  # the agent hears key 0, not key 7


def test_an_ssrc_change_mid_call_keeps_masking_and_relaying() -> None:
    """A transfer or a new media server restarts SSRC, sequence and timestamp: the digits that
    follow are still masked and every packet still reaches the agent."""
    first = g711.encode(np.concatenate([tones.dtmf_tone("5", 100, low_dbm0=-10),
                                        np.zeros(1600)]), "ulaw").tobytes()
    second = g711.encode(np.concatenate([np.zeros(800), tones.dtmf_tone("8", 100,
                                                                          low_dbm0=-10),
                                         np.zeros(1600)]), "ulaw").tobytes()
    packets = [RtpPacket(0, 10 + k, 5000 + 160 * k, 111, payload=first[160 * k:160 * k + 160])
               for k in range(len(first) // 160)]
    base = len(packets)
    packets += [RtpPacket(0, 60000 + k, 9_000_000 + 160 * k, 222,
                          payload=second[160 * k:160 * k + 160])
                for k in range(len(second) // 160)]
    # Deliver in real time order regardless of the new timestamps.
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    out = []
    for k, p in enumerate(packets + [None] * 10):
        if p is not None:
            pipeline.push("caller", p, CODECS, k * 0.02)
        out += [q for _, q in pipeline.tick(k * 0.02 + 0.01)]
    assert len(out) == len(packets)
    heard = np.concatenate([g711.decode(np.frombuffer(p.payload, np.uint8), "ulaw")
                            for p in out])
    assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
    assert "".join(e.digit for e in pipeline.drain_events()) == "58"
    # Both sources reached the agent, in order, each with its own SSRC and numbering.
    assert [p.ssrc for p in out] == [111] * base + [222] * (len(packets) - base)
    assert [p.timestamp for p in out] == [p.timestamp for p in packets]
    assert [p.payload for p in out[base:base + 3]] == [p.payload for p in packets[base:base + 3]]


def _push_ticks(pipeline: MaskingPipeline, packets: list[RtpPacket],
                codecs: dict[int, str]) -> list[RtpPacket]:
    out: list[RtpPacket] = []
    for k, p in enumerate([*packets, *[None] * 5]):
        if p is not None:
            pipeline.push("caller", p, codecs, k * 0.02)
        out += [q for _, q in pipeline.tick(k * 0.02 + 0.01)]
    return out


def test_a_codec_that_cannot_be_inspected_is_dropped_and_counted_while_masked() -> None:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    g722 = [RtpPacket(9, k, 160 * k, 1, payload=bytes(160)) for k in range(5)]
    assert _push_ticks(pipeline, g722, {9: "G722"}) == []
    assert pipeline.counters().uninspectable_packets == 5


def test_a_codec_that_cannot_be_inspected_is_relayed_when_masking_is_off() -> None:
    """The control: mode ``off`` relays what it cannot read (the policy is not effective)."""
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", UNMASKED)
    g722 = [RtpPacket(9, k, 160 * k, 1, payload=bytes(160)) for k in range(5)]
    assert len(_push_ticks(pipeline, g722, {9: "G722"})) == 5
    assert pipeline.counters().uninspectable_packets == 0


def test_a_payload_type_the_sdp_did_not_name_is_dropped_even_if_static() -> None:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    codes = g711.encode(tones.dtmf_tone("4", 200, low_dbm0=-10), "alaw").tobytes()
    pcma = [RtpPacket(8, k, 160 * k, 1, payload=codes[160 * k:160 * k + 160])
            for k in range(len(codes) // 160)]
    assert _push_ticks(pipeline, pcma, {0: "PCMU", 101: "telephone-event"}) == []
    assert pipeline.counters().uninspectable_packets == len(pcma)


@pytest.mark.parametrize("spelling", ["pcmu", "Pcmu", "PCMU"])
def test_codec_names_match_in_any_case(spelling: str) -> None:
    audio = np.concatenate([np.zeros(1600), tones.dtmf_tone("7", 120, low_dbm0=-10),
                            np.zeros(2400)])
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    out = _push_ticks(pipeline, _packets(audio), {0: spelling})
    assert len(out) == len(_packets(audio))
    heard = agent_audio(out, "PCMU", 0, audio.size)
    assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
    assert [e.digit for e in pipeline.drain_events()] == ["7"]


@pytest.mark.parametrize(("pt", "name"), [(101, "TELEPHONE-EVENT"), (96, "Telephone-Event"),
                                          (127, "telephone-event")])
def test_telephone_events_in_any_case_and_at_any_pt_are_never_forwarded(
        pt: int, name: str) -> None:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    silence = g711.encode(np.zeros(160), "ulaw").tobytes()
    packets = []
    for k in range(12):
        packets.append(RtpPacket(0, 2 * k, 160 * k, 1, payload=silence))
        if 2 <= k < 8:
            ev = TelephoneEvent(9, k == 7, 10, 160 * (k - 1))
            packets.append(RtpPacket(pt, 2 * k + 1, 320, 1, payload=bytes(ev)))
    out = _push_ticks(pipeline, packets, {0: "PCMU", pt: name})
    assert [p.payload_type for p in out] == [0] * 12
    assert [p.sequence_number for p in out] == list(range(12))  # renumbered past the gap
    assert pipeline.counters().dropped_events == 6
    assert [e.digit for e in pipeline.drain_events()] == ["9"]


def test_comfort_noise_leaves_with_its_level_only() -> None:
    pipeline = MaskingPipeline(lookahead_ms=LOOKAHEAD_MS)
    pipeline.open("caller", MaskingPolicy())
    silence = g711.encode(np.zeros(160), "ulaw").tobytes()
    packets = [RtpPacket(0, 0, 0, 1, payload=silence),
               RtpPacket(13, 1, 160, 1, payload=bytes([40, 1, 2, 3, 4])),
               RtpPacket(0, 2, 320, 1, payload=silence)]
    out = _push_ticks(pipeline, packets, {0: "PCMU", 13: "cn"})
    assert [(p.payload_type, p.payload) for p in out if p.payload_type == 13] == [(13, b"(")]
