"""SDP bodies a SIP phone would send, for tests, the demo and the load generator."""

from __future__ import annotations

from proxy.control import sdes
from proxy.control.sdp import parse

_RTPMAP = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}


def audio_sdp(address: str, port: int, *, payload_types: tuple[int, ...] = (0, 8, 101),
              proto: str = "RTP/AVP", crypto: list[sdes.CryptoAttribute] | None = None,
              rtcp_mux: bool = False, session: int = 4242, extra: tuple[str, ...] = ()) -> str:
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0", f"o=- {session} 1 IN {family} {address}", "s=ToneGuard test", "t=0 0",
        f"c=IN {family} {address}",
        f"m=audio {port} {proto} {' '.join(map(str, payload_types))}",
    ]
    lines += [f"a=rtpmap:{pt} {_RTPMAP[pt]}" for pt in payload_types if pt in _RTPMAP]
    if 101 in payload_types:
        lines.append("a=fmtp:101 0-16")
    lines += [f"a=crypto:{c.format()}" for c in crypto or []]
    if rtcp_mux:
        lines.append("a=rtcp-mux")
    lines += ["a=sendrecv", "a=ptime:20", *extra]
    return "\r\n".join(lines) + "\r\n"


def media_endpoint(sdp: str, index: int = 0) -> tuple[str, int]:
    """Where an SDP asks for media (address, port) of its ``index``-th m= section."""
    parsed = parse(sdp)
    return parsed.media_connection(index) or "", parsed.media[index].port
