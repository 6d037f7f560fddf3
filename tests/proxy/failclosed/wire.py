"""What the fail-closed tests' phones put on the wire, and what is made of what arrives.

The packets are built here rather than by ``RtpPeer.play`` so that a test chooses, per packet,
the payload type, the packet size (ptime), the SSRC and the port it goes to — the things an
attacker chooses too. What a listener received is decoded per source (SSRC): two sources
interleaved on one timeline would overwrite each other, and a masked copy could hide an
unmasked one. spandsp and multimon-ng then look for keys and the leak meter for DTMF energy
above −45 dBm0. Failure messages never show a decoded key: digits are printed as ``•``.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dsp import g711, tones
from proxy.control import sdes
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import Received, RtpPeer
from proxy.demo.simulate import TEST_CARDS
from proxy.demo.spandsp import spandsp_detect
from proxy.media.rfc4733 import EVENT_KEYS
from proxy.media.rtp import RtpPacket

Address = tuple[str, int]
CARD, EXPIRY, CODE = TEST_CARDS["visa"]
# The caller keys the whole card, number and expiry each ended by #. The security code ends
# the capture by itself (a key after it would no longer be a captured one), so none follows.
KEYED = f"{CARD}#{EXPIRY}#{CODE}"
RATE = 8000
TONE_MS, GAP_MS = 70, 70  # well inside Q.24's "must accept" (≥ 40 ms): a leak would decode
KEY_DBM0 = -12.0
NOISE_DBM0 = -50.0  # the caller's line noise under the keys
AGENT_NOISE_DBM0 = -45.0
LAWS = {0: "ulaw", 8: "alaw"}  # the audio codecs the phones here speak


def blind(keys: str) -> str:
    """Decoded keys as they may appear in a failure message: digits hidden."""
    return "".join("•" if k.isdigit() else k for k in keys)


# --- SDP ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Codec:
    """One payload type of an m= line; ``name`` as written on a=rtpmap (any case), or None to
    leave a static type without a=rtpmap (RFC 3551 allows it)."""

    pt: int
    name: str | None

    @property
    def is_event(self) -> bool:
        return (self.name or "").lower() == "telephone-event"


def phone_sdp(address: str, port: int, codecs: Sequence[Codec], *, proto: str = "RTP/AVP",
              crypto: Sequence[sdes.CryptoAttribute] = (), rtcp_mux: bool = False,
              rtcp_port: int | None = None, ptime: int = 20, session: int = 4711) -> str:
    lines = ["v=0", f"o=- {session} 1 IN IP4 {address}", "s=phone", "t=0 0",
             f"c=IN IP4 {address}",
             f"m=audio {port} {proto} {' '.join(str(c.pt) for c in codecs)}"]
    for c in codecs:
        if c.name is not None:
            lines.append(f"a=rtpmap:{c.pt} {c.name}/8000")
        if c.is_event:
            lines.append(f"a=fmtp:{c.pt} 0-16")
    lines += [f"a=crypto:{c.format()}" for c in crypto]
    if rtcp_port is not None:
        lines.append(f"a=rtcp:{rtcp_port}")
    if rtcp_mux:
        lines.append("a=rtcp-mux")
    lines += ["a=sendrecv", f"a=ptime:{ptime}"]
    return "\r\n".join(lines) + "\r\n"


# --- audio and packets ----------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    key: str = field(repr=False)  # may be a card digit
    start: int  # sample position in the segment
    length: int  # samples


def keyed_audio(keys: str, *, inband: bool = True, lead_ms: int = 300, tail_ms: int = 400,
                seed: int = 5) -> tuple[npt.NDArray[np.float64], list[Key]]:
    """Line noise with ``keys`` keyed in it (as tones when ``inband``), and where each key is."""
    rng = np.random.default_rng(seed)
    step = (TONE_MS + GAP_MS) * RATE // 1000
    lead = lead_ms * RATE // 1000
    n = lead + len(keys) * step + tail_ms * RATE // 1000
    audio = tones.white_noise(n, NOISE_DBM0, rng)
    placed = []
    for i, k in enumerate(keys):
        start = lead + i * step
        tone = tones.dtmf_tone(k, TONE_MS, low_dbm0=KEY_DBM0)
        if inband:
            audio[start:start + tone.size] += tone
        placed.append(Key(k, start, tone.size))
    return audio, placed


def noise(seconds: float, dbm0: float = AGENT_NOISE_DBM0, seed: int = 9
          ) -> npt.NDArray[np.float64]:
    return tones.white_noise(int(seconds * RATE), dbm0, np.random.default_rng(seed))


Send = tuple[float, RtpPacket, Address]  # (seconds from the start, packet, destination)


class RtpSource:
    """One SSRC's sequence and timestamp counters; builds paced packet plans for it."""

    def __init__(self, ssrc: int | None = None, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        self.seq = rng.getrandbits(16)
        self.ts = rng.getrandbits(32)
        self._started = False

    def segment(self, audio: npt.ArrayLike, dest: Address, *, pt: int = 0, ptime: int = 20,
                keys: Sequence[Key] = (), event_pt: int | None = None,
                event_dest: Address | None = None) -> list[Send]:
        """Audio as ``ptime`` ms packets of codec ``pt`` and, with ``event_pt``, each of
        ``keys`` as RFC 4733 events (an update every 20 ms, three end packets) on the same
        SSRC; timestamps continue from the previous segment."""
        law = LAWS[pt]
        codes = g711.encode(np.asarray(audio), law).tobytes()
        size = ptime * RATE // 1000
        planned: list[tuple[float, int, int, bytes, bool, Address]] = []
        for i in range(0, len(codes) - size + 1, size):
            planned.append((i / RATE, pt, i, codes[i:i + size], not self._started and i == 0,
                            dest))
        if event_pt is not None:
            for k in keys:
                code = EVENT_KEYS.index(k.key)
                steps = max(1, k.length // 160)
                for step in range(1, steps + 1):
                    payload = struct.pack("!BBH", code, 10, step * 160)
                    planned.append(((k.start + (step - 1) * 160) / RATE, event_pt, k.start,
                                    payload, step == 1, event_dest or dest))
                end = struct.pack("!BBH", code, 0x80 | 10, steps * 160)
                planned += [((k.start + steps * 160) / RATE, event_pt, k.start, end, False,
                             event_dest or dest)] * 3
        planned.sort(key=lambda p: p[0])
        sends: list[Send] = []
        for at, payload_type, offset, payload, marker, to in planned:
            packet = RtpPacket(payload_type=payload_type, sequence_number=self.seq,
                               timestamp=(self.ts + offset) & 0xFFFFFFFF, ssrc=self.ssrc,
                               marker=marker, payload=payload)
            self.seq = (self.seq + 1) & 0xFFFF
            sends.append((at, packet, to))
        self.ts = (self.ts + len(codes) // size * size) & 0xFFFFFFFF
        self._started = True
        return sends


def impair(sends: list[Send], *, loss: float, reorder: float, rng: random.Random
           ) -> list[Send]:
    """Drop a fraction of the packets; send another fraction one packet late."""
    kept = [s for s in sends if rng.random() >= loss]
    out = list(kept)
    for i in range(len(out) - 1):
        if rng.random() < reorder:
            (a, pa, da), (b, pb, db) = out[i], out[i + 1]
            out[i], out[i + 1] = (a, pb, db), (b, pa, da)
    return out


def merge(*plans: list[Send]) -> list[Send]:
    return sorted((s for plan in plans for s in plan), key=lambda s: s[0])


async def send(peer: RtpPeer, plan: list[Send]) -> None:
    """Send a plan from ``peer``'s socket, paced on the event loop clock."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, packet, dest in plan:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        peer.send_packet(packet, dest)


# --- what arrived ---------------------------------------------------------------------------

@dataclass
class Heard:
    """Everything one listener received from one SSRC."""

    ssrc: int
    packets: int = 0
    payload_types: Counter[int] = field(default_factory=Counter)
    audio: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))


MAX_SECONDS = 120  # a timeline longer than this is not one of our calls: cut there


def by_source(received: Received) -> dict[int, Heard]:
    """Per SSRC: packet counts by payload type and the G.711 audio on its own timeline (lost
    packets as silence)."""
    groups: dict[int, list[RtpPacket]] = {}
    for _, p in received.packets:
        groups.setdefault(p.ssrc, []).append(p)
    out = {}
    for ssrc, packets in groups.items():
        heard = Heard(ssrc, len(packets), Counter(p.payload_type for p in packets))
        audio = [p for p in packets if p.payload_type in LAWS]
        if audio:
            ref = audio[0].timestamp
            offsets = [((p.timestamp - ref + (1 << 31)) % (1 << 32)) - (1 << 31) for p in audio]
            low = min(offsets)
            end = max(o + len(p.payload) for o, p in zip(offsets, audio, strict=True))
            length = min(end - low, MAX_SECONDS * RATE)
            pcm = np.zeros(length, dtype=np.int16)
            for o, p in zip(offsets, audio, strict=True):
                at = o - low
                if at < length:
                    samples = g711.decode(np.frombuffer(p.payload, np.uint8), LAWS[p.payload_type])
                    pcm[at:at + samples.size] = samples[:length - at]
            heard.audio = pcm
        out[ssrc] = heard
    return out


@dataclass(frozen=True)
class Verdict:
    spandsp: str = field(repr=False)
    multimon: str = field(repr=False)
    leak_ms: float

    @property
    def clean(self) -> bool:
        return not self.spandsp and not self.multimon and self.leak_ms == 0.0

    def __str__(self) -> str:
        return (f"spandsp decoded {len(self.spandsp)} key(s) '{blind(self.spandsp)}', "
                f"multimon-ng {len(self.multimon)} '{blind(self.multimon)}', "
                f"leak meter {self.leak_ms:.0f} ms above -45 dBm0")


def judge(audio: npt.ArrayLike) -> Verdict:
    x = np.asarray(audio)
    if x.size == 0:
        return Verdict("", "", 0.0)
    return Verdict(spandsp_detect(x), multimon_detect(x), leaked_ms(x))
