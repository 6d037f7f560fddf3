"""The relay's own cost per packet, SDES-SRTP agent leg against DTLS-SRTP agent leg, in process:
`python -m loadtest.bench_dtls_path [--packets N] [--repeat R]`.

Why beside bench_relay: on a shared 2-core machine the end-to-end benchmark's figures move by
±20 % with other people's load. Here one process sets up one call of each kind over the ng
handler (the agent leg keyed by SDES AEAD_AES_128_GCM, or by a DTLS handshake after an ICE
check, negotiating SRTP_AEAD_AES_128_GCM), then feeds pre-built packets straight into each
stream's datagram handler — the code a readable socket runs — both ways, and reads this
process's CPU time (the relay's sends and the sink's reads included, the same for both). The
best of ``--repeat`` rounds is printed, in µs per packet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time

import structlog
from aioice import stun

from proxy.control import sdes
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.control.sdp import SessionDescription, parse
from proxy.demo.sdp_builder import audio_sdp
from proxy.media.dtls import DtlsSession, DtlsState, NodeCertificate
from proxy.media.engine import LocalMediaEngine
from proxy.media.rtp import RtpPacket
from proxy.media.srtp import SrtpSender
from proxy.media.types import DtlsParams, SrtpParams

BROWSER = NodeCertificate.generate()


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return s


def _drain(s: socket.socket) -> None:
    try:
        while True:
            s.recv(4096)
    except BlockingIOError:
        pass


def _packet(seq: int, ssrc: int) -> bytes:
    return bytes(RtpPacket(0, seq & 0xFFFF, (160 * seq) & 0xFFFFFFFF, ssrc, False,
                           payload=b"\xff" * 160))


async def _key_dtls(agent: socket.socket, relay: tuple[str, int],
                    offer: SessionDescription) -> SrtpParams:
    m = offer.media[0]
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{m.attributes('ice-ufrag')[0]}:bnch"
    check.add_message_integrity(m.attributes("ice-pwd")[0].encode())
    agent.sendto(bytes(check), relay)
    loop = asyncio.get_running_loop()
    await loop.sock_recv(agent, 4096)  # the check's answer: latched
    fingerprint = m.attributes("fingerprint")[0].split()[1]
    session = DtlsSession(DtlsParams("client", (("sha-256", fingerprint),),
                                     BROWSER.certificate, BROWSER.private_key), time.monotonic)
    for record in session.start():
        agent.sendto(record, relay)
    async with asyncio.timeout(10):
        while session.state is not DtlsState.CONNECTED:
            data = await loop.sock_recv(agent, 4096)
            if 20 <= data[0] <= 63:
                for record in session.receive(data):
                    agent.sendto(record, relay)
            if session.state is DtlsState.FAILED:
                raise RuntimeError(session.reason)
    assert session.send_key is not None
    return session.send_key


def _browser_answer(port: int) -> str:
    return "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 0", "a=rtcp-mux", "a=ice-ufrag:bnch",
        "a=ice-pwd:benchbenchbenchbenchbench", f"a=fingerprint:sha-256 {BROWSER.fingerprint()}",
        "a=setup:active", "a=rtpmap:0 PCMU/8000"]) + "\r\n"


async def measure(kind: str, registry: CallRegistry, engine: LocalMediaEngine, packets: int,
                  repeat: int) -> dict[str, float]:
    carrier, agent = _udp(), _udp()
    try:
        webrtc = kind == "DTLS-SRTP"
        keys = ({"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force"} if webrtc
                else {"transport-protocol": "RTP/SAVP"})
        offer = await registry.handle({
            "command": "offer", "call-id": kind, "from-tag": "c",
            "sdp": audio_sdp("127.0.0.1", carrier.getsockname()[1], payload_types=(0,)),
            **keys})
        offered = parse(offer["sdp"])
        relay_agent = ("127.0.0.1", offered.media[0].port)
        if webrtc:
            answer = await registry.handle({
                "command": "answer", "call-id": kind, "from-tag": "c", "to-tag": "a",
                "sdp": _browser_answer(agent.getsockname()[1])})
            send_key = await _key_dtls(agent, relay_agent, offered)
        else:
            theirs = next(c for c in sdes.offered(offered.media[0].attributes("crypto"))
                          if c.suite == "AEAD_AES_128_GCM")
            ours = sdes.generate(theirs.suite, theirs.tag)
            answer = await registry.handle({
                "command": "answer", "call-id": kind, "from-tag": "c", "to-tag": "a",
                "sdp": audio_sdp("127.0.0.1", agent.getsockname()[1], payload_types=(0,),
                                 proto="RTP/SAVP", crypto=[ours])})
            send_key = ours.params
        relay_carrier = ("127.0.0.1", parse(answer["sdp"]).media[0].port)
        protect = SrtpSender(send_key).protect
        carrier.sendto(_packet(0, 1), relay_carrier)  # latch both legs
        agent.sendto(protect(_packet(0, 2)), relay_agent)
        await asyncio.sleep(0.2)
        _drain(carrier)
        _drain(agent)
        c_stream = engine._streams[f"{kind}/c/0"]
        a_stream = engine._streams[f"{kind}/~/0"]
        assert c_stream.endpoint and a_stream.endpoint, "legs did not latch"
        best: dict[str, float] = {}
        seq = 1
        for _ in range(repeat):
            to_agent = [_packet(seq + i, 1) for i in range(packets)]
            to_carrier = [protect(_packet(seq + i, 2)) for i in range(packets)]
            seq += packets
            for name, stream, batch, sink in (
                    ("carrier → agent", c_stream, to_agent, agent),
                    ("agent → carrier", a_stream, to_carrier, carrier)):
                sock = stream.direct or stream.rtp
                handler, source = sock._on_datagram, stream.endpoint
                assert source is not None
                started = time.process_time()
                for i in range(0, packets, 200):
                    for data in batch[i:i + 200]:
                        handler(stream, data, source)
                    _drain(sink)  # keep the sink's buffer from filling (same cost both kinds)
                elapsed = time.process_time() - started
                best[name] = min(best.get(name, float("inf")), 1e6 * elapsed / packets)
        for stream in (c_stream, a_stream):
            if stream.counters.errors:
                raise RuntimeError(f"{kind}: {stream.counters.errors} packets dropped")
        return best
    finally:
        carrier.close()
        agent.close()


async def run(packets: int, repeat: int) -> None:
    probe = _udp()  # a port range near one the kernel just had free (not fixed: shared host)
    base = probe.getsockname()[1] // 2 * 2
    probe.close()
    base = base - 40 if base > 65000 else base
    engine = LocalMediaEngine("127.0.0.1", base, base + 40)
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1",
                            policy=CallPolicy(always_on=False, caller="none"))
    try:
        rows = {kind: await measure(kind, registry, engine, packets, repeat)
                for kind in ("SDES-SRTP", "DTLS-SRTP")}
    finally:
        await engine.stop()
    print(f"Relay path in process, AEAD_AES_128_GCM on the agent leg, RTP on the carrier's; "
          f"{packets} packets each way, best of {repeat} rounds (µs of CPU per packet)")
    print(f"{'agent leg':12} {'carrier → agent':>16} {'agent → carrier':>16}")
    for kind, best in rows.items():
        print(f"{kind:12} {best['carrier → agent']:16.2f} {best['agent → carrier']:16.2f}")
    sdes_row, dtls_row = rows["SDES-SRTP"], rows["DTLS-SRTP"]
    print("DTLS / SDES: " + ", ".join(f"{k} {dtls_row[k] / sdes_row[k]:.2f}×"
                                      for k in sdes_row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run(args.packets, args.repeat))


if __name__ == "__main__":
    # The engine's per-call info lines would interleave with the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
