"""baresip 1.0 as a real phone for tests: headless, on loopback, driven over ctrl_tcp.

Its microphone is a WAV file (``aufile``), its speaker a null device (``aubridge``). What a
phone *received* is taken from the wire (:class:`LoopbackCapture`) and decrypted with the key
its far end advertised: baresip 1.0's ``sndfile`` dump stops once a re-INVITE restarts the
player, so it cannot tell what was heard after a hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.proxy.control.sip_peers import stop


@dataclass
class Phone:
    name: str
    folder: Path
    sip_port: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    events: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.writer.write(b"%d:%s," % (len(body), body))
        await self.writer.drain()

    async def wait_event(self, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first event of ``kind`` (e.g. CALL_ESTABLISHED) not waited for before."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.get("type") == kind and not event.get("_seen"):
                        event["_seen"] = True
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    async def _read(self) -> None:
        """Netstrings from ctrl_tcp: ``LEN:JSON,``."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int((await self.reader.readuntil(b":"))[:-1])
                message = json.loads((await self.reader.readexactly(length + 1))[:-1])
                if message.get("event"):
                    self.events.append(message)
                    self._arrived.set()


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes())


@contextlib.asynccontextmanager
async def phone(folder: Path, name: str, *, ip: str, sip_port: int, ctrl_port: int,
                rtp_ports: range, microphone: np.ndarray,
                srtp: bool = False) -> AsyncIterator[Phone]:
    """A baresip phone answering automatically, its microphone playing ``microphone``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "microphone.wav", microphone)
    (folder / "config").write_text("\n".join([
        "poll_method epoll",
        f"sip_listen {ip}:{sip_port}",
        f"net_interface {ip}",
        f"audio_source aufile,{folder / 'microphone.wav'}",
        "audio_player aubridge,nil",
        "audio_alert aubridge,nil",
        "module_path /usr/lib/baresip/modules",
        *(f"module {m}.so" for m in ("g711", "aufile", "aubridge", "srtp")),
        *(f"module_app {m}.so" for m in ("account", "menu", "ctrl_tcp")),
        f"ctrl_tcp_listen 127.0.0.1:{ctrl_port}",
        f"rtp_ports {rtp_ports.start}-{rtp_ports.stop - 1}",
        "jitter_buffer_delay 1-10",
        "",
    ]))
    encryption = ";mediaenc=srtp-mand" if srtp else ""
    (folder / "accounts").write_text(f"<sip:{name}@{ip}:{sip_port}>;regint=0;"
                                     f"audio_codecs=PCMU,PCMA;answermode=auto{encryption}\n")
    log = (folder / "baresip.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        "baresip", "-f", str(folder), "-v", stdout=log, stderr=log,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", ctrl_port)
                    break
                except OSError as exc:
                    if process.returncode is not None:
                        raise RuntimeError((folder / "baresip.log").read_text()[-2000:]) from exc
                    await asyncio.sleep(0.05)
        p = Phone(name, folder, sip_port, process, reader, writer)
        task = asyncio.create_task(p._read())
        try:
            yield p
        finally:
            task.cancel()
            writer.close()
    finally:
        await stop(process)
        log.close()


SO_RCVBUFFORCE, SOL_PACKET, PACKET_STATISTICS = 33, 263, 6  # <asm/socket.h>, <linux/if_packet.h>


class LoopbackCapture:
    """Every UDP datagram delivered on loopback to a port in ``ports`` (a raw AF_PACKET
    socket: root), i.e. exactly what reached a phone, whatever the phone then does with it."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self.datagrams: list[bytes] = []
        self.sources: list[int] = []  # the UDP source port of each datagram, in order
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        # It sees ALL loopback traffic (twice): another program's load test on the same host
        # overflowed the default buffer while the test's loop was busy, and the capture, not
        # the phone, missed audio. A big buffer (FORCE: root may exceed rmem_max) prevents
        # that; what still overflows is counted (``drops``) and reported as the capture's.
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        self._sock.bind(("lo", 0))
        self.drops = 0
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                frame, address = self._sock.recvfrom(65535)
            except BlockingIOError:
                return
            if address[2] == socket.PACKET_OUTGOING:  # loopback shows each packet twice
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 0x0F) * 4:]
            if struct.unpack_from("!H", udp, 2)[0] in self.ports:
                self.datagrams.append(bytes(udp[8:]))
                self.sources.append(struct.unpack_from("!H", udp, 0)[0])

    def sent_from(self, ports: set[int] | range) -> list[bytes]:
        """The datagrams whose source port is in ``ports``."""
        return [d for d, src in zip(self.datagrams, self.sources, strict=True) if src in ports]

    def close(self) -> None:
        _, self.drops = struct.unpack(
            "II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
