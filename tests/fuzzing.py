"""Seeded, structure-aware input generators for the fuzzing campaign (ng, SDP, RTP/RTCP/SRTP).

Random bytes alone rarely get past a parser's first check, so most inputs start from valid
messages and are then mutated (a key renamed, a value of the wrong type, a field truncated, a
byte flipped, a number made huge); a share are plain random bytes. Everything comes from one
``random.Random(seed)``, so a failure names a seed that reproduces it.

How many inputs: ``TONEGUARD_FUZZ_INPUTS`` (default 10 000 per surface in the test suite;
``./dev.sh fuzz`` runs 1 000 000 in all).
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Iterator
from typing import Any

from proxy.control import bencode

INPUTS = int(os.environ.get("TONEGUARD_FUZZ_INPUTS", "10000"))
SEED = int(os.environ.get("TONEGUARD_FUZZ_SEED", "0")) or random.SystemRandom().randrange(1 << 30)

COMMANDS = ["ping", "offer", "answer", "delete", "query", "list", "statistics", "block DTMF",
            "unblock DTMF", "Offer", "BLOCK dtmf", "subscribe request", "subscribe answer",
            "unsubscribe", "Subscribe Request", "bogus", ""]
KEYS = ["call-id", "from-tag", "to-tag", "sdp", "flags", "replace", "rtcp-mux", "SDES", "ICE",
        "DTLS", "transport-protocol", "received-from", "label", "from-label", "to-label",
        "metadata", "recording-tap", "DTMF-security", "frequency", "volume", "digit", "code",
        "secure-pay", "limit", "address", "call id", "Call-ID", "from-tags", "set-label",
        "sip-code", "SIP code"]
FLAGS = ["trust-address", "SIP-source-address", "symmetric", "asymmetric", "all", "fatal",
         "caller-offerer", "caller-answerer", "caller-both", "caller-none", "caller-x",
         "strict-source", "media-handover", "SDES-no-AES_CM_128_HMAC_SHA1_80", "loop-protect",
         "bidirectional", "inactive", "provisional", "from-tags-ft", "from-tags-tt"]
TEST_PANS = (b"4111111111111111", b"5555555555554444", b"378282246310005")
WEIRD = ["", " ", "\x00", "\ud800x", "é", "4111111111111111", "5555 5555 5555 4444", "a" * 300,
         "-1", "1e309", "65536", "0", "127.0.0.1:0", "[::1]:7000", "::", "%s%n", "${jndi:x}",
         "\r\n"]


def sdp(rng: random.Random, port: int = 0) -> str:
    """An SDP a phone might send, with random but mostly valid choices."""
    ip = rng.choice(["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "192.0.2.7"])
    family = "IP6" if ":" in ip else "IP4"
    port = port or rng.choice([0, 9, 4000, 4001, 65534, 65535, rng.randrange(1, 65536)])
    names = ["PCMU/8000", "pcmu/8000", "PCMA/8000", "G722/8000", "opus/48000/2",
             "telephone-event/8000", "TELEPHONE-EVENT/8000", "CN/8000", "G729/8000"]
    pts = rng.sample(range(96, 128), 4)
    formats = [0, 8, *pts[:rng.randrange(0, 4)]]
    rng.shuffle(formats)
    lines = ["v=0", f"o=- {rng.randrange(1 << 32)} 1 IN {family} {ip}", "s=-", "t=0 0"]
    if rng.random() < 0.8:
        lines.insert(3, f"c=IN {family} {ip}")
    for _ in range(rng.choice([1, 1, 1, 2, 3, 0])):
        proto = rng.choice(["RTP/AVP", "RTP/SAVP", "rtp/avp", "RTP/AVPF", "UDP/TLS/RTP/SAVPF",
                            "RTP/SAVPF", "TCP/RTP/AVP"])
        lines.append(f"m={rng.choice(['audio', 'audio', 'video', 'AUDIO'])} {port} {proto} "
                     + " ".join(map(str, formats)))
        for pt in formats:
            if pt >= 96 or rng.random() < 0.5:
                lines.append(f"a=rtpmap:{pt} {rng.choice(names)}")
        if rng.random() < 0.3:
            lines.append(f"a=rtcp:{rng.choice([0, 4001, 65535, 70000, 'x'])}")
        if rng.random() < 0.3:
            lines.append("a=rtcp-mux")
        if "SAVP" in proto.upper() and rng.random() < 0.8:
            key = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456"
                                     "789+/") for _ in range(rng.choice([40, 56, 59, 3])))
            lines.append(f"a=crypto:{rng.randrange(1, 3)} "
                         f"{rng.choice(['AES_CM_128_HMAC_SHA1_80', 'AEAD_AES_256_GCM', 'X'])} "
                         f"inline:{key}")
        if rng.random() < 0.2:
            lines.append(f"a={rng.choice(['sendonly', 'recvonly', 'inactive', 'sendrecv'])}")
    text = "\r\n".join(lines) + "\r\n"
    if rng.random() < 0.25:
        text = _mutate_text(rng, text)
    return text


def _mutate_text(rng: random.Random, text: str) -> str:
    choice = rng.randrange(5)
    i = rng.randrange(len(text) + 1)
    if choice == 0:
        return text[:i]
    if choice == 1:
        return text[:i] + rng.choice(WEIRD) + text[i:]
    if choice == 2:
        return text.replace("\r\n", rng.choice(["\n", "\r", "\r\n\r\n", " "]))
    if choice == 3:
        return text[:i] + text[i + rng.randrange(1, 20):]
    return text + "m=audio 1 RTP/AVP 0\r\n" * rng.randrange(1, 40)


def _value(rng: random.Random, key: str, depth: int = 0) -> Any:
    roll = rng.random()
    if key == "sdp" and roll < 0.7:
        return sdp(rng)
    if key in ("flags", "replace", "rtcp-mux", "SDES") and roll < 0.7:
        return rng.sample([*FLAGS, "origin", "SDP-version", "demux", "off"], rng.randrange(4))
    if key == "received-from" and roll < 0.5:
        return [rng.choice(["IP4", "IP6", ""]), rng.choice([*WEIRD, "192.0.2.9"])]
    if roll < 0.45:
        return rng.choice(["c1", "c2", "ft", "tt", "x", *WEIRD])
    if roll < 0.6:
        return rng.choice([0, 1, -1, 2**31, 2**70, -(2**70)])
    if roll < 0.75 and depth < 3:
        return [_value(rng, key, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.85 and depth < 3:
        return {rng.choice(KEYS): _value(rng, key, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice(WEIRD)


def ng_body(rng: random.Random) -> dict[str, Any]:
    """A dictionary Kamailio (or an attacker) might send: a command and some keys."""
    body: dict[str, Any] = {"command": rng.choice(COMMANDS)}
    for key in rng.sample(KEYS, rng.randrange(0, 8)):
        body[key] = _value(rng, key)
    if body["command"].lower() in ("offer", "answer") and rng.random() < 0.7:
        body.update({"call-id": rng.choice(["c1", "c2", "c3"]),
                     "from-tag": rng.choice(["ft", "tt", "t3"]), "sdp": sdp(rng)})
        if body["command"].lower() == "answer":
            body["to-tag"] = rng.choice(["ft", "tt", "t3"])
            if rng.random() < 0.5:
                body["sip-code"] = rng.choice([183, 200, "200", 0, -1])
    if body["command"].lower().startswith(("subscribe", "unsubscribe")) and rng.random() < 0.7:
        # Subscriptions to the calls the offers above build, and answers to them.
        body.update({"call-id": rng.choice(["c1", "c2", "c3"]),
                     "from-tag": rng.choice(["ft", "tt", "t3"]),
                     "to-tag": rng.choice(["s1", "s2", "ft", "tt"]), "sdp": sdp(rng)})
    return body


def ng_datagram(rng: random.Random) -> bytes:
    """One ng datagram: cookie and a bencode or JSON body, often mutated."""
    cookie = (b"c%d" % rng.randrange(10**6) if rng.random() < 0.85
              else rng.choice([b"", b"x" * 300, b"\xff\xfe"]))
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(0, 200))
    body = ng_body(rng)
    try:
        payload = (json.dumps(body).encode() if roll < 0.35
                   else bencode.encode(body))
    except (ValueError, TypeError, UnicodeEncodeError, bencode.BencodeError):
        payload = rng.randbytes(20)
    if rng.random() < 0.2:  # damage the encoding itself
        payload = mutate_bytes(rng, payload)
    return cookie + b" " + payload


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randrange(1, 30))
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            del b[i:i + rng.randrange(1, 10)]
        elif op == 2:
            b[i:i] = rng.choice([b"9" * rng.randrange(1, 6000), b"l" * 50, b"d", b"e", b"\x00"])
        else:
            b = b[:i]
    return bytes(b)


def rtp_like(rng: random.Random, ssrc: int = 0x1234) -> bytes:
    """RTP, RTCP or SRTP-shaped datagrams with hostile headers, or random bytes."""
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.choice([0, 1, 11, 12, 13, 200, 1500]))
    if roll < 0.35:  # RTCP-shaped: PT 192..223, lengths that lie
        return (struct.pack("!BBH", 0x80 | rng.randrange(32), rng.randrange(192, 224),
                            rng.randrange(65536)) + rng.randbytes(rng.randrange(0, 60)))
    first = 0x80 | (rng.random() < 0.2) << 5 | (rng.random() < 0.2) << 4 | rng.randrange(16)
    header = struct.pack("!BBHII", first, rng.choice([0, 8, 13, 101, 96, 72, 200, 127]),
                         rng.randrange(65536), rng.randrange(1 << 32),
                         ssrc if rng.random() < 0.5 else rng.randrange(1 << 32))
    body = rng.randbytes(rng.choice([0, 3, 4, 160, 172, 1400]))
    if first & 0x10 and rng.random() < 0.8:  # extension header, maybe lying about its length
        body = struct.pack("!HH", 0xBEDE, rng.randrange(65536)) + body
    data = header + body
    if first & 0x20 and data:  # padding count at the end, maybe too large
        data = data[:-1] + bytes([rng.randrange(256)])
    return data


def inputs(generator: Any, seed: int, count: int = INPUTS) -> Iterator[tuple[int, bytes]]:
    rng = random.Random(seed)
    for n in range(count):
        yield n, generator(rng)
