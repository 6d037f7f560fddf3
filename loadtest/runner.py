"""One load-test run: the control plane of every simulated call, over the network only.

For each call, at its start time: ng ``offer``/``answer`` (as Kamailio would; with rtpengine
also ``block DTMF`` at its best masking settings), SDES keys per leg, then the call is handed to
the media thread (:mod:`loadtest.media`). A share of the calls takes a payment through the API
as the agent would (assign, start, the caller keys, the session submits, poll for the token).
When a call's media has ended and its payment is settled, ``delete``. After the run, the agent
legs of a sample of calls are decoded by spandsp and multimon-ng and measured for tone energy
around each key (:mod:`proxy.demo.leak`): any digit found is a leak.

A stop request (Ctrl-C) starts no more calls, ends those in play, and still returns a result,
marked partial.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
import numpy.typing as npt

from loadtest.media import AGENT, CALLER, PTIME, CallMedia, MediaEngine, StreamStats
from loadtest.scenario import Scenario
from loadtest.sources import EVENT_PT, LAWS, PAYLOAD_TYPES, SAMPLES, Bank, Keying, build_bank
from loadtest.target import Sampler, Target, niceness
from proxy.control import sdes
from proxy.control.ng_client import NgClient, NgClientError
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.types import SrtpParams

SUITE = "AES_CM_128_HMAC_SHA1_80"
REPLACEMENT_GAP = 0.2  # s between a call's end and the call that replaces it
TERMINAL = {"complete", "failed", "cancelled"}


@dataclass
class CallRecord:
    index: int
    brand: str
    payment: bool
    record: bool
    planned_start: float  # s into the run
    started: float | None = None
    setup_ms: float | None = None
    error: str = ""
    media_ended: bool = False
    streams: list[StreamStats] = field(default_factory=list)
    payment_status: str = ""  # "" = no payment taken
    token: bool = False
    digits_keyed: int = 0
    digits_captured: int = 0
    payment_error: str = ""
    agent_key: SrtpParams | None = None  # what the relay protects the agent leg with
    leak_spandsp: str = ""  # digits found on the agent leg — never the card, only a count
    leak_multimon: str = ""
    leak_ms: float = 0.0
    leak_events: int = 0
    heard_seconds: float = 0.0
    sent_seconds: float = 0.0


@dataclass
class Snapshot:
    t: float
    calls_up: int
    calls_set_up: int
    calls_done: int
    calls_failed: int
    sent_pps: float
    received_pps: float
    loss: float
    cpu: float


@dataclass
class RunResult:
    scenario: Scenario
    target: Target
    calls: list[CallRecord]
    duration: float
    partial: bool
    lateness: npt.NDArray[np.float64]
    generator_drops: int
    foreign: int
    # (t, cpu %, rss, run-queue wait %, host busy %, host steal %); older: the first four
    usage: Sequence[tuple[float, ...]]
    timeline: list[Snapshot]
    latencies: list[npt.NDArray[np.float64]]  # per direction (seconds)
    # Per sendmmsg: (s into the run, s from the latency stamp to the call's return).
    send_times: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    # The host: load average (1 min) at the start and the end, the target's nice values.
    host: dict[str, object] = field(default_factory=dict)


def _spread(count: int, share: float) -> list[bool]:
    """``share`` of ``count`` items chosen evenly (1 in 1/share), deterministic."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(count)]


def schedule(scenario: Scenario) -> list[float]:
    """Start time of each call: the first `concurrency` spread over the ramp, then each later
    one as soon as the call it replaces has ended."""
    c = scenario.calls
    starts: list[float] = []
    for i in range(c.total):
        if i < c.concurrency:
            starts.append(i * c.ramp_seconds / c.concurrency)
        else:
            starts.append(starts[i - c.concurrency] + c.hold_seconds + REPLACEMENT_GAP)
    return starts


