"""Batched UDP for the load generator: Linux ``sendmmsg``/``recvmmsg`` through ctypes, with
kernel receive timestamps (``SO_TIMESTAMPNS``).

Why: a Python load generator that calls ``sendto``/``recvfrom`` per packet spends more CPU
than the relay it measures, and its own scheduling lag ends up in the latency figures. Here a
whole batch of datagrams costs one system call, the message headers live in NumPy arrays
(filled by vectorised code, not per packet), and every received datagram carries the time the
kernel queued it on our socket, so a late generator does not look like a slow relay.

Linux x86_64/aarch64 only (LP64 struct layouts below).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # asm-generic value, as on x86_64
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MSG_DONTWAIT = socket.MSG_DONTWAIT

# struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } on LP64.
MMSGHDR = np.dtype([
    ("name", "u8"), ("namelen", "u4"), ("_pad0", "u4"),
    ("iov", "u8"), ("iovlen", "u8"),
    ("control", "u8"), ("controllen", "u8"),
    ("flags", "i4"), ("_pad1", "u4"),
    ("len", "u4"), ("_pad2", "u4"),
])
IOVEC = np.dtype([("base", "u8"), ("len", "u8")])
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", ">u4"), ("_zero", "u8")])
# One control message: struct cmsghdr (16 bytes) + struct timespec (16 bytes).
CMSG_TIMESPEC = np.dtype([("cmsg_len", "u8"), ("level", "i4"), ("type", "i4"),
                          ("sec", "i8"), ("nsec", "i8")])
assert MMSGHDR.itemsize == 64 and IOVEC.itemsize == 16 and SOCKADDR_IN.itemsize == 16

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _pointers(array: np.ndarray, offsets: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Addresses ``array``'s data + ``offsets`` (bytes), as unsigned 64-bit (uint64 + int64
    would make NumPy fall back to float64 and lose the low bits)."""
    return np.uint64(_address(array)) + np.asarray(offsets).astype(np.uint64)


def sockaddrs(destinations: Sequence[tuple[str, int]]) -> np.ndarray:
    """Packed ``struct sockaddr_in`` records for IPv4 destinations. (Built in place: NumPy's
    concatenate would convert the big-endian fields to native order.)"""
    out = np.zeros(len(destinations), SOCKADDR_IN)
    out["family"] = socket.AF_INET
    out["port"] = [port for _, port in destinations]
    out["addr"] = [int.from_bytes(socket.inet_aton(host), "big") for host, _ in destinations]
    return out


class BatchSender:
    """Sends many datagrams, each from its own place in one buffer to its own destination,
    with one ``sendmmsg`` call per batch.

    ``destinations`` are packed ``sockaddr_in`` records (one per message slot); a batch names
    slots and the buffer offsets and lengths of their payloads.
    """

    def __init__(self, sock: socket.socket, destinations: np.ndarray, buffer: np.ndarray,
                 capacity: int | None = None) -> None:
        self._fd = sock.fileno()
        self._sock = sock  # keep it open as long as we are
        if destinations.dtype != SOCKADDR_IN:
            raise TypeError("destinations must be sockaddrs() records")
        self._dest = destinations
        self._buffer = buffer  # payloads; must stay alive and unmoved
        capacity = capacity or len(destinations)  # most messages in one batch
        self._iov = np.zeros(capacity, IOVEC)
        self._msgs = np.zeros(capacity, MMSGHDR)
        self._msgs["namelen"] = SOCKADDR_IN.itemsize
        self._msgs["iov"] = _pointers(self._iov, np.arange(capacity) * IOVEC.itemsize)
        self._msgs["iovlen"] = 1
        # The arrays never move: their addresses are taken once (asking NumPy per batch costs
        # more than the system call).
        self._buffer_at = np.uint64(_address(buffer))
        self._dest_at = np.uint64(_address(destinations))
        self._msgs_at = _address(self._msgs)

    def send(self, slots: npt.NDArray[np.intp], offsets: npt.NDArray[np.intp],
             lengths: npt.NDArray[np.intp]) -> int:
        """Send payload ``buffer[offsets[i]:offsets[i] + lengths[i]]`` to ``slots[i]``'s
        destination, for every i; returns how many were sent (all, unless the socket fails)."""
        n = len(slots)
        if n == 0:
            return 0
        if n > len(self._msgs):
            raise ValueError(f"{n} messages in one batch; this sender takes {len(self._msgs)}")
        iov = self._iov[:n]
        iov["base"] = self._buffer_at + offsets.astype(np.uint64)
        iov["len"] = lengths
        self._msgs["name"][:n] = self._dest_at + slots.astype(np.uint64) * SOCKADDR_IN.itemsize
        sent = 0
        base = self._msgs_at
        while sent < n:
            rc = _sendmmsg(self._fd, base + sent * MMSGHDR.itemsize, n - sent, 0)
            if rc < 0:
                err = ctypes.get_errno()
                if err in (errno.EINTR, errno.EAGAIN, errno.ENOBUFS):
                    continue
                raise OSError(err, os.strerror(err))
            sent += rc
        return sent


