"""The contract between the control plane (ng, REST) and the media plane.

The control plane thinks in *streams*: one per (call, party, media section). A stream owns one
local UDP port (or an RTP/RTCP pair) that faces one remote endpoint. Two streams are *linked*:
what arrives on one is sent out of the other. For an offer from A to B the control plane
allocates stream A (A sends to it; advertised to A in the answer) and stream B (advertised to B
in the offer), links them, then configures each from the SDP of the party it faces.

SRTP keys follow SDES (RFC 4568): each endpoint announces the key it *sends* with. So
``srtp_recv`` is the remote endpoint's key (from its SDP ``a=crypto``), ``srtp_send`` is the key
we generated for that stream and advertised to that endpoint.

Implementations: an in-process engine and a pool of worker processes behind the same
interface; the control plane cannot tell them apart.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, Protocol, Self

from proxy.media.latency import TICK_BUCKETS, Histogram
from proxy.media.policy import MaskingPolicy

Address = tuple[str, int]

SRTP_SUITES = (
    "AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM",
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
)


class MediaError(Exception):
    """Base of media-plane errors (port exhaustion, unknown stream, bad keys)."""


class PortsExhaustedError(MediaError):
    """No free port (pair) left in the configured range."""


class UnknownStreamError(MediaError, KeyError):
    """A stream id the engine does not have."""


# DTLS's error and states live here, not in :mod:`proxy.media.dtls`, so that the engine can
# name them without importing pyOpenSSL and cryptography (see the engine's ``_DtlsLoader``).
class DtlsError(MediaError):
    """A DTLS handshake failed; the message says why (never key material)."""


class DtlsState(enum.Enum):
    NEW = "new"  # nothing received or sent yet
    CONNECTING = "connecting"  # flights exchanged
    CONNECTED = "connected"  # peer verified, keys exported
    FAILED = "failed"  # fingerprint, timeout, alert, profile: the leg stays blocked
    CLOSED = "closed"  # the peer sent close_notify: the leg stays blocked


@dataclass(frozen=True, slots=True)
class SrtpParams:
    """One direction's SRTP master key material."""

    suite: str  # one of SRTP_SUITES
    key_salt: bytes  # master key followed by master salt, raw bytes

    def __repr__(self) -> str:  # keys never reach logs or exceptions
        return f"SrtpParams(suite={self.suite!r}, key_salt=<{len(self.key_salt)} bytes>)"


@dataclass(frozen=True, slots=True)
class SrtpIndex:
    """Where one direction of an SRTP stream stands (RFC 3711 §3.3.1): the SSRC of its last
    packet, libsrtp's rollover counter for it, and that packet's sequence number. Not secret
    (the SSRC and sequence number travel in clear; the ROC follows from counting them)."""

    ssrc: int
    roc: int
    seq: int


DtlsRole = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class DtlsParams:
    """DTLS-SRTP keying of one stream (RFC 5764): who starts the handshake, the node's
    certificate, and the fingerprint(s) the peer's certificate must match (from its SDP).

    The certificate travels with the stream's configuration (it is a few hundred bytes) so a
    worker process needs nothing else to run the handshake; the private key's repr is hidden.
    """

    role: DtlsRole  # ours: "client" sends the ClientHello (a=setup:active), "server" waits
    fingerprints: tuple[tuple[str, str], ...]  # (hash name lower case, hex upper with colons)
    certificate: bytes  # our certificate, PEM
    private_key: bytes  # its key, PEM

    def __repr__(self) -> str:
        return (f"DtlsParams(role={self.role!r}, fingerprints={self.fingerprints!r}, "
                "certificate=<pem>, private_key=<hidden>)")


