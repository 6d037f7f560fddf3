"""A latch when the process has no file descriptor left (EMFILE): the connected twin socket
cannot be made, and the stream's own socket must carry the call on, still masked.

The test fills this process's descriptor table (soft RLIMIT_NOFILE lowered to just above the
highest descriptor in use, every free slot below it taken) only while the caller's first packets
arrive, and restores it before the decoders (subprocesses) run.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from structlog.testing import capture_logs

from dsp import tones
from proxy.control.calls import CallPolicy, CallRegistry
from proxy.demo.leak import leaked_ms
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.engine import LocalMediaEngine
from proxy.media.types import DigitEvent

CARD = "4111111111111111"


@contextmanager
def no_free_descriptors() -> Iterator[None]:
    """While inside: any new descriptor (socket, file, pipe) fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        while True:  # the holes below the highest descriptor: at most ``highest`` of them
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(OSError, match="Too many open files"):
            os.close(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _card_audio() -> np.ndarray:
    rng = np.random.default_rng(7)
    keyed = tones.dtmf_sequence(CARD, tone_ms=60, gap_ms=60, lead_ms=300, tail_ms=400,
                                low_dbm0=-12.0)
    return keyed + tones.white_noise(keyed.size, -50.0, rng)


async def test_a_latch_without_descriptors_relays_through_the_streams_own_socket_masked(
        masking_engine: LocalMediaEngine) -> None:
    engine = masking_engine
    digits: list[DigitEvent] = []
    registry = CallRegistry(engine, address="127.0.0.1", policy=CallPolicy(caller="offerer"),
                            on_digit=lambda c, t, e: digits.append(e))
    caller, agent = await RtpPeer(seed=41).start(), await RtpPeer(seed=42).start()
    try:
        await registry.handle({"command": "offer", "call-id": "fd", "from-tag": "caller",
                               "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": "fd",
                                        "from-tag": "caller", "to-tag": "agent",
                                        "sdp": audio_sdp("127.0.0.1", agent.port)})
        to_toneguard = media_endpoint(answer["sdp"])
        audio = _card_audio()
        lead = audio[:160 * 10]  # the first 200 ms (silence and noise): the latch happens here
        with capture_logs() as logs:
            with no_free_descriptors():
                sent_first = await caller.play(lead, to_toneguard)
                await agent.wait_for(sent_first, timeout=5)  # every one, the latching first too
            sent = sent_first + await caller.play(audio[lead.size:], to_toneguard)
            await agent.wait_for(sent, timeout=5)
        assert engine._streams["fd/caller/0"].direct is None  # the twin was never made
        warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert [(e["event"], e["stream"]) for e in warnings] == [
            ("no connected socket for a latched endpoint", "fd/caller/0")]
        assert "Too many open files" in warnings[0]["error"]
        stats = await engine.stats("fd/caller/0")
        assert (stats.packets_in, stats.errors) == (sent, 0)
        assert stats.endpoint == ("127.0.0.1", caller.port)
        # Masked all the same: the audio arrived, the card did not, the digits were captured.
        async with asyncio.timeout(5):
            while len(digits) < len(CARD):
                await asyncio.sleep(0.02)
        assert "".join(d.digit for d in digits) == CARD
        heard = agent.received.audio()
        assert heard.size > 0.9 * audio.size
        assert spandsp_detect(heard) == ""
        assert multimon_detect(heard) == ""
        assert leaked_ms(heard) == 0.0
    finally:
        caller.close()
        agent.close()
