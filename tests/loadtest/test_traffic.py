"""The benchmark's load generator: batched UDP, kernel timestamps, matching, SRTP verification.

A small relay in a thread stands in for ToneGuard/rtpengine: it forwards each stream's packets
to the other side, protecting the caller's with a key of its own (as a relay's SRTP leg does),
and can be told to corrupt them or drop some.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time

import numpy as np
import pytest

from loadtest.mmsg import BatchReceiver, BatchSender, sockaddrs
from loadtest.traffic import Stream, Traffic, TrafficResult
from proxy.control import sdes
from proxy.media.srtp import SrtpSender


def test_sockaddrs_keep_network_byte_order() -> None:
    record = sockaddrs([("127.0.0.1", 5004), ("10.1.2.3", 40000)])
    assert record.tobytes()[:8] == struct.pack("=H", socket.AF_INET) + \
        struct.pack("!H", 5004) + socket.inet_aton("127.0.0.1")
    assert record[1].tobytes()[2:8] == struct.pack("!H", 40000) + socket.inet_aton("10.1.2.3")


def _readable(sock: socket.socket, timeout: float = 5.0) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        assert selector.select(timeout), "nothing arrived"


def _kernel_timestamps_on(sock: socket.socket, receiver: BatchReceiver,
                          timeout: float = 5.0) -> None:
    """Until a probe comes back stamped with when it ARRIVED (before we read it), not with
    when it was read: the kernel switches receive timestamps on for the system a moment after
    the first socket asks. Bounded; no fixed wait."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            probe.sendto(b"probe", sock.getsockname())
            _readable(sock)
            read_at = time.time()
            count, _, stamps = receiver.receive()
            if count and stamps.max() < read_at:
                return
    finally:
        probe.close()
    raise AssertionError("kernel receive timestamps never switched on")


def test_batches_go_out_in_one_call_and_come_back_with_kernel_times() -> None:
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
    source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    source.bind(("127.0.0.1", 0))
    buffer = np.arange(300, dtype=np.uint8)
    sender = BatchSender(source, sockaddrs([s.getsockname() for s in sinks]), buffer,
                         capacity=4)
    receivers = [BatchReceiver(s, rcvbuf=1 << 20) for s in sinks]
    for s, r in zip(sinks, receivers, strict=True):
        _kernel_timestamps_on(s, r)
    before = time.time()
    assert sender.send(np.array([2, 0, 1, 2]), np.array([0, 10, 20, 30]),
                       np.array([5, 6, 7, 8])) == 4
    # Each datagram is stamped between the send and the moment we read it, however long the
    # scheduler keeps us from reading (a loaded machine widens the window, never breaks it).
    rows: list[list[list[int]]] = [[], [], []]
    for k, (s, r) in enumerate(zip(sinks, receivers, strict=True)):
        deadline = time.monotonic() + 5
        while len(rows[k]) < (2 if k == 2 else 1):
            assert time.monotonic() < deadline, f"sink {k} got {len(rows[k])}"
            _readable(s)
            read_at = time.time()
            count, lengths, stamps = r.receive()
            assert np.all((stamps >= before - 0.001) & (stamps <= read_at)), (before, stamps)
            rows[k] += [r.rows[i, :lengths[i]].tolist() for i in range(count)]
    assert [len(got) for got in rows] == [1, 1, 2]
    assert rows[0] == [list(range(10, 16))]  # 6 bytes from offset 10
    assert rows[1] == [list(range(20, 27))]
    assert rows[2] == [list(range(0, 5)), list(range(30, 38))]
    assert receivers[0].receive()[0] == 0  # drained: no waiting