@dataclass(frozen=True, slots=True)
class IceParams:
    """ICE-lite short-term credentials of one stream (RFC 8445 §7.2.2, RFC 8489 §9.1).

    A binding request must carry ``USERNAME`` = ``local_ufrag:remote_ufrag`` (the remote part
    is checked once the peer's SDP named it) and a MESSAGE-INTEGRITY keyed with ``local_pwd``.
    """

    local_ufrag: str
    local_pwd: str
    remote_ufrag: str = ""

    def __repr__(self) -> str:
        return (f"IceParams(local_ufrag={self.local_ufrag!r}, local_pwd=<hidden>, "
                f"remote_ufrag={self.remote_ufrag!r})")


@dataclass(frozen=True, slots=True)
class LocalEndpoint:
    """Where a stream listens (what the SDP we generate advertises)."""

    address: str
    rtp_port: int
    rtcp_port: int  # == rtp_port when rtcp-mux


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How one stream talks to the remote endpoint it faces."""

    peer: Address | None = None  # from the SDP c=/m= of the endpoint; None = learn from traffic
    rtcp_peer: Address | None = None  # from a=rtcp, else peer port + 1; == peer when rtcp_mux
    rtcp_mux: bool = False
    # Symmetric RTP: send to the source we latched onto (NAT). False (ng ``asymmetric``): send
    # to ``peer`` and never latch; what is accepted follows the same source rules below.
    symmetric: bool = True
    # Who may send to this stream (fail closed; the rules in full: LocalMediaEngine._admits).
    # By default a source may latch when its IP equals the IP of ``peer`` (any port: a NAT'd
    # port); with no usable ``peer`` (None, 0.0.0.0, ::) any source may latch, but only within
    # the learning window. Once latched, only that exact source (IP and port) is accepted.
    strict_source: bool = False  # accept only ``peer`` exactly (IP and port); never learn
    learn_any_source: bool = False  # NAT option: any source may latch within the window
    # Re-latch to a new source: with SRTP any source whose packet authenticates; with plain
    # RTP only a source the rules above would let latch (RTP Bleed otherwise).
    media_handover: bool = False
    learning_window: float = 5.0  # seconds after (re)configuration during which to learn
    srtp_recv: SrtpParams | None = None  # decrypt what the endpoint sends us
    srtp_send: SrtpParams | None = None  # encrypt what we send the endpoint
    # payload type -> encoding name ("PCMU", "PCMA", "telephone-event", ...)
    codecs: dict[int, str] = field(default_factory=dict)
    # DTMF policy for media RECEIVED on this stream (i.e. what this party keys), applied before
    # it leaves through the linked stream. None = plain relay.
    masking: MaskingPolicy | None = None
    recording: Address | None = None  # copy of what we SEND out of this stream (masked audio)
    label: str = ""
    # WebRTC legs: keys from a DTLS handshake instead of srtp_recv/srtp_send (None: SDES or
    # plain), and STUN checks answered as ICE-lite (None: no ICE; STUN is then dropped).
    dtls: DtlsParams | None = None
    ice: IceParams | None = None


def counter(help: str, *, metric: str = "") -> int:
    """A counter field: an int that only grows (reset only by a restart).

    ``help`` says what it counts (Prometheus HELP); ``metric`` names it there, without the
    plane prefix and the ``_total`` suffix, when the field name would not read well (default:
    the field name). A plain ``name: int = 0`` is a counter too, exported under its own name.
    """
    # dataclasses treats the Field as the field's declaration; mypy sees the int default.
    return field(default=0, metadata={"help": help, "metric": metric})


class _Summable:
    """Counters that add up field by field (ints, and nested counters that add up too): a new
    field needs no code here or in any sum."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # subclasses are dataclasses

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in fields(self)})


