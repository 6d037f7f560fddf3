"""Fuzzing campaign, control plane: ng datagrams and SDP (seeded; see tests/fuzzing.py).

Invariants: every datagram with a usable cookie gets a reply that encodes; no handler raises
anything but an ng error; nothing is logged as an exception; no reply carries a card number
no request carried; memory stays bounded; afterwards the real ng socket still answers ping
and a live call still relays.
"""

from __future__ import annotations

import asyncio
import resource

import numpy as np
import pytest
from structlog.testing import capture_logs

from proxy.control import ng
from proxy.control.calls import CallRegistry
from proxy.control.ng_server import NgServer
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.media.engine import LocalMediaEngine
from proxy.media.memory import MemoryMediaEngine
from tests import fuzzing
from tests.proxy.control.test_ng_server import _exchange


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_fuzzed_ng_messages_get_a_reply_and_never_escape_the_handler() -> None:
    seed = fuzzing.SEED
    registry = CallRegistry(MemoryMediaEngine(port_min=20000, port_max=60000),
                            address="127.0.0.1")
    replies = errors = 0
    sent: set[bytes] = set()
    rss_before = _rss_mb()
    with capture_logs() as logs:
        for n, data in fuzzing.inputs(fuzzing.ng_datagram, seed):
            context = f"seed {seed} input {n}: {data[:120]!r}"
            try:
                message = ng.parse_message(data)
            except ng.NgFramingError:
                continue
            except ng.NgError as exc:
                ng.format_reply("c", ng.error_reply(exc.reason), ng.error_encoding(exc))
                errors += 1
                replies += 1
                continue
            try:
                reply = await registry.handle(message.body)
            except ng.NgError as exc:
                reply = ng.error_reply(exc.reason)
                errors += 1
            except Exception as exc:  # what the ng server would answer "Internal error"
                raise AssertionError(f"handler raised {exc!r} — {context}") from exc
            encoded = ng.format_reply(message.cookie, reply, message.encoding)
            assert len(encoded) <= ng.MAX_MESSAGE or reply.get("result") == "ok", context
            # A number the requests never carried must not appear (a Call-ID or label an
            # attacker sent may be echoed; timestamps may pass Luhn: look for real cards).
            sent |= {pan for pan in fuzzing.TEST_PANS if pan in data}
            assert not any(pan in encoded for pan in set(fuzzing.TEST_PANS) - sent), context
            replies += 1
            if n % 500 == 0:  # Kamailio deletes calls too: keep the registry to a few
                for call_id in list(registry.calls):
                    await registry.handle({"command": "delete", "call-id": call_id})
    assert [e for e in logs if e.get("log_level") in ("error", "critical")
            or "exc_info" in e] == [], f"seed {seed}"
    # Most inputs are answered (the rest had no usable cookie), many of them with an error.
    assert replies > fuzzing.INPUTS * 7 // 10 and errors > fuzzing.INPUTS // 10, (replies, errors)
    assert _rss_mb() - rss_before < 200, f"seed {seed}: memory grew"


async def test_after_a_flood_of_fuzzed_datagrams_ping_is_answered_and_a_call_relays(
        media_ports: tuple[int, int]) -> None:
    seed = fuzzing.SEED
    engine = LocalMediaEngine("127.0.0.1", *media_ports)
    await engine.start()
    registry = CallRegistry(engine, address="127.0.0.1")
    server = NgServer(registry.handle, queue_size=100_000)
    addr = await server.start("127.0.0.1", 0)
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       remote_addr=addr)
    try:
        count = min(fuzzing.INPUTS, 3000)
        for n, data in fuzzing.inputs(fuzzing.ng_datagram, seed, count):
            transport.sendto(data)
            if n % 50 == 0:
                await asyncio.sleep(0.005)  # let the server drain its socket
        pong = b""
        async with asyncio.timeout(90):  # behind whatever of the flood is still queued
            while not pong:  # Kamailio retransmits too: the cookie cache answers the repeat
                try:
                    [pong] = await _exchange(addr, [b"p1 d7:command4:pinge"], 1)
                except TimeoutError:
                    continue
        assert pong == b"p1 d6:result4:ponge", f"seed {seed}"
        offer = await registry.handle({"command": "offer", "call-id": "live", "from-tag": "a",
                                       "flags": ["caller-none"],
                                       "sdp": audio_sdp("127.0.0.1", caller.port)})
        answer = await registry.handle({"command": "answer", "call-id": "live",
                                        "from-tag": "a", "to-tag": "b",
                                        "sdp": audio_sdp("127.0.0.1", agent.port)})
        await caller.play(np.zeros(1600, np.int16), media_endpoint(answer["sdp"]))  # 200 ms
        await agent.wait_for(8, timeout=20)
        assert media_endpoint(offer["sdp"])[1] != 0 and server.counters["received"] > 0
    finally:
        transport.close()
        caller.close()
        agent.close()
        await server.stop()
        await engine.stop()


@pytest.mark.parametrize("part", range(2))
async def test_fuzzed_sdp_offers_are_answered_or_refused_and_refusals_leave_nothing(
        part: int) -> None:
    seed = fuzzing.SEED + part
    engine = MemoryMediaEngine(port_min=20000, port_max=60000)
    registry = CallRegistry(engine, address="127.0.0.1")
    rng = fuzzing.random.Random(seed)
    for n in range(fuzzing.INPUTS // 2):
        text = fuzzing.sdp(rng)
        context = f"seed {seed} input {n}: {text[:200]!r}"
        try:
            reply = await registry.handle({"command": "offer", "call-id": f"s{n}",
                                           "from-tag": "ft", "sdp": text})
        except ng.NgError:
            assert f"s{n}" not in registry.calls, context
            continue
        except Exception as exc:
            raise AssertionError(f"offer raised {exc!r} — {context}") from exc
        assert reply["sdp"].startswith("v=0"), context
        await registry.handle({"command": "delete", "call-id": f"s{n}"})
    assert engine.streams == {} and registry.calls == {}, f"seed {seed}"
