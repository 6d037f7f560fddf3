"""One call's ng commands under different spellings of its keys, all sent at once with other
calls' commands, on two media worker processes (so a command really waits on a worker while
others run): ``call-id`` / ``Call-ID`` / ``call id`` / ``call_id`` ... (and the same for
``from-tag`` / ``to-tag``), bencode and JSON mixed. Each call's commands must land in one lane
(a numeric call id also when sent as an integer) and run in the order they were sent (offer,
answer, delete, offer, answer, re-offer, answer), never two at once, while different calls'
commands do run concurrently; then every caller keys
a card and each agent leg (decoded with spandsp and multimon-ng) gets its own caller's audio,
no key, and nothing of any other call.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from typing import Any

import pytest

from proxy.control import bencode, ng
from proxy.control.calls import CallRegistry
from proxy.control.ng_server import NgServer
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.simulate import TEST_CARDS
from proxy.media.workers import WorkerPoolEngine
from tests.proxy.failclosed.wire import LAWS, RtpSource, by_source, judge, keyed_audio, send

CALLS = 7  # the last one's call id is numeric: sent as an integer now and then
NUMERIC = "4711"
ARRIVED_FRACTION = 0.8
SETTLE_SECONDS = 5.0
# (call-id key, from-tag key, to-tag key, encoding): spellings rtpengine takes and the ones
# ToneGuard folds besides (underscores, any case, spaces around).
SPELLINGS = [
    ("call-id", "from-tag", "to-tag", "bencode"),
    ("Call-ID", "From-Tag", "To-Tag", "json"),
    ("call id", "from tag", "to tag", "bencode"),
    ("call_id", "from_tag", "to_tag", "json"),
    ("CALL ID", "FROM TAG", "TO TAG", "bencode"),
    ("call-ID", "From Tag", "to_Tag", "json"),
    (" call-id ", "from-tag ", " to-tag", "bencode"),
]
STEPS = ("offer", "answer", "delete", "offer", "answer", "offer", "answer")

pytestmark = pytest.mark.skipif(not shutil.which("multimon-ng"), reason="needs multimon-ng")


class RawNg(asyncio.DatagramProtocol):
    """Kamailio's side of ng without the one-request-at-a-time: datagrams go out as given;
    replies are matched by cookie and each request is retransmitted until its reply."""

    def __init__(self) -> None:
        self.replies: dict[str, dict[str, Any]] = {}
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        cookie, _, payload = data.partition(b" ")
        body = json.loads(payload) if payload[:1] == b"{" else bencode.decode(payload)
        self.replies[cookie.decode()] = body  # type: ignore[assignment]
        self.arrived.set()

    async def exchange(self, datagrams: dict[str, bytes], timeout: float = 10.0
                       ) -> dict[str, dict[str, Any]]:
        """Send all at once (in the dict's order); the replies by cookie."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [c for c in datagrams if c not in self.replies]
            if not missing:
                return {c: self.replies[c] for c in datagrams}
            if loop.time() >= deadline:
                raise TimeoutError(f"{len(missing)} ng request(s) got no reply")
            for cookie in missing:  # the first round: everything; then retransmissions
                self.transport.sendto(datagrams[cookie])
            self.arrived.clear()
            try:
                async with asyncio.timeout(1.0):
                    while any(c not in self.replies for c in missing):
                        await self.arrived.wait()
                        self.arrived.clear()
            except TimeoutError:
                continue


def _datagram(body: dict[str, Any], encoding: str) -> tuple[str, bytes]:
    cookie = secrets.token_hex(6)
    payload = json.dumps(body).encode() if encoding == "json" else bencode.encode(body)
    return cookie, cookie.encode() + b" " + payload


def _command(step: int, call_id: str, spelling: tuple[str, str, str, str], sdp: str
             ) -> tuple[dict[str, Any], str]:
    call_key, from_key, to_key, encoding = spelling
    command = STEPS[step]
    # An integer call id (JSON number, bencode integer) is the same call as its digits.
    value: str | int = int(call_id) if call_id == NUMERIC and step % 2 else call_id
    body: dict[str, Any] = {"command": command, call_key: value, from_key: "c"}
    if command in ("answer",):
        body[to_key] = "a"
    if command in ("offer", "answer"):
        body["sdp"] = sdp
    return body, encoding


async def test_one_calls_commands_under_mixed_key_spellings_share_a_lane_in_order(
        media_ports: tuple[int, int]) -> None:
    pool = WorkerPoolEngine("127.0.0.1", *media_ports, workers=2)
    await pool.start()
    registry = CallRegistry(pool, address="127.0.0.1")
    trace: list[tuple[str, str, str]] = []  # (call id, command, "start" | "end")
    running: dict[str, int] = {}
    overlap: list[str] = []
    peak = 0

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal peak
        norm = ng.normalise(body)
        call_id, command = str(norm.get("call-id")), str(norm.get("command"))
        running[call_id] = running.get(call_id, 0) + 1
        if running[call_id] > 1:
            overlap.append(f"{call_id}: {command} started while another of its commands ran")
        peak = max(peak, sum(1 for n in running.values() if n))
        trace.append((call_id, command, "start"))
        try:
            return await registry.handle(body)
        finally:
            running[call_id] -= 1
            trace.append((call_id, command, "end"))

    server = NgServer(handle)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        RawNg, remote_addr=await server.start("127.0.0.1", 0))
    ids = [f"spell-{i}" for i in range(CALLS - 1)] + [NUMERIC]
    assert {pool.worker_for(c) for c in ids} == {0, 1}
    peers: list[RtpPeer] = []
    try:
        first_callers = [await RtpPeer(seed=i).start() for i in range(CALLS)]
        callers = [await RtpPeer(seed=50 + i).start() for i in range(CALLS)]
        agents = [await RtpPeer(seed=100 + i).start() for i in range(CALLS)]
        peers = first_callers + callers + agents
        sent: dict[str, bytes] = {}
        meaning: dict[str, tuple[int, int]] = {}  # cookie -> (call, step)
        for step in range(len(STEPS)):  # step by step, every call's command of that step
            for i, call_id in enumerate(ids):
                phone = (agents[i] if STEPS[step] == "answer"
                         else first_callers[i] if step < 2 else callers[i])
                body, encoding = _command(step, call_id, SPELLINGS[(i + step) % len(SPELLINGS)],
                                          audio_sdp("127.0.0.1", phone.port))
                cookie, datagram = _datagram(body, encoding)
                sent[cookie], meaning[cookie] = datagram, (i, step)
        replies = await client.exchange(sent)

        problems = list(overlap)
        for cookie, reply in replies.items():
            i, step = meaning[cookie]
            if reply.get("result") != "ok" or "warning" in reply:
                problems.append(f"call {i} step {step} ({STEPS[step]}): {reply.get('result')} "
                                f"{reply.get('error-reason') or reply.get('warning') or ''}")
        for i, call_id in enumerate(ids):
            order = [command for c, command, what in trace if c == call_id and what == "start"]
            if order != list(STEPS):
                problems.append(f"call {i}: commands ran as {order}, sent as {list(STEPS)}")
        if peak < 2:
            problems.append("no two calls' commands ever ran at the same time")
        assert not problems, "\n".join(problems)

        # The call as the last offer/answer left it: the second caller's phone, both tags.
        answers = {meaning[c][0]: r for c, r in replies.items() if meaning[c][1] == 6}
        to_callers = [media_endpoint(answers[i]["sdp"]) for i in range(CALLS)]
        for i, call_id in enumerate(ids):
            query = await registry.handle({"command": "query", "call-id": call_id})
            assert set(query["tags"]) == {"c", "a"}, query["tags"]
            stream = query["tags"]["c"]["medias"][0]["streams"][0]
            assert stream["advertised endpoint"]["port"] == callers[i].port

        # Every caller keys a card (in-band on even calls, RFC 4733 on odd ones) at once.
        plans = []
        for i, caller in enumerate(callers):
            card, expiry, code = list(TEST_CARDS.values())[i % len(TEST_CARDS)]
            rfc4733 = i % 2 == 1
            audio, keys = keyed_audio(f"{card}#{expiry}#{code}", inband=not rfc4733,
                                      seed=20 + i)
            plans.append(RtpSource(caller.ssrc, seed=300 + i).segment(
                audio, to_callers[i], keys=keys, event_pt=101 if rfc4733 else None))
        await asyncio.gather(*(send(c, p) for c, p in zip(callers, plans, strict=True)))
        counts = [sum(1 for _, p, _ in plan if p.payload_type in LAWS) for plan in plans]

        def arrived() -> bool:
            return all(sum(1 for _, p in a.received.packets if p.ssrc == c.ssrc) >= n - 2
                       for c, a, n in zip(callers, agents, counts, strict=True))
        deadline = loop.time() + SETTLE_SECONDS
        while not arrived() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        others = {c.ssrc for c in callers + first_callers}
        for i, (caller, agent, n) in enumerate(zip(callers, agents, counts, strict=True)):
            for ssrc, heard in by_source(agent.received).items():
                if ssrc in others and ssrc != caller.ssrc:
                    problems.append(f"call {i}: {heard.packets} packet(s) of another caller's "
                                    f"SSRC {ssrc:#x} reached its agent")
                verdict = judge(heard.audio)
                if not verdict.clean:
                    problems.append(f"call {i} agent leg, SSRC {ssrc:#x}: {verdict}")
                if events := heard.payload_types[101]:
                    problems.append(f"call {i}: {events} RFC 4733 packet(s) reached its agent")
            got = sum(1 for _, p in agent.received.packets
                      if p.ssrc == caller.ssrc and p.payload_type in LAWS)
            if got < ARRIVED_FRACTION * n:
                problems.append(f"call {i}: only {got} of its caller's {n} audio packets "
                                "reached its agent")
        assert not problems, "\n".join(problems)
    finally:
        for peer in peers:
            peer.close()
        if transport is not None:
            transport.close()
        await server.stop()
        await registry.close()
        await pool.stop()