@dataclass(frozen=True, slots=True)
class StreamCounters(_Summable):
    """What the packet path counts on one stream.

    Every field is an int :func:`counter`. They are reported per stream (:class:`StreamStats`,
    ``query``), summed over every stream, live and released, of every worker
    (:class:`MediaTotals`, ``statistics``) and exported as ``toneguard_media_<metric>_total``.
    A new counter is one field here plus its increment in the engine (whose mutable per-stream
    ``_Counters`` must carry a field of the same name; a test checks they match).
    """

    packets_in: int = counter("RTP packets received and accepted", metric="packets_received")
    bytes_in: int = counter("RTP bytes received and accepted (after SRTP)",
                            metric="bytes_received")
    packets_out: int = counter("RTP packets sent", metric="packets_sent")
    bytes_out: int = counter("RTP bytes sent (before SRTP)", metric="bytes_sent")
    rtcp_in: int = counter("RTCP packets received", metric="rtcp_packets_received")
    rtcp_out: int = counter("RTCP packets sent", metric="rtcp_packets_sent")
    errors: int = counter(
        "packets dropped: malformed, SRTP auth/replay failure, unknown source, send failure")
    dtmf_masked: int = counter("DTMF digits masked on received media", metric="digits_masked")
    stranger_packets: int = counter(
        "packets dropped: from a source the stream does not accept (latching rules)")
    rtcp_not_rtcp: int = counter(
        "packets dropped: on an RTCP port, or demultiplexed as RTCP, but not valid RTCP")
    uninspectable_packets: int = counter(
        "packets dropped: a masked stream's payload type masking cannot inspect")
    webrtc_dropped: int = counter(
        "packets dropped on a DTLS/ICE leg: before the handshake verified the peer, after it "
        "failed or consent expired, or STUN/DTLS refused (credentials, stranger, garbage)")
    dtls_failures: int = counter("DTLS handshakes failed (fingerprint, timeout, alert, profile)")


@dataclass(frozen=True, slots=True)
class StreamStats(StreamCounters):
    """One stream's counters and state (what ``query`` reports)."""

    last_packet: float = 0.0  # wall clock seconds of the last packet received, 0 = none
    endpoint: Address | None = None  # the latched remote endpoint


@dataclass(frozen=True, slots=True)
class MaskingCounters(_Summable):
    """What a masking pipeline counts, over all its streams (exported as
    ``toneguard_masking_<metric>_total``). Every field is an int :func:`counter`."""

    masked_packets: int = counter("audio packets sent with some of their audio replaced")
    uninspectable_packets: int = counter(
        "packets of a masked stream dropped: payload type masking cannot inspect")
    late_packets: int = counter(
        "audio packets that arrived after detection had passed their place (masked whole)")
    dropped_events: int = counter("RFC 4733 events of a masked stream dropped")
    stalls: int = counter("ticks a masked stream waited for a late packet")
    catchup_rounds: int = counter(
        "extra detector rounds run to bring masked streams that fell behind back to their "
        "steady delay")


@dataclass(frozen=True, slots=True)
class MediaTotals(StreamCounters):
    """Engine-wide counters (the :class:`StreamCounters` of every stream, live and released)
    and gauges, summed over workers with ``+``."""

    masking: MaskingCounters = field(default_factory=MaskingCounters)
    # Time one media tick took (release held packets, decode, detect and mask every masked
    # stream, send): measured once per tick, never per packet.
    tick_seconds: Histogram = field(default_factory=lambda: Histogram.empty(TICK_BUCKETS))
    streams: int = 0  # gauge: streams allocated now
    workers: int = 0  # gauge: engines (worker processes, or 1 in process) that answered


@dataclass(frozen=True, slots=True)
class DigitEvent:
    """A DTMF key received on a stream: goes to the control plane's per-call digit stream.

    Holds a digit in clear: it must only ever reach the secure-pay session. Its repr hides it.
    """

    stream_id: str
    digit: str
    source: Literal["inband", "rfc4733", "both"]
    start_ms: float  # media time of the key's start on that stream
    duration_ms: float

    def __repr__(self) -> str:
        return (
            f"DigitEvent(stream_id={self.stream_id!r}, digit=<hidden>, source={self.source!r}, "
            f"start_ms={self.start_ms:.0f}, duration_ms={self.duration_ms:.0f})"
        )


@dataclass(frozen=True, slots=True)
class IdleEvent:
    """No stream of this stream's call has received media for the configured idle timeout."""

    stream_id: str
    idle_seconds: float


