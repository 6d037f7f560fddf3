"""The in-process media engine: UDP sockets per stream, RTP/RTCP relay, SDES-SRTP, masking tick.

One asyncio event loop owns every socket, through one epoll set (:class:`_Poller`) that is a
single reader of the loop. The receive path is synchronous: read one datagram, unprotect,
check, then either forward at once (plain relay) or hand the packet to the audio pipeline,
which a timer drains every tick (masked streams: decode, detect and mask are batched across all
calls of this engine). Nothing here awaits per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import ipaddress
import math
import resource
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import structlog

from proxy.media.codecs import UNINSPECTABLE, PayloadKind, payload_kinds
from proxy.media.ice import IceLite, Verdict
from proxy.media.latency import TICK_BUCKETS, Recorder
from proxy.media.pipeline import AudioPipeline, PassthroughPipeline
from proxy.media.policy import MaskingPolicy
from proxy.media.rtp import RtpPacket, RtpParseError, is_rtcp, valid_rtcp, valid_rtcp_header
from proxy.media.srtp import SrtpError, SrtpReceiver, SrtpSender
from proxy.media.types import (
    Address,
    DtlsError,
    DtlsKeyedEvent,
    DtlsState,
    IdleEvent,
    LatchedEvent,
    LocalEndpoint,
    MediaError,
    MediaEvent,
    MediaTotals,
    PortsExhaustedError,
    RestoredStream,
    SrtpIndex,
    SrtpIndexEvent,
    SrtpParams,
    StreamConfig,
    StreamCounters,
    StreamStats,
    UnknownStreamError,
)

if TYPE_CHECKING:
    from proxy.media.dtls import DtlsSession

log = structlog.get_logger("toneguard.media")


_MAX_DATAGRAM = 65535
# A masked stream's packets are held for inspection: one larger than an Ethernet frame is no
# phone's audio (G.711 at a 160 ms ptime is 1 292 bytes), and 65 000-byte ones would make the
# look-ahead hold seconds of audio per packet. Dropped and counted instead.
_MAX_MASKED_PACKET = 1500
_EVENTS_PER_WAKEUP = 512  # then back to the event loop (ng, API, timers), which calls again
PORT_QUARANTINE_SECONDS = 10.0  # a released port is handed out again last for this long
# Sources remembered per port from the streams released on it (newest first): bounded by the
# port range, so no expiry is needed. See ``_may_latch``.
STALE_SOURCES_PER_PORT = 4

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class _DtlsLoader:
    """:mod:`proxy.media.dtls`, imported with the first DTLS-SRTP leg. Why: it imports
    pyOpenSSL and cryptography (about 0.2 s, more on a loaded host, in every media worker)
    and only WebRTC legs need them; a worker that never gets one never pays, and one that is
    restarted relays its restored plain calls that much sooner. The import runs in a thread
    so that the engine's tick (every other call's media) goes on meanwhile; ``configure``
    awaits it before it builds a leg's DTLS session, which is the only way one is made."""

    def __init__(self) -> None:
        self.session: type[DtlsSession] | None = None

    async def load(self) -> type[DtlsSession]:
        if self.session is None:
            # Two legs at once: the second thread's import waits for the first's (module lock).
            module = await asyncio.to_thread(importlib.import_module, "proxy.media.dtls")
            self.session = module.DtlsSession
        return self.session

    def loaded(self) -> type[DtlsSession]:
        """The session class; only after :meth:`load` (a leg is configured before it is used)."""
        assert self.session is not None, "DTLS session needed before a DTLS leg was configured"
        return self.session


_dtls = _DtlsLoader()


def _ip(host: str) -> _IP | None:
    """An address literal as one comparable value (IPv4-mapped IPv6 as IPv4); None if not one."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _sdp_source(peer: Address | None) -> tuple[_IP | None, bool]:
    """(the IP a source must have, whether an unknown source may be learned in the window).

    None or an unspecified address (0.0.0.0, ::, an empty c=) names no one: learn within the
    window. A host name cannot be matched against a datagram's source without DNS on the packet
    path, so it matches no source (only ``learn_any_source`` latches it): fail closed.
    """
    if peer is None or not peer[0]:
        return None, True
    ip = _ip(peer[0])
    if ip is None:
        return None, False
    if ip.is_unspecified:
        return None, True
    return ip, False


class _Gate:
    """Stands in for a WebRTC leg's SRTP contexts while no verified keys may be used: before
    the DTLS handshake verified the peer, after it failed, or (sending) while ICE consent has
    lapsed. Every packet to or from the leg is refused as an SRTP failure would be, so the
    relay's fast path needs no extra check for it (and plain streams never meet it)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _refuse(self, packet: bytes) -> bytes:
        raise SrtpError(self.reason)

    unprotect = unprotect_rtcp = protect = protect_rtcp = _refuse


_CONSENT_GATE = _Gate("ICE consent expired")  # the one gate that consent restores


