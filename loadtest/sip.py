"""SIP-level load with SIPp through Kamailio and ToneGuard, and the leak check on the UAS side.

SIPp plays the phones (``loadtest/sipp/``: the customer's UAC keys a test card in-band or as
RFC 2833 events from a pcap, the contact centre's UAS answers); this module writes those pcaps
and records what the contact centre receives: the UAS's SDP sends its media to
``record``'s socket, where every call's agent leg (one per ToneGuard source port) is rebuilt
on its RTP timeline and decoded by spandsp and multimon-ng. Any digit found, or any RFC 4733
event passed on, is a leak. Commands: ``loadtest/sipp/README.md``.

    python -m loadtest.sip pcaps loadtest/sipp            # (re)write the card pcaps
    python -m loadtest.sip record --listen 127.0.0.1:7100 --seconds 60 --report out/sip.json
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsp import g711
from loadtest.scenario import CardsSection
from loadtest.sources import EVENT_PT, SAMPLES, keying_events, keying_segment
from proxy.demo.simulate import TEST_CARDS

CARRIER_IP, CENTRE_IP = "127.0.0.2", "127.0.0.1"  # as in config/kamailio/kamailio.cfg
LEAD_SECONDS = 1.0  # the customer says nothing (silence) before keying


def card_packets(profile: str, *, brand: str = "visa", ssrc: int = 0x5EED
                 ) -> list[tuple[int, bytes]]:
    """(tick, RTP) of a customer keying a test card (PCMU, 20 ms), number # expiry # code #:
    in-band tones, or silence with RFC 2833 events in place of the audio during each key."""
    number, expiry, code = TEST_CARDS[brand]
    keys = f"{number}#{expiry}#{code}#"
    cards = CardsSection()
    audio, windows = keying_segment(keys, cards, inband=profile == "inband")
    lead = np.zeros(int(LEAD_SECONDS * 8000))
    codes = g711.encode(np.clip(np.rint(np.concatenate([lead, audio, lead])), -32768,
                                32767).astype(np.int16), "ulaw").tobytes()
    offset_ticks = lead.size // SAMPLES
    events = keying_events(keys, windows) if profile == "rfc2833" else {}
    out, seq = [], 1000
    for tick in range(len(codes) // SAMPLES):
        tick_events = events.get(tick - offset_ticks, [])
        for e in tick_events:
            ts = lead.size + e.timestamp
            out.append((tick, struct.pack("!BBHII", 0x80, (0x80 if e.marker else 0) | EVENT_PT,
                                          seq, ts, ssrc) + e.payload))
            seq += 1
        if not tick_events:
            out.append((tick, struct.pack("!BBHII", 0x80, 0, seq, tick * SAMPLES, ssrc)
                        + codes[tick * SAMPLES:(tick + 1) * SAMPLES]))
            seq += 1
    return out


def write_pcap(path: Path, packets: list[tuple[int, bytes]]) -> None:
    """A libpcap file (Ethernet/IPv4/UDP) of RTP packets at their 20 ms ticks, as sipp plays
    it (only the RTP and the timing matter: sipp sends to the negotiated address itself)."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, (tick, payload) in enumerate(packets):
            udp = struct.pack("!HHHH", 40000, 40002, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton(CARRIER_IP), socket.inet_aton(CENTRE_IP))
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            micros = tick * 20_000
            f.write(struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame),
                                len(frame)))
            f.write(frame)


def write_card_pcaps(directory: Path) -> list[Path]:
    paths = []
    for profile in ("inband", "rfc2833"):
        path = directory / f"card-{profile}.pcap"
        write_pcap(path, card_packets(profile))
        paths.append(path)
    return paths


@dataclass
class Leg:
    """What one agent leg (one source of ToneGuard) delivered to the UAS."""

    source: str
    packets: list[bytes] = field(default_factory=list)


def check_legs(legs: list[Leg]) -> dict[str, object]:
    """Decode every leg: digits found (a count, never the digits), events passed, audio."""
    from proxy.demo.multimon import multimon_detect
    from proxy.demo.spandsp import spandsp_detect

    out = []
    for leg in legs:
        audio_packets = [p for p in leg.packets if len(p) > 12 and p[1] & 0x7F in (0, 8)]
        events = sum(1 for p in leg.packets if len(p) > 12 and p[1] & 0x7F == EVENT_PT)
        if audio_packets:
            first = struct.unpack_from("!I", audio_packets[0], 4)[0]
            stamps = [(struct.unpack_from("!I", p, 4)[0] - first) % (1 << 32)
                      for p in audio_packets]
            audio = np.zeros(min(max(stamps) + SAMPLES, 8000 * 600), np.int16)
            for at, p in zip(stamps, audio_packets, strict=True):
                law = "ulaw" if p[1] & 0x7F == 0 else "alaw"
                if at + SAMPLES <= audio.size:
                    audio[at:at + SAMPLES] = g711.decode(np.frombuffer(p[12:12 + SAMPLES],
                                                                       np.uint8), law)
        else:
            audio = np.zeros(0, np.int16)
        out.append({"source": leg.source, "audio_packets": len(audio_packets),
                    "events_passed": events,
                    "spandsp_digits": len(spandsp_detect(audio)) if audio.size else 0,
                    "multimon_digits": len(multimon_detect(audio)) if audio.size else 0})
    leaking = [leg for leg in out if leg["spandsp_digits"] or leg["multimon_digits"] or
               leg["events_passed"]]
    return {"legs": out, "calls": len(out), "calls_with_leak": len(leaking),
            "ok": bool(out) and not leaking}


def record(listen: tuple[str, int], seconds: float, *, idle: float = 0.0,
           ready: Path | None = None) -> list[Leg]:
    """Receive RTP on ``listen`` for up to ``seconds`` (or until ``idle`` s without a packet
    once something has arrived), one leg per source address. SIGINT/SIGTERM end it early."""
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    legs: dict[tuple[str, int], Leg] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(listen)
        sock.settimeout(0.2)
        if ready is not None:
            ready.write_text(str(sock.getsockname()[1]))
        end = time.monotonic() + seconds
        last = None
        while time.monotonic() < end and not stop["now"]:
            if idle and last is not None and time.monotonic() - last > idle:
                break
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            last = time.monotonic()
            legs.setdefault(source, Leg(f"{source[0]}:{source[1]}")).packets.append(data)
    return list(legs.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pcaps = sub.add_parser("pcaps", help="write card-inband.pcap and card-rfc2833.pcap")
    pcaps.add_argument("directory", type=Path)
    rec = sub.add_parser("record", help="be the contact centre's media: record, leak-check")
    rec.add_argument("--listen", default="127.0.0.1:7100", help="HOST:PORT (the UAS's SDP)")
    rec.add_argument("--seconds", type=float, default=120.0, help="longest recording")
    rec.add_argument("--idle", type=float, default=5.0,
                     help="stop after this long without media, once calls have flowed")
    rec.add_argument("--report", type=Path, help="write the JSON result here")
    rec.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "pcaps":
        for path in write_card_pcaps(args.directory):
            print(path)
        return 0
    host, _, port = args.listen.rpartition(":")
    legs = record((host, int(port)), args.seconds, idle=args.idle, ready=args.ready_file)
    result = check_legs(legs)
    text = json.dumps(result, indent=1)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