class Runner:
    def __init__(self, scenario: Scenario, target: Target, *, pids: list[int] | None = None,
                 on_progress: Callable[[Snapshot], None] | None = None,
                 bank: Bank | None = None) -> None:
        self.scenario = scenario
        self.target = target
        self.on_progress = on_progress or (lambda s: None)
        self.bank = bank or build_bank(scenario)
        c = scenario.calls
        payments = _spread(c.total, scenario.payments.share if target.api else 0.0)
        records = _spread(c.total, scenario.checks.leak_sample)
        brands = scenario.cards.brands
        self.calls = [CallRecord(i, brands[i % len(brands)], payments[i], records[i], start)
                      for i, start in enumerate(schedule(scenario))]
        self.hold_ticks = int(c.hold_seconds / PTIME)
        self.key_tick = int(scenario.cards.start_seconds / PTIME)
        self.engine: MediaEngine | None = None
        self._done: dict[int, asyncio.Future[list[StreamStats]]] = {}
        self.timeline: list[Snapshot] = []

    # --- the run ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> RunResult:
        loop = asyncio.get_running_loop()
        s = self.scenario
        engine = MediaEngine(
            self.bank, s.impairments, max_calls=s.calls.concurrency + 4,
            max_ticks=self.hold_ticks, total_calls=s.calls.total, seed=s.calls.seed,
            on_ended=lambda results: self._ended_threadsafe(loop, results))
        self.engine = engine
        sampler = Sampler(self.target.pids).start()
        host: dict[str, object] = {"load_start": round(os.getloadavg()[0], 2),
                                   "cpus": os.cpu_count(),
                                   "target_nice": niceness(self.target.pids)}
        # One ng socket per node, as Kamailio keeps one per rtpengine set member; one HTTP
        # client per API (the same URL for every node shares one).
        endpoints = [await NgClient.connect(node.ng) for node in self.target.nodes]
        clients = {api: httpx.AsyncClient(base_url=api or "http://invalid", timeout=10)
                   for api in dict.fromkeys(node.api for node in self.target.nodes)}
        started = time.monotonic()
        self._t0 = started
        engine.start()
        progress = asyncio.create_task(self._progress(sampler))
        tasks: list[asyncio.Task[object]] = []
        for rec in self.calls:
            n = rec.index % len(endpoints)
            ng = endpoints[n]
            http = clients[self.target.nodes[n].api]
            tasks.append(asyncio.create_task(self._call(rec, ng, http, stop)))
        stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[object]] = set(tasks)
            while pending and not stop.is_set():
                _, pending = await asyncio.wait(pending | {stopper},
                                                return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopper)
            if stop.is_set():
                engine.stop(finish=False)
                # Calls in play end now; their tasks delete them. Those not started never will.
                await asyncio.wait(tasks, timeout=30)
            engine.stop(finish=True)
            await asyncio.to_thread(engine.join, 30)
        finally:
            for task in (*tasks, stopper, progress):
                task.cancel()
            await asyncio.gather(*tasks, stopper, progress, return_exceptions=True)
            for http in clients.values():
                await http.aclose()
            for ng in endpoints:
                ng.close()
            sampler.stop()
            engine.stop(finish=False)
            engine.close()
        duration = time.monotonic() - started
        host["load_end"] = round(os.getloadavg()[0], 2)
        await asyncio.to_thread(self._check_leaks)
        latencies = [np.concatenate([st.latencies for rec in self.calls for st in rec.streams
                                     if st.side == side] or [np.zeros(0)])
                     for side in (CALLER, AGENT)]
        return RunResult(s, self.target, self.calls, duration, stop.is_set(),
                         np.array(engine.lateness), engine.generator_drops,
                         engine.counters.foreign, sampler.samples, self.timeline, latencies,
                         np.array(engine.send_times or np.zeros((0, 2)), dtype=np.float64),
                         host)

    def _ended_threadsafe(self, loop: asyncio.AbstractEventLoop,
                          results: list[StreamStats]) -> None:
        """From the media thread: hand a call's results to the event loop."""
        loop.call_soon_threadsafe(self._ended, results)

    def _ended(self, results: list[StreamStats]) -> None:
        future = self._done.get(results[0].call)
        if future is not None and not future.done():
            future.set_result(results)

    async def _progress(self, sampler: Sampler) -> None:
        assert self.engine is not None
        counters = self.engine.counters
        last_t, last_sent, last_received = time.monotonic(), 0, 0
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            sent, received = counters.sent, counters.received
            dt = now - last_t
            loss_base = sum(st.sent for rec in self.calls for st in rec.streams)
            lost = sum(st.lost for rec in self.calls for st in rec.streams)
            snap = Snapshot(
                now - self._t0, counters.active,
                sum(r.setup_ms is not None for r in self.calls),
                sum(r.media_ended for r in self.calls), sum(bool(r.error) for r in self.calls),
                (sent - last_sent) / dt, (received - last_received) / dt,
                lost / loss_base if loss_base else 0.0, sampler.latest_cpu)
            self.timeline.append(snap)
            self.on_progress(snap)
            last_t, last_sent, last_received = now, sent, received

    # --- one call ---------------------------------------------------------------------------

    async def _call(self, rec: CallRecord, ng: NgClient, http: httpx.AsyncClient,
                    stop: asyncio.Event) -> None:
        delay = self._t0 + rec.planned_start - time.monotonic()
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
                return  # stopped before this call began
            except TimeoutError:
                pass
        if stop.is_set():
            return
        rec.started = time.monotonic() - self._t0
        call_id = f"loadtest-{self.scenario.name}-{rec.index}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[StreamStats]] = loop.create_future()
        self._done[rec.index] = future
        try:
            t = time.monotonic()
            media = await self._set_up(rec, call_id, ng)
            rec.setup_ms = 1000 * (time.monotonic() - t)
        except (NgClientError, TimeoutError, RuntimeError, KeyError, ValueError,
                StopIteration) as exc:
            rec.error = f"set-up: {exc}"
            return
        assert self.engine is not None
        try:
            sid = ""
            if rec.payment:
                sid = await self._start_payment(rec, call_id, http)
            if stop.is_set():  # the media thread may be gone already
                return
            self.engine.add(media)
            rec.streams = await future
            rec.media_ended = True
            if sid:
                await self._settle_payment(rec, call_id, sid, http, stop)
        finally:
            try:
                await ng.request({"command": "delete", "call-id": call_id})
            except (NgClientError, TimeoutError, RuntimeError) as exc:
                rec.error = rec.error or f"delete: {exc}"

    async def _set_up(self, rec: CallRecord, call_id: str, ng: NgClient) -> CallMedia:
        s = self.scenario
        assert self.engine is not None
        pt = PAYLOAD_TYPES[s.media.codec]
        rtpengine = self.target.kind == "rtpengine"
        # rtpengine does not mask in-band tones at all when telephone-event is negotiated
        # (DESIGN.md), so its best settings leave it out when the caller keys in-band only.
        pts = (pt,) if rtpengine and s.cards.profile == "inband" else (pt, EVENT_PT)
        caller_srtp = s.media.caller_transport == "SDES-SRTP"
        agent_srtp = s.media.agent_transport == "SDES-SRTP"
        caller_key = sdes.generate(SUITE, 1) if caller_srtp else None
        offer = await ng.request({
            "command": "offer", "call-id": call_id, "from-tag": "caller", "label": "customer",
            "transport-protocol": "RTP/SAVP" if agent_srtp else "RTP/AVP",
            "sdp": audio_sdp("127.0.0.1", self.engine.ports[CALLER], payload_types=pts,
                             proto="RTP/SAVP" if caller_srtp else "RTP/AVP",
                             crypto=[caller_key] if caller_key else None)})
        agent_key = relay_to_agent = None
        if agent_srtp:  # answer with the suite the relay offered, under its tag
            relay_to_agent = next(c for c in _cryptos(offer["sdp"]) if c.suite == SUITE)
            agent_key = sdes.generate(SUITE, relay_to_agent.tag)
        answer = await ng.request({
            "command": "answer", "call-id": call_id, "from-tag": "caller", "to-tag": "agent",
            "transport-protocol": "RTP/SAVP" if caller_srtp else "RTP/AVP",
            "sdp": audio_sdp("127.0.0.1", self.engine.ports[AGENT], payload_types=pts,
                             proto="RTP/SAVP" if agent_srtp else "RTP/AVP",
                             crypto=[agent_key] if agent_key else None)})
        if rtpengine:
            await ng.request({"command": "block DTMF", "call-id": call_id,
                              "from-tag": "caller", "DTMF-security": "tone",
                              "delay-buffer": 40})
        rec.agent_key = relay_to_agent.params if relay_to_agent else None
        keying = self.bank.keyings[rec.brand]
        rec.digits_keyed = keying.digits
        start = rec.index * 7 * 8000  # each caller at its own place in the speech
        return CallMedia(
            index=rec.index, ticks=self.hold_ticks, codec=s.media.codec,
            to_relay=[media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])],
            send_keys=[caller_key.params if caller_key else None,
                       agent_key.params if agent_key else None],
            caller_offsets=self._caller_offsets(keying, start),
            agent_offsets=self.bank.offsets(self.bank.agent, rec.index * 3 * 8000,
                                             self.hold_ticks),
            keying=keying, key_tick=self.key_tick,
            events_replace_audio=s.cards.profile == "rfc4733", record=rec.record)

    def _caller_offsets(self, keying: Keying, start: int) -> npt.NDArray[np.int64]:
        offsets = self.bank.offsets(self.bank.speech, start, self.hold_ticks)
        k = self.key_tick
        offsets[k:k + keying.ticks] = keying.offset + np.arange(keying.ticks) * SAMPLES
        return offsets

    # --- payments ---------------------------------------------------------------------------

    async def _start_payment(self, rec: CallRecord, call_id: str, http: httpx.AsyncClient
                             ) -> str:
        t = self.target
        try:
            r = await http.post(f"/v1/calls/{call_id}/assign", json={"agent_id": t.agent_id},
                                headers={"Authorization": f"Bearer {t.admin_key}"})
            r.raise_for_status()
            r = await http.post(f"/v1/calls/{call_id}/payments", json={},
                                headers={"Authorization": f"Bearer {t.agent_key}",
                                         "Idempotency-Key": call_id})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            rec.payment_status, rec.payment_error = "not started", _http_error(exc)
            return ""
        rec.payment_status = r.json()["status"]
        return str(r.json()["sid"])

    async def _settle_payment(self, rec: CallRecord, call_id: str, sid: str,
                              http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Poll until the session is terminal (it submits itself once every field is valid)."""
        headers = {"Authorization": f"Bearer {self.target.agent_key}"}
        deadline = time.monotonic() + self.scenario.payments.timeout_seconds
        while True:
            try:
                r = await http.get(f"/v1/calls/{call_id}/payments/{sid}", headers=headers)
                r.raise_for_status()
            except httpx.HTTPError as exc:
                rec.payment_error = _http_error(exc)
                return
            view = r.json()
            rec.payment_status = view["status"]
            rec.token = bool(view.get("token"))
            rec.digits_captured = sum(sum(ch.isdigit() or ch == "•" for ch in value)
                                      for value in view.get("fields", {}).values())
            if rec.payment_status in TERMINAL or stop.is_set() or time.monotonic() > deadline:
                rec.payment_error = view.get("error", "")
                return
            await asyncio.sleep(0.25)

    # --- leak check -------------------------------------------------------------------------

    def _check_leaks(self) -> None:
        from proxy.demo.leak import leaked_ms_per_window
        from proxy.demo.multimon import multimon_detect
        from proxy.demo.spandsp import spandsp_detect

        for rec in self.calls:
            if not rec.record or not rec.streams:
                continue
            caller = rec.streams[CALLER]
            audio, heard, events = agent_leg_audio(caller.recording, rec.agent_key,
                                            PAYLOAD_TYPES[self.scenario.media.codec],
                                            self.scenario.media.codec, self.hold_ticks)
            rec.leak_events = events
            rec.heard_seconds = heard * PTIME
            rec.sent_seconds = caller.sent * PTIME
            rec.leak_spandsp = spandsp_detect(audio)
            rec.leak_multimon = multimon_detect(audio)
            keying = self.bank.keyings[rec.brand]
            base = self.key_tick * SAMPLES
            rec.leak_ms = sum(leaked_ms_per_window(
                audio, [(base + s - 160, base + e + 160) for s, e in keying.windows]))
            caller.recording = []  # the audio is not kept past the check


def agent_leg_audio(recording: list[bytes], key: SrtpParams | None, pt: int, codec: str,
                    ticks: int) -> tuple[npt.NDArray[np.int16], int, int]:
    """What the agent heard of the caller, on the caller's timeline (RTP timestamps; lost
    packets are silence), how many audio packets it decoded, and how many RFC 4733 packets
    reached it."""
    from dsp import g711
    from proxy.media.rtp import RtpPacket, RtpParseError
    from proxy.media.srtp import SrtpError, SrtpReceiver

    receiver = SrtpReceiver(key) if key else None
    audio = np.zeros(ticks * SAMPLES, np.int16)
    events = heard = 0
    for wire in recording:
        try:
            packet = RtpPacket.parse(receiver.unprotect(wire) if receiver else wire)
        except (SrtpError, RtpParseError):
            continue
        if packet.payload_type != pt:
            events += packet.payload_type == EVENT_PT
            continue
        at = packet.timestamp
        if 0 <= at < audio.size:
            samples = g711.decode(np.frombuffer(packet.payload, np.uint8), LAWS[codec])
            audio[at:at + samples.size] = samples[: audio.size - at]
            heard += 1
    return audio, heard, events


def _cryptos(sdp: str) -> list[sdes.CryptoAttribute]:
    return sdes.offered([line.split(":", 1)[1] for line in sdp.splitlines()
                         if line.startswith("a=crypto:")])


def _http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:120]}"
    return type(exc).__name__