class _Poller:
    """All media sockets of an engine in one epoll set, itself one reader of the event loop.

    Why: with thousands of sockets each ready once per 20 ms, the event loop's own per-socket
    dispatch cost a third of the relay's CPU (profiled); here a wakeup costs one ``epoll_wait``
    and a dict lookup per ready socket. Level-triggered: a socket with a datagram still
    queued is simply reported again.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, fd: int, reader: Callable[[], None]) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._epoll.fileno(), self._ready)
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = reader

    def remove(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def detach(self) -> None:
        """Leave the event loop (the engine stopped); the next ``add`` joins the running one."""
        if self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._loop = None

    def _ready(self) -> None:
        readers = self._readers
        for fd, _ in self._epoll.poll(0, _EVENTS_PER_WAKEUP):
            reader = readers.get(fd)
            if reader is not None:
                try:
                    reader()
                except Exception:  # one packet's failure must not stall the others
                    log.exception("media packet handling failed")


class _Socket:
    """One UDP socket of a stream, read with one ``recvfrom`` per readiness.

    (An asyncio datagram transport reads until the socket is empty: when packets arrive one
    at a time per socket, as RTP does, that is a second, empty system call per packet.)
    """

    def __init__(self, sock: socket.socket, poller: _Poller,
                 on_datagram: Callable[[_Stream, bytes, Address], None]) -> None:
        self._sock = sock
        self._poller = poller
        self._on_datagram = on_datagram
        self.stream: _Stream | None = None
        poller.add(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
        except OSError:  # nothing after all, or an ICMP error queued on the socket: go on
            return
        if len(addr) != 2:  # IPv6 (host, port, flowinfo, scope_id): ports are what we keep
            addr = (addr[0], addr[1])
        if self.stream is not None:
            self._on_datagram(self.stream, data, addr)

    def sendto(self, data: bytes, addr: Address) -> bool:
        """False when the kernel refused the datagram (buffer full, unreachable): dropped."""
        try:
            self._sock.sendto(data, addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._poller.remove(self._sock.fileno())
        self._sock.close()


class _ConnectedSocket(_Socket):
    """A second socket on a stream's RTP port, connected to the endpoint it latched onto.

    Why: a connected UDP socket skips the route lookup and address parsing on every send
    (0.6 µs of a 3.5 µs send here) and needs no source address on receive. The kernel hands
    it the latched endpoint's datagrams (a connected socket outranks the unconnected one in
    the port's SO_REUSEPORT group); anyone else's still reach the stream's own socket, which
    counts and drops them.
    """

    def __init__(self, sock: socket.socket, poller: _Poller, endpoint: Address,
                 on_datagram: Callable[[_Stream, bytes, Address], None]) -> None:
        super().__init__(sock, poller, on_datagram)
        self.endpoint = endpoint

    def send(self, data: bytes) -> bool:
        """To the endpoint; False when the kernel refused the datagram: dropped."""
        try:
            self._sock.send(data)
        except OSError:
            return False
        return True

    def _readable(self) -> None:
        try:
            data = self._sock.recv(_MAX_DATAGRAM)
        except OSError:  # nothing after all, or ICMP unreachable from the endpoint: go on
            return
        if self.stream is not None:
            self._on_datagram(self.stream, data, self.endpoint)


@dataclass
class _Counters:
    """A stream's live counters, written by the packet path. Every int field is a
    :class:`StreamCounters` field of the same name (what stats and totals report)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    errors: int = 0
    last_packet_mono: float = 0.0  # engine clock; 0 with packets_in == 0: none yet
    dtmf_masked: int = 0
    stranger_packets: int = 0  # dropped (and in ``errors``): a source this stream refuses
    rtcp_not_rtcp: int = 0  # dropped (and in ``errors``): on an RTCP path, not RTCP
    uninspectable_packets: int = 0  # dropped (and in ``errors``): masked, PT not inspectable
    webrtc_dropped: int = 0  # dropped (and in ``errors``): DTLS/ICE leg not verified, refused
    dtls_failures: int = 0  # handshakes that failed


_COUNTER_NAMES = tuple(f.name for f in fields(StreamCounters))


def _counts(c: _Counters) -> dict[str, int]:
    return {name: getattr(c, name) for name in _COUNTER_NAMES}


def _frozen(c: _Counters) -> StreamCounters:
    return StreamCounters(**_counts(c))


@dataclass
class _Stream:
    stream_id: str
    call_id: str
    local: LocalEndpoint
    rtp: _Socket
    rtcp: _Socket | None  # None under rtcp-mux
    config: StreamConfig = field(default_factory=StreamConfig)
    peer: _Stream | None = None  # the linked stream: where what arrives here is relayed
    # More streams that get what ``peer`` gets (subscriptions: a supervisor listening in).
    # A tuple, empty on almost every stream: the relay checks it with one truth test.
    outputs: tuple[_Stream, ...] = ()
    inputs: list[_Stream] = field(default_factory=list)  # streams whose ``outputs`` hold this
    direct: _ConnectedSocket | None = None  # connected to ``endpoint`` once latched
    endpoint: Address | None = None  # latched RTP source / destination
    rtcp_endpoint: Address | None = None
    receiver: SrtpReceiver | _Gate | None = None
    sender: SrtpSender | _Gate | None = None
    # WebRTC legs (None otherwise): the DTLS association and the ICE-lite responder.
    dtls: DtlsSession | None = None
    ice: IceLite | None = None
    dtls_seen: DtlsState = DtlsState.NEW  # the session state the engine has acted on
    held_sender: SrtpSender | None = None  # the real sender while consent has lapsed
    consent_lost: bool = False
    warned_webrtc: bool = False
    counters: _Counters = field(default_factory=_Counters)
    idle_reported: bool = False
    released: bool = False
    # Derived from ``config`` once per configure (the packet path only reads them):
    sdp_ip: _IP | None = None  # a source must have this IP to latch (None: see sdp_learnable)
    sdp_learnable: bool = True  # no usable SDP address: any source may latch in the window
    learn_until: float = 0.0  # engine clock: end of the learning window
    # PT -> what masking can read, while masking is effective (None: nothing to drop)
    masked_kinds: dict[int, PayloadKind] | None = None
    warned_stranger: bool = False
    warned_uninspectable: bool = False
    # Sources that latched the streams released on this port before (the ended calls' phones,
    # which may still be sending): none of them may latch this stream (see ``_may_latch``).
    stale_sources: tuple[Address, ...] = ()
    srtp_mark: tuple[object, object] = (None, None)  # SRTP indexes as last reported

    def rtp_destination(self) -> Address | None:
        return self.endpoint or self.config.peer

    def rtcp_destination(self) -> Address | None:
        if self.config.rtcp_mux:
            return self.rtp_destination()
        return self.rtcp_endpoint or self.config.rtcp_peer or (
            (self.config.peer[0], self.config.peer[1] + 1) if self.config.peer else None)


