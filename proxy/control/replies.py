"""rtpengine-shaped replies to ``query``/``delete`` and ``statistics`` (NG-PROTOCOL.md).

Pure formatting: the registry gathers calls and stream stats, these functions shape them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.media.types import Address, MediaTotals, StreamStats

if TYPE_CHECKING:
    from proxy.control.calls import Call, Media


def query_reply(call: Call, stats: dict[str, StreamStats]) -> dict[str, Any]:
    """A call's tags, medias, streams and totals; ``stats`` by stream id."""
    totals = {"RTP": {"packets": 0, "bytes": 0, "errors": 0},
              "RTCP": {"packets": 0, "bytes": 0, "errors": 0}}
    tags: dict[str, Any] = {}
    for party in call.parties.values():
        other = call.other(party)
        medias = []
        for m in party.medias:
            st = stats[m.stream_id]
            totals["RTP"]["packets"] += st.packets_in
            totals["RTP"]["bytes"] += st.bytes_in
            totals["RTP"]["errors"] += st.errors
            totals["RTCP"]["packets"] += st.rtcp_in
            medias.append(_media(m, st))
        tags[party.tag] = {
            "tag": party.tag, "label": party.label, "created": int(party.created),
            "in dialogue with": other.tag if other else "", "medias": medias,
        }
    reply: dict[str, Any] = {
        "result": "ok", "created": int(call.created), "created_us": int(call.created * 1e6),
        "last signal": int(call.last_signal), "tags": tags, "totals": totals,
        "dtmf": {"digits": call.digits},
    }
    if call.metadata:
        reply["metadata"] = call.metadata
    return reply


def _media(m: Media, st: StreamStats) -> dict[str, Any]:
    masking = m.config.masking
    return {
        "index": m.index + 1,
        "type": m.kind,
        "protocol": m.protocol,
        "streams": [{
            "local port": m.local.rtp_port,
            "endpoint": _endpoint(st.endpoint or m.config.peer),
            "advertised endpoint": _endpoint(m.config.peer),
            "crypto suite": m.keys.suite,
            "last packet": int(st.last_packet),
            "stats": {"packets": st.packets_in, "bytes": st.bytes_in, "errors": st.errors},
            "sent": {"packets": st.packets_out, "bytes": st.bytes_out},
            "dtmf masked": st.dtmf_masked,
        }],
        "flags": ["masked"] if masking is not None and masking.effective else [],
    }


def _endpoint(addr: Address | None) -> dict[str, Any]:
    if addr is None:
        return {}
    return {"family": "IPv6" if ":" in addr[0] else "IPv4", "address": addr[0], "port": addr[1]}


def statistics_reply(*, calls: int, streams: int, created: int, deleted: int, idle: int,
                     totals: MediaTotals) -> dict[str, Any]:
    return {"result": "ok", "statistics": {
        "currentstatistics": {"sessionsown": calls, "sessionstotal": calls,
                              "streams": streams, "packetrate": 0},
        "totalstatistics": {"totalsessions": created, "deletedsessions": deleted,
                            "timeoutsessions": idle,
                            "packets": totals.packets_in, "bytes": totals.bytes_in,
                            "errors": totals.errors, "dtmfmasked": totals.dtmf_masked},
        "controlstatistics": {"proxies": []},
    }}