class BatchReceiver:
    """Drains a socket with ``recvmmsg``: payloads into fixed-size rows of one array, with the
    kernel's receive time of each (CLOCK_REALTIME, seconds).

    Create it a little before traffic: when no socket had asked for timestamps, the kernel
    enables them a moment later, and a datagram arriving before that is stamped when read."""

    def __init__(self, sock: socket.socket, batch: int = 1024, row: int = 256,
                 rcvbuf: int = 32 << 20) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:  # root may exceed net.core.rmem_max: 20 ms of 2 000 calls must fit
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.rows = np.zeros((batch, row), np.uint8)
        self._iov = np.zeros(batch, IOVEC)
        self._iov["base"] = _pointers(self.rows, np.arange(batch) * row)
        self._iov["len"] = row
        self._control = np.zeros(batch, CMSG_TIMESPEC)
        self._msgs = np.zeros(batch, MMSGHDR)
        self._msgs["iov"] = _pointers(self._iov, np.arange(batch) * IOVEC.itemsize)
        self._msgs["iovlen"] = 1
        self._msgs["control"] = _pointers(self._control,
                                          np.arange(batch) * CMSG_TIMESPEC.itemsize)
        self._msgs_at = _address(self._msgs)

    def receive(self) -> tuple[int, npt.NDArray[np.uint32], npt.NDArray[np.float64]]:
        """What is queued now, without waiting: (count, lengths, receive times). Rows
        ``self.rows[:count]`` hold the payloads until the next call."""
        self._msgs["controllen"] = CMSG_TIMESPEC.itemsize
        rc = _recvmmsg(self._fd, self._msgs_at, len(self._msgs), MSG_DONTWAIT, None)
        if rc < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0, np.zeros(0, np.uint32), np.zeros(0)
            raise OSError(err, os.strerror(err))
        control = self._control[:rc]
        if np.any(control["type"] != SO_TIMESTAMPNS):
            raise RuntimeError("a datagram arrived without its kernel timestamp")
        return rc, self._msgs["len"][:rc].copy(), control["sec"] + control["nsec"] * 1e-9

    def drain(self, take: Callable[[npt.NDArray[np.uint8], npt.NDArray[np.uint32],
                                    npt.NDArray[np.float64]], None]) -> int:
        """Hand everything queued now to ``take(rows, lengths, receive_times)``, batch by
        batch, and return how many datagrams that was. A batch that comes back short ends it:
        the socket is empty, and a socket that keeps receiving must not hold up the caller's
        next send slot for longer than one more batch. ``rows`` are reused by the next
        batch: ``take`` copies what it keeps."""
        total = 0
        while True:
            count, lengths, stamps = self.receive()
            if count:
                take(self.rows[:count], lengths, stamps)
                total += count
            if count < len(self.rows):
                return total


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped on our UDP socket bound to ``port`` (its receive buffer was
    full), from /proc/net/udp: so a loss can be told apart from the relay's."""
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    return 0
