"""SDP (RFC 8866) parsing, serialisation and the rewrites a media relay makes.

The model keeps every line in order so that what ToneGuard does not touch comes out exactly as
it went in; helpers change the few things a relay must (addresses, ports, transport, crypto,
RTCP, ICE attributes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

STATIC_PAYLOADS = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 13: "CN", 18: "G729"}
# Encoding names are case-insensitive (RFC 4566 §6, RFC 3551 §6): ``pcmu``, ``Pcmu`` and
# ``PCMU`` are one codec. Names are folded to these spellings where they are known (the
# registry's), and to upper case otherwise, so the media plane compares one spelling.
_CANONICAL_NAMES = {n.lower(): n for n in (
    *STATIC_PAYLOADS.values(), "telephone-event", "opus", "G7221", "iLBC", "speex", "AMR",
    "AMR-WB", "L16", "red", "ulpfec")}
ICE_ATTRIBUTES = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "end-of-candidates",
                  "ice-lite", "remote-candidates")
DTLS_ATTRIBUTES = ("fingerprint", "setup", "tls-id")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """Malformed SDP; the message names the line."""


class _Lines:
    """What a media section and the session level share: ordered (type, value) lines."""

    lines: list[tuple[str, str]]

    @property
    def connection(self) -> str | None:
        for t, v in self.lines:
            if t == "c":
                return _connection_address(v)
        return None

    def set_connection(self, address: str) -> None:
        self.lines = [(t, _connection_line(address) if t == "c" else v) for t, v in self.lines]

    def remove_attributes(self, *names: str) -> None:
        self.lines = [(t, v) for t, v in self.lines
                      if not (t == "a" and v.partition(":")[0] in names)]


@dataclass
class MediaSection(_Lines):
    media: str  # audio, video, ...
    port: int
    port_count: int | None
    proto: str  # RTP/AVP, RTP/SAVP, ...
    formats: list[str]
    lines: list[tuple[str, str]] = field(default_factory=list)  # (type, value) after m=

    def attributes(self, name: str) -> list[str]:
        """Values of ``a=name:value`` (or ``""`` for a flag ``a=name``)."""
        out = []
        for t, v in self.lines:
            if t == "a":
                key, _, rest = v.partition(":")
                if key == name:
                    out.append(rest)
        return out

    def has_attribute(self, name: str) -> bool:
        return bool(self.attributes(name))

    def add_attribute(self, name: str, value: str | None = None) -> None:
        self.lines.append(("a", name if value is None else f"{name}:{value}"))

    def codecs(self) -> dict[int, str]:
        """Payload type → encoding name (canonical spelling), from a=rtpmap and the static
        table; an a=rtpmap overrides the static name of its payload type."""
        names: dict[int, str] = {}
        for fmt in self.formats:
            if fmt.isdigit() and int(fmt) in STATIC_PAYLOADS:
                names[int(fmt)] = STATIC_PAYLOADS[int(fmt)]
        for value in self.attributes("rtpmap"):
            pt, _, encoding = value.partition(" ")
            if pt.isdigit():
                names[int(pt)] = canonical_encoding(encoding.split("/")[0])
        return {pt: name for pt, name in names.items() if str(pt) in self.formats}

    @property
    def direction(self) -> str:
        for d in DIRECTIONS:
            if self.has_attribute(d):
                return d
        return "sendrecv"

    @property
    def rtcp_port(self) -> int | None:
        """From ``a=rtcp:PORT [IN IP4 ADDR]``."""
        for value in self.attributes("rtcp"):
            head = value.split()[0] if value.split() else ""
            if head.isdigit() and 0 < int(head) < 65536:
                return int(head)
        return None

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    def serialise(self) -> list[str]:
        count = f"/{self.port_count}" if self.port_count is not None else ""
        m = f"m={self.media} {self.port}{count} {self.proto} {' '.join(self.formats)}"
        return [m] + [f"{t}={v}" for t, v in self.lines]


@dataclass
class SessionDescription(_Lines):
    lines: list[tuple[str, str]]  # session-level, before the first m=
    media: list[MediaSection]

    def media_connection(self, index: int) -> str | None:
        return self.media[index].connection or self.connection

    def set_connection(self, address: str) -> None:
        super().set_connection(address)
        for m in self.media:
            m.set_connection(address)

    def replace_origin(self, address: str) -> None:
        def fix(v: str) -> str:
            parts = v.split()
            if len(parts) == 6:
                parts[4] = "IP6" if ":" in address else "IP4"
                parts[5] = address
            return " ".join(parts)
        self.lines = [(t, fix(v) if t == "o" else v) for t, v in self.lines]

    def bump_version(self) -> None:
        def bump(v: str) -> str:
            parts = v.split()
            if len(parts) == 6 and parts[2].isdigit():
                parts[2] = str(int(parts[2]) + 1)
            return " ".join(parts)
        self.lines = [(t, bump(v) if t == "o" else v) for t, v in self.lines]

    def order_session_lines(self) -> None:
        """Session-level lines in RFC 8866 §5 order (v o s i u e p c b t r z k a), stable
        within a type. Phones are lenient about ``c=`` after ``t=``; browsers refuse it."""
        rank = {t: i for i, t in enumerate("vosiuepcbtrzka")}
        self.lines = sorted(self.lines, key=lambda line: rank.get(line[0], len(rank)))

    def serialise(self) -> str:
        out = [f"{t}={v}" for t, v in self.lines]
        for m in self.media:
            out += m.serialise()
        return "\r\n".join(out) + "\r\n"


def canonical_encoding(name: str) -> str:
    """One spelling per encoding name: ``pcmu`` → ``PCMU``, ``TELEPHONE-EVENT`` →
    ``telephone-event``, unknown names upper-cased."""
    name = name.strip()
    return _CANONICAL_NAMES.get(name.lower(), name.upper())


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad c= line: {value[:60]!r}")
    address = parts[2].split("/")[0]
    try:  # a relay sends to what it is told: never a name to resolve on the packet path
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise SdpError(f"c= address is not an IP address: {address[:60]!r}") from exc
    return address


def _connection_line(address: str) -> str:
    return f"IN {'IP6' if ':' in address else 'IP4'} {address}"


def parse(text: str) -> SessionDescription:
    lines: list[tuple[str, str]] = []
    media: list[MediaSection] = []
    for n, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = raw.strip("\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {n}: not 'x=value': {line[:40]!r}")
        t, value = line[0], line[2:]
        if t == "m":
            media.append(_parse_m(value, n))
        elif media:
            media[-1].lines.append((t, value))
        else:
            lines.append((t, value))
    if not lines or lines[0] != ("v", "0"):
        raise SdpError("line 1: SDP must start with v=0")
    session = SessionDescription(lines, media)
    session.connection  # noqa: B018  (validates the session-level c= line)
    for i, m in enumerate(media):
        if m.connection is None and session.connection is None and m.port != 0:
            raise SdpError(f"media section {i}: no c= line (session or media level)")
    return session


def _parse_m(value: str, n: int) -> MediaSection:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {n}: bad m= line: {value!r}")
    port_text, _, count = parts[1].partition("/")
    if not port_text.isdigit() or (count and not count.isdigit()):
        raise SdpError(f"line {n}: bad port in m= line: {parts[1]!r}")
    port = int(port_text)
    if port > 65535:
        raise SdpError(f"line {n}: port {port} out of range")
    return MediaSection(parts[0], port, int(count) if count else None, parts[2], parts[3:])
