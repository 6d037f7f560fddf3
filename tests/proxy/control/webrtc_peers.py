"""aiortc as a browser agent for tests: a microphone track from samples, and what it hears."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz


class SamplesTrack(MediaStreamTrack):
    """A fake microphone: plays ``samples`` (16-bit, 8 kHz) in real time, then silence."""

    kind = "audio"

    def __init__(self, samples: npt.NDArray[np.float64]) -> None:
        super().__init__()
        self._samples = np.clip(samples, -32768, 32767).astype(np.int16)
        self._pos = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pos / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._samples[self._pos:self._pos + FRAME]
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pos
        frame.time_base = fractions.Fraction(1, RATE)
        self._pos += FRAME
        return frame


class BrowserAgent:
    """An RTCPeerConnection that sends a track and records every audio frame it receives."""

    def __init__(self, microphone: npt.NDArray[np.float64]) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTrack(SamplesTrack(microphone))
        self.frames: list[npt.NDArray[np.int16]] = []
        self.arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._pump(track)))

    async def _pump(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):  # MediaStreamError when the call ends
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray().reshape(-1)
                if frame.sample_rate != RATE:  # aiortc decodes G.711 at 8 kHz; be sure
                    continue
                self.frames.append(samples.astype(np.int16))
                self.arrived.set()

    def heard(self) -> npt.NDArray[np.float64]:
        if not self.frames:
            return np.zeros(0)
        return np.concatenate(self.frames).astype(np.float64)

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def wait_samples(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while sum(f.size for f in self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