class LocalMediaEngine:
    """A :class:`proxy.media.types.MediaEngine` running in this process's event loop."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        port_min: int = 30000,
        port_max: int = 40000,
        *,
        pipeline_factory: Callable[[], AudioPipeline] = PassthroughPipeline,
        tick_ms: int = 20,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if port_min % 2 or port_min >= port_max:
            raise ValueError(f"port range {port_min}-{port_max}: port_min must be even and "
                             "below port_max")
        self._address = address
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._port_min, self._port_max = port_min, port_max
        self._pipeline = pipeline_factory()
        self._tick = tick_ms / 1000.0
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._handshaking: dict[str, _Stream] = {}  # DTLS legs whose timers the tick runs
        self._released_ports: dict[int, float] = {}  # port → when its stream was released
        self._stale_sources: dict[int, tuple[Address, ...]] = {}  # port → its old sources
        self._poller = _Poller()
        self._subscribers: list[Callable[[MediaEvent], None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._next_idle_scan = 0.0  # scanned about once a second, not every tick
        self._released = StreamCounters()  # of the streams already released (for totals)
        self._tick_time = Recorder(TICK_BUCKETS)  # how long each tick's work took
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._ticker = asyncio.create_task(self._tick_loop(), name="media-tick")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for stream_id in list(self._streams):
            await self.release(stream_id)
        self._poller.detach()
        self._started = False

    def subscribe(self, callback: Callable[[MediaEvent], None]) -> None:
        self._subscribers.append(callback)

    # --- streams ---------------------------------------------------------------------------

    async def allocate(self, stream_id: str, call_id: str, *, rtcp_mux: bool,
                       port: int | None = None) -> LocalEndpoint:
        if stream_id in self._streams:
            return self._streams[stream_id].local
        rtp_sock, rtcp_sock, port = self._bind_pair(rtcp_mux, port)
        rtp = _Socket(rtp_sock, self._poller, self._on_rtp)
        rtcp = _Socket(rtcp_sock, self._poller, self._on_rtcp) if rtcp_sock is not None else None
        local = LocalEndpoint(self._address, port, port if rtcp_mux else port + 1)
        stream = _Stream(stream_id, call_id, local, rtp, rtcp,
                         config=StreamConfig(rtcp_mux=rtcp_mux))
        for sock in (rtp, rtcp):
            if sock is not None:
                sock.stream = stream
        stream.stale_sources = self._stale_sources.get(port, ())
        stream.counters.last_packet_mono = self._clock()  # idle counts from allocation
        stream.learn_until = stream.counters.last_packet_mono + stream.config.learning_window
        self._streams[stream_id] = stream
        return local

    def _port_order(self) -> Iterator[int]:
        """Every even port of the range (room for port + 1) once, in an unpredictable order.

        Why: sequential ports let anyone who sees one call's SDP guess the next call's ports
        and race its first packet. A random start and a random step coprime with the number
        of slots visits each slot exactly once, so exhaustion is still detected exactly.
        """
        slots = (self._port_max - self._port_min + 1) // 2
        start = secrets.randbelow(slots)
        step = 1
        if slots > 2:
            step = 1 + secrets.randbelow(slots - 1)
            while math.gcd(step, slots) != 1:
                step = 1 + secrets.randbelow(slots - 1)
        # A port released moments ago comes last, the latest released last of all: the ended
        # call's phone may still send to it (a BYE crossing its last packets), and those must
        # not reach the next call's party.
        cutoff = self._clock() - PORT_QUARANTINE_SECONDS
        self._released_ports = {p: at for p, at in self._released_ports.items() if at > cutoff}
        recent = self._released_ports
        for i in range(slots):
            port = self._port_min + 2 * ((start + i * step) % slots)
            if port not in recent:
                yield port
        yield from sorted(recent, key=recent.__getitem__)

    def _bind_pair(self, rtcp_mux: bool, wanted: int | None = None
                   ) -> tuple[socket.socket, socket.socket | None, int]:
        """A free port (pair) of the range; ``wanted``: that port or none (a call restored
        after a restart keeps the ports its parties were told)."""
        if wanted is not None and not (self._port_min <= wanted < self._port_max
                                       and wanted % 2 == 0):
            raise PortsExhaustedError(f"port {wanted} is not an even port of "
                                      f"{self._port_min}-{self._port_max}")
        for port in self._port_order() if wanted is None else (wanted,):
            socks: list[socket.socket] = []
            try:
                for p in (port,) if rtcp_mux else (port, port + 1):
                    s = socket.socket(self._family, socket.SOCK_DGRAM)
                    socks.append(s)
                    if p == port:  # for the connected twin (only our own user may join)
                        self._ensure_unshared(p)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    s.bind((self._address, p))
                    s.setblocking(False)
            except OSError as exc:
                for s in socks:
                    s.close()
                if exc.errno in (errno.EMFILE, errno.ENFILE):  # not a port problem: say so
                    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                    raise PortsExhaustedError(
                        f"out of file descriptors (open-file limit {limit}; each stream "
                        "holds up to three sockets)") from exc
                continue
            return socks[0], (None if rtcp_mux else socks[1]), port
        if wanted is not None:
            raise PortsExhaustedError(f"port {wanted} (or {wanted + 1}) is taken")
        raise PortsExhaustedError(f"no free port pair in {self._port_min}-{self._port_max}")

    def _ensure_unshared(self, port: int) -> None:
        """Raise EADDRINUSE if any socket holds ``port``. Why: the RTP socket joins an
        SO_REUSEPORT group (for its connected twin), and a group admits any socket of the same
        user that also asks for it: another ToneGuard process on an overlapping range, or a
        worker outliving its node, would silently receive a share of this stream's datagrams.
        A socket bound without SO_REUSEPORT fails on a port anyone holds."""
        with socket.socket(self._family, socket.SOCK_DGRAM) as probe:
            probe.bind((self._address, port))

    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError as exc:
            raise UnknownStreamError(stream_id) from exc

    async def configure(self, stream_id: str, config: StreamConfig) -> None:
        if config.dtls is not None:
            await _dtls.load()  # first, so that nothing read below changes while it imports
        stream = self._get(stream_id)
        old = stream.config
        if stream.rtcp is None and not config.rtcp_mux:
            raise MediaError(f"{stream_id}: allocated with rtcp-mux; cannot split RTCP later")
        # SRTP contexts live as long as their keys: a re-INVITE with the same keys (a hold, a
        # resume, a block DTMF) keeps the rollover counter and replay window, so a phone that
        # keeps its key keeps being understood after 65 536 packets too.
        if config.dtls is not None:
            self._configure_dtls(stream, config)
        else:
            if stream.dtls is not None:  # a leg that left DTLS: its keys go with it
                self._handshaking.pop(stream_id, None)
                stream.dtls = None
                stream.receiver = stream.sender = None
            if config.srtp_recv != old.srtp_recv or stream.receiver is None:
                stream.receiver = SrtpReceiver(config.srtp_recv) if config.srtp_recv else None
            if config.srtp_send != old.srtp_send or stream.sender is None:
                stream.sender = SrtpSender(config.srtp_send) if config.srtp_send else None
        # ICE latches on authenticated checks, not on the SDP's address: the browser may have
        # checked before its answer (which names the address) reached us; same credentials,
        # same latch.
        ice_kept = config.ice is not None and old.ice is not None and (
            config.ice.local_ufrag, config.ice.local_pwd) == (old.ice.local_ufrag,
                                                              old.ice.local_pwd)
        if not ice_kept and (config.peer, config.symmetric, config.strict_source,
                             config.learn_any_source) != (
                old.peer, old.symmetric, old.strict_source, old.learn_any_source):
            self._set_endpoint(stream, None)  # a new remote address in SDP: latch afresh
            stream.rtcp_endpoint = None
        stream.config = config
        self._configure_ice(stream, config)
        stream.sdp_ip, stream.sdp_learnable = _sdp_source(config.peer)
        effective = config.masking is not None and config.masking.effective
        stream.masked_kinds = payload_kinds(config.codecs) if effective else None
        # The learning window (re)opens for an unlatched stream whenever either side of its
        # link is configured: a caller starts sending when the answer comes, not at the offer.
        now = self._clock()
        for s in (stream, stream.peer):
            if s is not None and s.endpoint is None:
                s.learn_until = max(s.learn_until, now + s.config.learning_window)
        self._sync_pipeline(stream_id, old.masking, config.masking)

    def _configure_dtls(self, stream: _Stream, config: StreamConfig) -> None:
        """A DTLS-SRTP leg: a new handshake when its parameters change (first configure, a
        re-INVITE with a new fingerprint or role); until it verifies the peer, the gate."""
        if stream.dtls is not None and stream.dtls.params == config.dtls:
            return
        assert config.dtls is not None
        if not config.dtls.fingerprints:  # the peer's answer has not come: gated, no handshake
            self._handshaking.pop(stream.stream_id, None)
            stream.dtls = None
            stream.receiver = _Gate("DTLS leg waiting for the peer's fingerprint")
            stream.sender = _Gate("DTLS leg waiting for the peer's fingerprint")
            stream.held_sender = None
            return
        stream.dtls = _dtls.loaded()(config.dtls, self._clock)
        stream.dtls_seen = DtlsState.NEW
        stream.receiver = _Gate("DTLS handshake has not verified the peer")
        stream.sender = _Gate("DTLS handshake has not verified the peer")
        stream.held_sender = None
        self._handshaking[stream.stream_id] = stream
        if config.dtls.role == "server":
            stream.dtls.start()  # the handshake deadline runs from now
        elif config.ice is None and (config.peer is not None or stream.endpoint is not None):
            self._start_client(stream)  # no ICE to wait for: the SDP says where the peer is

    def _configure_ice(self, stream: _Stream, config: StreamConfig) -> None:
        if config.ice is None:
            stream.ice = None
        elif stream.ice is None or (stream.ice.params.local_ufrag, stream.ice.params.local_pwd) \
                != (config.ice.local_ufrag, config.ice.local_pwd):
            stream.ice = IceLite(config.ice, self._clock)
        else:
            stream.ice.params = config.ice  # the peer's ufrag arrived: consent state stays
        reader = self._reader(stream)
        for sock in (stream.rtp, stream.direct):
            if sock is not None:
                sock._on_datagram = reader

    async def restore(self, call_id: str, streams: list[RestoredStream],
                      links: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
        try:
            for s in streams:
                await self.allocate(s.stream_id, call_id, rtcp_mux=s.rtcp_mux, port=s.port)
                await self.configure(s.stream_id, s.config)  # masking before any link
                stream = self._streams[s.stream_id]
                if s.dtls_keys is not None and s.config.dtls is not None:
                    self._resume_webrtc(stream, s.dtls_keys, s.endpoint)
                elif s.endpoint is not None and not _webrtc(s.config):
                    # Latched as before the crash: the first packet after a restart may come
                    # from a stranger on the caller's own host, which "the SDP's IP, any port"
                    # would let take the stream over.
                    self._set_endpoint(stream, s.endpoint)
                if isinstance(stream.receiver, SrtpReceiver):
                    stream.receiver.resume(s.recv_index)
                if isinstance(stream.sender, SrtpSender):
                    stream.sender.resume(s.send_index)
            for a, b in links:
                await self.link(a, b)
            for source, sink in outputs:
                await self.add_output(source, sink)
        except Exception:  # a port taken, a suite this build lacks: none of it stays bound
            for s in streams:
                await self.release(s.stream_id)
            raise

    def _resume_webrtc(self, stream: _Stream, keys: tuple[SrtpParams, SrtpParams],
                       endpoint: Address | None) -> None:
        """A WebRTC leg keyed before the restart: verified from the sealed record (its
        handshake's keys), latched on the candidate it used, consent as of now."""
        assert stream.config.dtls is not None
        recv_key, send_key = keys
        self._handshaking.pop(stream.stream_id, None)
        stream.dtls = _dtls.loaded().resumed_with(stream.config.dtls, self._clock, recv_key,
                                                  send_key)
        stream.dtls_seen = DtlsState.CONNECTED
        stream.receiver, stream.sender = SrtpReceiver(recv_key), SrtpSender(send_key)
        stream.held_sender = None
        stream.consent_lost = False
        if endpoint is not None:
            self._set_endpoint(stream, endpoint)
            if stream.ice is not None:
                stream.ice.assume_consent(endpoint)

    def _reader(self, stream: _Stream) -> Callable[[_Stream, bytes, Address], None]:
        return self._on_webrtc if _webrtc(stream.config) else self._on_rtp

    def _sync_pipeline(self, stream_id: str, old: MaskingPolicy | None,
                       new: MaskingPolicy | None) -> None:
        if old is None and new is not None:
            self._pipeline.open(stream_id, new)
        elif old is not None and new is None:
            # What the pipeline still holds for this stream is dropped, not flushed: a flush
            # would release audio the detector has not finished looking at.
            self._pipeline.close(stream_id)
        elif new is not None and new != old:
            self._pipeline.update(stream_id, new)

    async def link(self, a: str, b: str) -> None:
        sa, sb = self._get(a), self._get(b)
        sa.peer, sb.peer = sb, sa

    async def add_output(self, source: str, sink: str) -> None:
        src, out = self._get(source), self._get(sink)
        if src is out:
            raise MediaError(f"{source}: a stream cannot send to itself")
        if out not in src.outputs:
            src.outputs = (*src.outputs, out)
            out.inputs.append(src)

    async def remove_output(self, source: str, sink: str) -> None:
        src, out = self._streams.get(source), self._streams.get(sink)
        if src is not None and out is not None and out in src.outputs:
            src.outputs = tuple(s for s in src.outputs if s is not out)
            out.inputs.remove(src)

    async def release(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        for src in stream.inputs:  # nothing more is sent out of a released stream
            src.outputs = tuple(s for s in src.outputs if s is not stream)
        for out in stream.outputs:
            out.inputs.remove(stream)
        stream.inputs.clear()
        stream.outputs = ()
        self._handshaking.pop(stream_id, None)
        if stream.config.masking is not None:
            self._pipeline.close(stream_id)
        for sock in (stream.rtp, stream.rtcp, stream.direct):
            if sock is not None:
                sock.close()
        stream.direct = None
        if stream.peer is not None:
            stream.peer.peer = None
        stream.peer = None
        stream.released = True
        self._released += _frozen(stream.counters)  # totals stay monotonic
        self._released_ports[stream.local.rtp_port] = self._clock()
        # Its sources (and those it inherited, if a stream never latched they still matter):
        # the next stream on this port refuses them, however long after the quarantine.
        latched = tuple(a for a in (stream.endpoint, stream.rtcp_endpoint) if a is not None)
        self._stale_sources[stream.local.rtp_port] = tuple(
            dict.fromkeys(latched + stream.stale_sources))[:STALE_SOURCES_PER_PORT]

    async def stats(self, stream_id: str) -> StreamStats:
        s = self._get(stream_id)
        c = s.counters
        # Only the engine clock is read per packet; the wall time is worked out here.
        last_packet = time.time() - (self._clock() - c.last_packet_mono) if c.packets_in else 0.0
        return StreamStats(**_counts(c), last_packet=last_packet, endpoint=s.endpoint)

    async def totals(self) -> MediaTotals:
        live = [s.counters for s in self._streams.values()]
        released = self._released
        counts = {name: getattr(released, name) + sum(getattr(c, name) for c in live)
                  for name in _COUNTER_NAMES}
        return MediaTotals(**counts, masking=self._pipeline.counters(),
                           tick_seconds=self._tick_time.snapshot(),
                           streams=len(self._streams), workers=1)

    # --- packet path -----------------------------------------------------------------------
    #
    # Who may send to a stream (fail closed: the first packet may come from a stranger, and
    # "RTP Bleed" is what happens when it latches):
    # - Latched: only the latched source (IP and port) is accepted: the fast path is one tuple
    #   comparison. A new SSRC from it is fine (transfers, media servers restart SSRCs).
    # - Unlatched, SDP address usable: a source whose IP is the SDP address (any port: NAT'd
    #   port) latches; ``strict_source``: only the SDP address and port exactly.
    # - Unlatched, no usable SDP address (None, 0.0.0.0, ::), or ``learn_any_source``: any source
    #   latches, but only within the learning window after (re)configuration.
    # - SRTP: the packet must authenticate before it latches (libsrtp updates its replay window
    #   only on success, so a stranger's attempts cannot disturb the real peer's).
    # - ``media_handover``: a latched stream moves to a new source that SRTP-authenticates, or,
    #   for plain RTP, to one the unlatched rules admit.
    # - RTCP latches only onto the RTP endpoint's IP (and never before RTP has latched); under
    #   rtcp-mux only the RTP endpoint itself. Anything on an RTCP path must be RTCP.
    # - A source that latched an earlier stream on the same port (a released call's phone that
    #   still sends: a BYE crossing its last packets, a phone ignoring the BYE) never latches,
    #   unless the SDP names exactly its address and port. Why: the port quarantine only
    #   delays reuse, and the old phone usually shares the new party's IP (one carrier SBC),
    #   so the "SDP's IP, any port" rule would let it win the race to the first packet.
    # Everything refused is counted (``stranger_packets``, in ``errors``), logged once per
    # stream, never relayed; a stranger is never sent anything (we send only to the endpoint
    # or the SDP address).

    def _may_latch(self, stream: _Stream, addr: Address, port: int | None) -> bool:
        """Whether an unlatched stream accepts ``addr`` (``port``: the SDP's, for strict)."""
        config = stream.config
        if config.strict_source or addr in stream.stale_sources:  # only the SDP's address
            return stream.sdp_ip is not None and addr[1] == port and _ip(addr[0]) == stream.sdp_ip
        if stream.sdp_ip is not None and _ip(addr[0]) == stream.sdp_ip:
            return True
        return (config.learn_any_source or stream.sdp_learnable) and \
            self._clock() < stream.learn_until

    def _admits_rtp(self, stream: _Stream, addr: Address) -> bool:
        """A packet from ``addr`` (not the latched endpoint) may be checked further."""
        config = stream.config
        port = config.peer[1] if config.peer else None
        if stream.endpoint is None:  # unlatched (always so when asymmetric)
            return self._may_latch(stream, addr, port)
        if not config.media_handover:
            return False
        # Handover: with SRTP whoever authenticates (checked next, before latching);
        # plain RTP carries no proof of origin, so only a source the latch rules admit.
        return stream.receiver is not None or self._may_latch(stream, addr, port)

    def _admits_rtcp(self, stream: _Stream, addr: Address) -> bool | None:
        """For RTCP from ``addr`` (not the RTCP endpoint): None = refuse, False = accept
        without latching, True = accept and latch the RTCP endpoint."""
        config = stream.config
        if config.rtcp_mux:  # one 5-tuple for both: RTP decides who that is
            if stream.endpoint is not None:
                return None
            port = config.peer[1] if config.peer else None
            return False if self._may_latch(stream, addr, port) else None
        dest = stream.rtcp_destination()
        port = dest[1] if dest else None
        if stream.rtcp_endpoint is not None and not config.media_handover:
            return None
        endpoint = stream.endpoint
        if endpoint is None:  # RTP not latched (or asymmetric): accept what RTP would
            return False if self._may_latch(stream, addr, port) else None
        if _ip(addr[0]) != _ip(endpoint[0]) or (config.strict_source and addr[1] != port):
            return None
        if addr in stream.stale_sources and addr[1] != port:  # the ended call's phone's RTCP
            return None
        return True

    def _refuse(self, stream: _Stream, addr: Address) -> None:
        c = stream.counters
        c.errors += 1
        c.stranger_packets += 1
        if not stream.warned_stranger:
            stream.warned_stranger = True
            log.warning("media from a source this stream does not accept: dropped",
                        stream=stream.stream_id, source=addr[0], source_port=addr[1],
                        endpoint=stream.endpoint)

    def _set_endpoint(self, stream: _Stream, addr: Address | None) -> None:
        """Latch (or forget) the RTP endpoint, with a socket connected to it."""
        stream.endpoint = addr
        if stream.direct is not None:
            stream.direct.close()
            stream.direct = None
        if not _webrtc(stream.config):  # a WebRTC leg's latch is stored with its DTLS keys
            self._publish(LatchedEvent(stream.stream_id, addr))
        if addr is None:
            return
        log.info("media latched", stream=stream.stream_id, call_id=stream.call_id,
                 source=addr[0], source_port=addr[1])  # once per stream and source
        if stream.rtcp_endpoint is not None and _ip(stream.rtcp_endpoint[0]) != _ip(addr[0]):
            stream.rtcp_endpoint = None  # RTCP follows the RTP endpoint (media handover)
        # Everything that can fail is inside the ``try``, creating the socket too: with no
        # descriptor left (EMFILE) or no epoll watch (ENOSPC) this runs in the poller for the
        # latching packet, which must be relayed all the same.
        sock: socket.socket | None = None
        try:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._address, stream.local.rtp_port))
            sock.connect(addr)
            sock.setblocking(False)
            direct = _ConnectedSocket(sock, self._poller, addr, self._reader(stream))
        except OSError as exc:  # relayed through the stream's own socket instead
            if sock is not None:
                sock.close()
            log.warning("no connected socket for a latched endpoint", stream=stream.stream_id,
                        error=str(exc))
            return
        direct.stream = stream
        stream.direct = direct

    def _on_rtp(self, stream: _Stream, data: bytes, addr: Address) -> None:
        # The hot path: every relayed packet of every call runs through here.
        if stream.released:
            return
        config = stream.config
        if config.rtcp_mux and is_rtcp(data):
            self._on_rtcp(stream, data, addr)
            return
        c = stream.counters
        latch = False
        if stream.endpoint != addr:
            if not self._admits_rtp(stream, addr):
                self._refuse(stream, addr)
                return
            latch = config.symmetric
        if stream.receiver is not None:
            try:
                data = stream.receiver.unprotect(data)
            except SrtpError:
                c.errors += 1
                c.webrtc_dropped += type(stream.receiver) is _Gate
                return
        if len(data) < 12 or data[0] >> 6 != 2:  # not RTP version 2
            c.errors += 1
            return
        if len(data) > _MAX_MASKED_PACKET and config.masking is not None:
            c.errors += 1
            return
        if latch:  # an admitted source's first valid (authenticated) packet
            self._set_endpoint(stream, addr)
        c.packets_in += 1
        c.bytes_in += len(data)
        c.last_packet_mono = self._clock()
        stream.idle_reported = False
        if config.masking is not None:
            kinds = stream.masked_kinds
            if kinds is not None and kinds.get(data[1] & 0x7F, UNINSPECTABLE) is UNINSPECTABLE:
                self._uninspectable(stream, data[1] & 0x7F)
                return
            try:
                packet = RtpPacket.parse(data)
            except RtpParseError:
                c.errors += 1
                return
            self._pipeline.push(stream.stream_id, packet, config.codecs, c.last_packet_mono)
            return
        if stream.peer is not None:
            self._send_out(stream.peer, data)
        if stream.outputs:
            for out in stream.outputs:
                self._send_out(out, data)

    def _uninspectable(self, stream: _Stream, payload_type: int) -> None:
        """A masked stream's packet the masking cannot read (an unknown codec, a payload type
        the SDP did not name): dropped, never relayed. Said once per stream: the operator must
        know the caller's audio is not getting through."""
        c = stream.counters
        c.errors += 1
        c.uninspectable_packets += 1
        if not stream.warned_uninspectable:
            stream.warned_uninspectable = True
            # The PT only: an encoding name is free text from the SDP and stays out of logs.
            log.warning("payload type cannot be inspected on a masked stream: dropped",
                        stream=stream.stream_id, payload_type=payload_type,
                        in_sdp=payload_type in stream.config.codecs)

    def _send_linked(self, arrived: str, packet: RtpPacket) -> None:
        """A packet the masking pipeline released (masked where it had to be): to the linked
        stream and every output, the same bytes to each."""
        stream = self._streams.get(arrived)
        if stream is None:
            return
        if stream.peer is not None:
            self._send_out(stream.peer, bytes(packet))
        if stream.outputs:
            plain = bytes(packet)
            for out in stream.outputs:
                self._send_out(out, plain)

    def _send_out(self, out: _Stream, plain: bytes) -> None:
        dest = out.rtp_destination()
        if dest is None:
            out.counters.errors += 1  # nowhere to send yet (answer not seen, nothing latched)
            return
        if out.config.recording is not None:
            out.rtp.sendto(plain, out.config.recording)
        wire = plain
        if out.sender is not None:
            try:
                wire = out.sender.protect(plain)
            except SrtpError:
                out.counters.errors += 1
                out.counters.webrtc_dropped += type(out.sender) is _Gate
                return
        c = out.counters
        # The connected socket, when there is one, is connected to ``dest``.
        if not (out.direct.send(wire) if out.direct is not None else out.rtp.sendto(wire, dest)):
            c.errors += 1  # buffer full, endpoint unreachable: this packet is dropped
            return
        c.packets_out += 1
        c.bytes_out += len(plain)

    def _on_rtcp(self, stream: _Stream, data: bytes, addr: Address) -> None:
        if stream.released:
            return
        c = stream.counters
        plain = stream.receiver is None
        # Plain: the whole compound is checked now. SRTCP: only its clear header can be, until
        # it has authenticated (below).
        if not (valid_rtcp(data) if plain else valid_rtcp_header(data)):
            self._not_rtcp(stream)
            return
        latch = False
        if addr != (stream.endpoint if stream.config.rtcp_mux else stream.rtcp_endpoint):
            verdict = self._admits_rtcp(stream, addr)
            if verdict is None:
                self._refuse(stream, addr)
                return
            latch = verdict and stream.config.symmetric
        if stream.receiver is not None:
            try:
                data = stream.receiver.unprotect_rtcp(data)
            except SrtpError:
                c.errors += 1
                return
            if not valid_rtcp(data):
                self._not_rtcp(stream)
                return
        if latch:
            stream.rtcp_endpoint = addr
        c.rtcp_in += 1
        out = stream.peer
        if out is None:
            return
        dest = out.rtcp_destination()
        if dest is None:
            return
        if out.sender is not None:
            try:
                data = out.sender.protect_rtcp(data)
            except SrtpError:
                out.counters.errors += 1
                return
        sock = out.rtp if out.config.rtcp_mux or out.rtcp is None else out.rtcp
        if sock.sendto(data, dest):
            out.counters.rtcp_out += 1
        else:
            out.counters.errors += 1

    def _not_rtcp(self, stream: _Stream) -> None:
        """On an RTCP port, or demuxed as RTCP under rtcp-mux, but not RTCP (RFC 5761 §4):
        dropped. Plain RTP sent to the a=rtcp port once reached the agent this way."""
        c = stream.counters
        c.errors += 1
        c.rtcp_not_rtcp += 1

    # --- WebRTC legs: demultiplexing, ICE-lite, DTLS ---------------------------------------

    def _on_webrtc(self, stream: _Stream, data: bytes, addr: Address) -> None:
        """A DTLS/ICE leg's datagrams, told apart by their first byte (RFC 7983 §7): 0-3
        STUN, 20-63 DTLS, 128-191 RTP/RTCP (the relay's own path); anything else dropped."""
        if stream.released:
            return
        first = data[0] if data else 255
        if 128 <= first <= 191:
            self._on_rtp(stream, data, addr)
        elif first <= 3 and stream.ice is not None:
            self._on_stun(stream, data, addr)
        elif 20 <= first <= 63 and stream.dtls is not None:
            self._on_dtls(stream, data, addr)
        else:
            self._webrtc_refuse(stream, addr, "not RTP, or STUN/DTLS this leg does not speak")

    def _webrtc_refuse(self, stream: _Stream, addr: Address, reason: str) -> None:
        c = stream.counters
        c.errors += 1
        c.webrtc_dropped += 1
        if not stream.warned_webrtc:  # once per stream: a flood must not flood the log
            stream.warned_webrtc = True
            log.warning("WebRTC leg: datagram refused", stream=stream.stream_id,
                        source=addr[0], source_port=addr[1], reason=reason)

    def _on_stun(self, stream: _Stream, data: bytes, addr: Address) -> None:
        assert stream.ice is not None
        result = stream.ice.handle(data, addr)
        if result.verdict is Verdict.REFUSED:
            self._webrtc_refuse(stream, addr, f"STUN: {result.reason}")
            return
        stream.rtp.sendto(result.response, addr)
        # The browser's authenticated checks latch the leg (ICE replaces address latching):
        # the first one while nothing is latched, then the path it nominates.
        if stream.endpoint is None or (result.verdict is Verdict.NOMINATED
                                       and stream.endpoint != addr):
            self._set_endpoint(stream, addr)
            if stream.dtls is not None and stream.dtls.state is DtlsState.NEW \
                    and stream.dtls.params.role == "client":
                self._start_client(stream)
            dtls = stream.dtls
            if dtls is not None and dtls.state is DtlsState.CONNECTED and \
                    dtls.recv_key is not None and dtls.send_key is not None:
                # The browser moved to another path after keying: what a restart latches on.
                self._publish(DtlsKeyedEvent(stream.stream_id, dtls.recv_key, dtls.send_key,
                                             addr))
        if stream.consent_lost and addr == stream.endpoint:
            stream.consent_lost = False
            if stream.sender is _CONSENT_GATE:  # never lifts a handshake or failure gate
                stream.sender = stream.held_sender
            stream.held_sender = None
            log.info("ICE consent restored", stream=stream.stream_id)

    def _start_client(self, stream: _Stream) -> None:
        assert stream.dtls is not None
        dest = stream.rtp_destination()
        for record in stream.dtls.start():
            if dest is not None:
                stream.rtp.sendto(record, dest)
        self._dtls_progress(stream)

    def _on_dtls(self, stream: _Stream, data: bytes, addr: Address) -> None:
        assert stream.dtls is not None
        if addr != stream.endpoint:
            # With ICE only a source an authenticated check came from speaks DTLS; without
            # ICE a source the latching rules admit (the handshake then proves who it is).
            config = stream.config
            if config.ice is not None or stream.endpoint is not None or not self._may_latch(
                    stream, addr, config.peer[1] if config.peer else None):
                self._webrtc_refuse(stream, addr, "DTLS from a source that is not the peer")
                return
            self._set_endpoint(stream, addr)
        try:
            replies = stream.dtls.receive(data)
        except DtlsError as exc:
            self._webrtc_refuse(stream, addr, str(exc))
            return
        for record in replies:
            stream.rtp.sendto(record, addr)
        self._dtls_progress(stream)

    def _dtls_progress(self, stream: _Stream) -> None:
        """Act once on each new handshake state: keys in, or the leg failed (logged)."""
        session = stream.dtls
        if session is None or session.state is stream.dtls_seen:
            return
        stream.dtls_seen = session.state
        if session.state is DtlsState.CONNECTED:
            assert session.recv_key is not None and session.send_key is not None
            stream.receiver = SrtpReceiver(session.recv_key)
            sender = SrtpSender(session.send_key)
            if stream.consent_lost:
                stream.held_sender, stream.sender = sender, _CONSENT_GATE
            else:
                stream.sender = sender
            self._handshaking.pop(stream.stream_id, None)
            log.info("DTLS-SRTP leg keyed", stream=stream.stream_id, call_id=stream.call_id,
                     role=session.params.role, profile=session.profile)
            self._publish(DtlsKeyedEvent(stream.stream_id, session.recv_key, session.send_key,
                                         stream.endpoint))
        elif session.state in (DtlsState.FAILED, DtlsState.CLOSED):
            stream.receiver = _Gate(f"DTLS {session.state.value}: {session.reason}")
            stream.sender = _Gate(f"DTLS {session.state.value}: {session.reason}")
            stream.held_sender = None
            stream.counters.dtls_failures += session.state is DtlsState.FAILED
            self._handshaking.pop(stream.stream_id, None)
            log.warning("DTLS leg failed: no media to or from it", stream=stream.stream_id,
                        call_id=stream.call_id, state=session.state.value,
                        reason=session.reason)

    def _poll_webrtc(self) -> None:
        """Tick: DTLS retransmissions and deadlines of the legs still handshaking."""
        for stream in list(self._handshaking.values()):
            session = stream.dtls
            if session is None:
                continue
            dest = stream.rtp_destination()
            for record in session.poll():
                if dest is not None:
                    stream.rtp.sendto(record, dest)
            self._dtls_progress(stream)

    def _check_consent(self) -> None:
        """RFC 7675: stop sending to a browser that stopped sending checks (every second)."""
        for stream in self._streams.values():
            ice = stream.ice
            if ice is None or stream.endpoint is None or stream.consent_lost:
                continue
            ice.forget_stale()
            if not ice.consented(stream.endpoint):
                stream.consent_lost = True
                if not isinstance(stream.sender, _Gate):  # a handshake/failure gate stays
                    stream.held_sender = stream.sender
                    stream.sender = _CONSENT_GATE
                log.warning("ICE consent expired: not sending to the peer",
                            stream=stream.stream_id, call_id=stream.call_id)

    # --- the tick --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self._tick
            delay = next_at - loop.time()
            if delay < -self._tick * 5:  # fell far behind (suspended?): resynchronise
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0.0))
            started = time.perf_counter()
            try:
                self.run_tick()
            except Exception:  # one bad tick must not stop the media plane
                log.exception("media tick failed")
            self._tick_time.observe(time.perf_counter() - started)

    def run_tick(self) -> None:
        """Send what the pipeline releases, publish its digits, report idle streams."""
        now = self._clock()
        for arrived, packet in self._pipeline.tick(now):
            self._send_linked(arrived, packet)
        if self._handshaking:
            self._poll_webrtc()
        for event in self._pipeline.drain_events():
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.counters.dtmf_masked += stream.config.masking is not None and \
                    stream.config.masking.effective
            self._publish(event)
        if now >= self._next_idle_scan:
            self._next_idle_scan = now + min(1.0, self._idle_timeout / 4)
            self._report_idle(now)
            self._check_consent()
            self._report_srtp_indexes()

    def _report_idle(self, now: float) -> None:
        """Publish an IdleEvent for each stream of a call none of whose streams has received
        anything for ``idle_timeout`` (one silent direction, e.g. on hold, is not idle)."""
        silent: dict[str, float] = {}  # call id -> shortest silence among its streams
        for stream in self._streams.values():
            quiet = now - stream.counters.last_packet_mono
            silent[stream.call_id] = min(quiet, silent.get(stream.call_id, quiet))
        for stream in self._streams.values():
            quiet = silent[stream.call_id]
            if not stream.idle_reported and quiet >= self._idle_timeout:
                stream.idle_reported = True
                self._publish(IdleEvent(stream.stream_id, quiet))

    def _report_srtp_indexes(self) -> None:
        """About once a second: each SRTP stream whose index (either direction) passed a
        quarter of the sequence space since it was last reported, so that the stored one trails
        the real one by at most 16 384 packets (what a restart needs: proxy.media.srtp
        ``resumed_roc``). Nothing is reported before the index first nears a rollover (ROC 0,
        sequence below 49 152): a restart then starts at ROC 0, which is right."""
        for stream in self._streams.values():
            receiver, sender = stream.receiver, stream.sender
            if not (isinstance(receiver, SrtpReceiver) or isinstance(sender, SrtpSender)):
                continue
            mark = (receiver.quarter() if isinstance(receiver, SrtpReceiver) else None,
                    sender.quarter() if isinstance(sender, SrtpSender) else None)
            if mark == stream.srtp_mark:
                continue  # the usual case: two slices per direction, no libsrtp call
            stream.srtp_mark = mark
            recv = receiver.index() if isinstance(receiver, SrtpReceiver) else None
            send = sender.index() if isinstance(sender, SrtpSender) else None
            if _near_rollover(recv) or _near_rollover(send):
                self._publish(SrtpIndexEvent(stream.stream_id, recv, send))

    def _publish(self, event: MediaEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("media event subscriber failed", event_type=type(event).__name__)


def _webrtc(config: StreamConfig) -> bool:
    return config.dtls is not None or config.ice is not None


def _near_rollover(index: SrtpIndex | None) -> bool:
    return index is not None and (index.roc > 0 or index.seq >= 0xC000)