@dataclass(frozen=True, slots=True)
class SrtpIndexEvent:
    """A stream's SRTP index passed a quarter of the sequence space (every 16 384 packets,
    ~5.5 minutes at 50 packets/s) in either direction: what a restart must continue from.
    Reported from the engine's once-a-second scan, never from the packet path."""

    stream_id: str
    recv: SrtpIndex | None
    send: SrtpIndex | None


@dataclass(frozen=True, slots=True)
class DtlsKeyedEvent:
    """A WebRTC leg's DTLS handshake verified the peer: the SRTP keys it exported and the
    peer's address (ICE's latched candidate). Stored sealed so a restarted node resumes the
    leg without a handshake: a browser never re-handshakes for a relay's restart, it keeps
    sending SRTP with these keys. Holds keys: its repr hides them (SrtpParams')."""

    stream_id: str
    recv_key: SrtpParams
    send_key: SrtpParams
    endpoint: Address | None


@dataclass(frozen=True, slots=True)
class LatchedEvent:
    """A plain or SDES stream latched onto a source (None: it forgot it, e.g. a re-INVITE with
    a new address). Stored so that a restarted or adopting node relays only to and from that
    source again, as before the crash, instead of learning afresh from whoever sends first."""

    stream_id: str
    endpoint: Address | None


MediaEvent = DigitEvent | IdleEvent | SrtpIndexEvent | DtlsKeyedEvent | LatchedEvent


@dataclass(frozen=True, slots=True)
class RestoredStream:
    """One stream of a call restored after a restart: its own port again, its configuration,
    and where each SRTP direction's index stood (None: ROC 0)."""

    stream_id: str
    port: int
    rtcp_mux: bool
    config: StreamConfig
    recv_index: SrtpIndex | None = None
    send_index: SrtpIndex | None = None
    # A WebRTC leg keyed before the restart: (recv, send) keys from its DTLS handshake and
    # the peer's address; resumed as verified without a handshake (None: handshake as usual).
    dtls_keys: tuple[SrtpParams, SrtpParams] | None = None
    endpoint: Address | None = None


class MediaEngine(Protocol):
    """What the control plane needs from the media plane. All methods are coroutines so an
    implementation may run the streams in other processes."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def allocate(self, stream_id: str, call_id: str, *, rtcp_mux: bool,
                       port: int | None = None) -> LocalEndpoint:
        """Bind a port (pair) for a new stream; streams of one call share a worker. ``port``:
        exactly that port (a call restored after a restart), else PortsExhaustedError."""
        ...

    async def configure(self, stream_id: str, config: StreamConfig) -> None: ...

    async def restore(self, call_id: str, streams: list[RestoredStream],
                      links: list[tuple[str, str]],
                      outputs: list[tuple[str, str]]) -> None:
        """A whole call after a restart, in one step (one round trip to a worker): allocate
        each stream on its port, configure it (masking first), resume its SRTP indexes, then
        link and add the outputs. A failure releases every stream of it and raises."""
        ...

    async def link(self, a: str, b: str) -> None:
        """Relay what arrives on ``a`` out of ``b`` and vice versa."""
        ...

    async def add_output(self, source: str, sink: str) -> None:
        """Also send what arrives on ``source`` out of ``sink`` (one way; a supervisor's
        subscription): exactly what ``source``'s linked stream gets, masked the same way."""
        ...

    async def remove_output(self, source: str, sink: str) -> None:
        """Undo :meth:`add_output` (nothing if it was not there)."""
        ...

    async def release(self, stream_id: str) -> None: ...

    async def stats(self, stream_id: str) -> StreamStats: ...

    async def totals(self) -> MediaTotals:
        """Engine-wide counters and gauges (monotonic: released streams still count)."""
        ...

    def subscribe(self, callback: Callable[[MediaEvent], None]) -> None:
        """Receive digit and idle events (called in the control plane's event loop)."""
        ...