def test_drain_hands_over_every_queued_datagram_batch_by_batch() -> None:
    # One function drains for both generators (loadtest.traffic, loadtest.media): more queued
    # than one batch holds arrives whole and in order, and an empty socket returns at once.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver = BatchReceiver(sink, batch=4, row=16, rcvbuf=1 << 20)
        for i in range(10):
            source.sendto(bytes([i]) * (i + 1), sink.getsockname())
        batches: list[list[bytes]] = []

        def take(rows: np.ndarray, lengths: np.ndarray, stamps: np.ndarray) -> None:
            assert len(rows) == len(lengths) == len(stamps)
            batches.append([rows[k, :lengths[k]].tobytes() for k in range(len(rows))])

        got = 0
        deadline = time.monotonic() + 5  # loopback delivers inside sendto; bounded anyway
        while got < 10:
            assert time.monotonic() < deadline, f"{got} of 10 datagrams drained"
            _readable(sink)
            got += receiver.drain(take)
        assert [d for batch in batches for d in batch] == [bytes([i]) * (i + 1)
                                                           for i in range(10)]
        assert max(len(batch) for batch in batches) == 4  # a full batch asks for the next
        assert receiver.drain(take) == 0  # nothing queued: back at once, take not called
        assert sum(len(batch) for batch in batches) == 10
    finally:
        sink.close()
        source.close()


class _Relay:
    """Side 0's streams go to the agent's socket SRTP-protected with ``key``; side 1's go
    to the caller's socket as they came. ``corrupt`` flips a payload byte after protecting;
    ``drop_every`` drops every n-th packet."""

    def __init__(self, key: sdes.CryptoAttribute, *, corrupt: bool = False,
                 drop_every: int = 0) -> None:
        self.key, self.corrupt, self.drop_every = key, corrupt, drop_every
        self.sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        for s in self.sockets:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.targets: dict[socket.socket, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ports(self) -> list[tuple[str, int]]:
        return [s.getsockname() for s in self.sockets]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        senders = {}
        for index, s in enumerate(self.sockets):
            selector.register(s, selectors.EVENT_READ)
            if index % 2 == 0:
                senders[s] = SrtpSender(self.key.params)
        count = 0
        while not self._stop.is_set():
            for key, _ in selector.select(0.01):
                s = key.fileobj
                data = s.recv(2048)  # type: ignore[union-attr]
                count += 1
                if self.drop_every and count % self.drop_every == 0:
                    continue
                if s in senders:
                    data = senders[s].protect(data)
                    if self.corrupt:
                        data = data[:20] + bytes([data[20] ^ 1]) + data[21:]
                s.sendto(data, self.targets[s])  # type: ignore[union-attr]

    def __enter__(self) -> _Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            s.close()


def _run(relay: _Relay, seconds: float = 0.4, drain: float = 5.0) -> TrafficResult:
    traffic = Traffic()
    try:
        ports = relay.ports()
        streams = []
        for call in range(2):
            caller_side, agent_side = relay.sockets[2 * call], relay.sockets[2 * call + 1]
            relay.targets[caller_side] = ("127.0.0.1", traffic.ports[1])
            relay.targets[agent_side] = ("127.0.0.1", traffic.ports[0])
            streams.append(Stream(0, ports[2 * call], recv_key=relay.key.params))
            streams.append(Stream(1, ports[2 * call + 1]))
        with relay:
            traffic.prepare(streams, seconds)
            return traffic.run(drain=drain, warmup=0.1)
    finally:
        traffic.close()


def test_every_packet_is_matched_timed_and_its_srtp_verified() -> None:
    result = _run(_Relay(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1)))
    assert result.sent == 4 * 20 and result.received == result.sent
    assert result.foreign == 0 and result.generator_drops == 0
    assert result.verified == 2 and result.unverified == []
    assert result.latencies.size == 4 * 15  # the first 0.1 s (5 ticks) is warm-up
    # Timed, not judged: a latency is positive and came back before the drain bound ran out.
    assert result.percentile_ms(50) > 0 and result.percentile_ms(100) < 5000


@pytest.mark.parametrize(("corrupt", "drop_every"), [(True, 0), (False, 7)])
def test_corruption_and_loss_are_reported(corrupt: bool, drop_every: int) -> None:
    relay = _Relay(sdes.generate("AES_CM_128_HMAC_SHA1_80", 1), corrupt=corrupt,
                   drop_every=drop_every)
    # With packets dropped on purpose not everything comes back: the drain runs its bound.
    result = _run(relay, drain=2.0 if drop_every else 5.0)
    if corrupt:
        assert result.unverified == [0, 2] and result.verified == 0
        assert result.received == result.sent  # corrupted, not lost
    else:
        assert result.received == result.sent - result.sent // 7
        assert result.verified == 2 and result.unverified == []
