"""A simulated call with card entry against a running ToneGuard, over the network only.

It plays every outside party: the SIP proxy (ng ``offer``/``answer``/``delete`` over UDP, as
Kamailio would), the caller's phone (RTP keying a test card in-band after some speech), the
agent's phone (RTP), and the agent at the panel (REST + WebSocket). It prints what the agent
saw and checks the agent's audio for leaks with two independent DTMF decoders.

    python -m proxy.demo.simulate --ng 127.0.0.1:2223 --api http://127.0.0.1:8080
    (API keys from the environment: TONEGUARD_ADMIN_KEY, TONEGUARD_AGENT_KEY)

The test card number lives here, in the caller's phone, and nowhere in ToneGuard's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import websockets
from websockets.typing import Subprotocol

from dsp import tones
from proxy.control.ng_client import NgClient
from proxy.demo.leak import leaked_ms_per_window
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.securepay.states import PaymentStatus


def _with_check_digit(body: str) -> str:
    """``body`` completed by its Luhn check digit: the product's code holds no card number,
    only the published test prefixes it derives the demo's test cards from."""
    total = sum(d * 2 - 9 * (d > 4) if i % 2 == 0 else d
                for i, d in enumerate(int(c) for c in reversed(body)))
    return body + str(-total % 10)


TEST_CARDS = {  # the card networks' published test numbers; never real cards
    "visa": (_with_check_digit("411111111111111"), "1230", "123"),
    "mastercard": (_with_check_digit("555555555555444"), "1230", "123"),
    "amex": (_with_check_digit("37828224631000"), "1230", "1234"),
}


@dataclass
class SimResult:
    call_id: str
    events: list[dict] = field(default_factory=list)
    token: str = ""
    status: str = ""
    agent_view: dict[str, str] = field(default_factory=dict)
    brand: str = ""
    last4: str = ""
    spandsp_digits: str = ""
    multimon_digits: str = ""
    leak_ms: float = -1.0
    agent_audio_seconds: float = 0.0
    caller_audio_seconds: float = 0.0  # what the caller sent the agent

    @property
    def audio_heard(self) -> bool:
        """The agent received (nearly) all the caller's audio: without it, "no digit heard"
        would only mean "nothing heard"."""
        return self.caller_audio_seconds > 0 and (
            self.agent_audio_seconds >= 0.95 * self.caller_audio_seconds)

    @property
    def ok(self) -> bool:
        return (self.status == PaymentStatus.COMPLETE and bool(self.token) and self.audio_heard
                and not self.spandsp_digits and not self.multimon_digits
                and self.leak_ms == 0.0)


TONE_MS, GAP_MS, FIELD_PAUSE_MS = 80, 80, 300


def caller_audio(card: tuple[str, str, str], seed: int = 3
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A little noise, then the card, expiry and code, each ended with #; and where each key
    is (sample windows, for the leak check)."""
    rng = np.random.default_rng(seed)
    parts = [tones.white_noise(8000, -35.0, rng)]
    windows = []
    pos = 8000
    for value in card:
        keys = value + "#"
        parts.append(tones.dtmf_sequence(keys, tone_ms=TONE_MS, gap_ms=GAP_MS,
                                         lead_ms=FIELD_PAUSE_MS, low_dbm0=-12.0))
        pos += FIELD_PAUSE_MS * 8
        for _ in keys:
            windows.append((pos, pos + TONE_MS * 8))
            pos += (TONE_MS + GAP_MS) * 8
    parts.append(tones.silence(1500))
    return np.concatenate(parts), windows


async def run_call(ng: tuple[str, int], api: str, admin_key: str, agent_key: str, *,
                   brand: str = "visa", agent_id: str = "agent-demo", keep_call: bool = False,
                   log: Callable[[str], None] = print) -> SimResult:
    call_id = "sim-" + secrets.token_hex(4)
    result = SimResult(call_id)
    ngc = await NgClient.connect(ng)  # raises on an error reply: the demo expects success
    caller, agent = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    try:
        offer = await ngc.request({
            "command": "offer", "call-id": call_id, "from-tag": "caller", "label": "caller",
            "sdp": audio_sdp("127.0.0.1", caller.port), "replace": ["origin"]})
        answer = await ngc.request({
            "command": "answer", "call-id": call_id, "from-tag": "caller", "to-tag": "agent",
            "sdp": audio_sdp("127.0.0.1", agent.port)})
        log(f"call {call_id}: caller → ToneGuard {media_endpoint(answer['sdp'])[1]}, "
            f"ToneGuard → agent {media_endpoint(offer['sdp'])[1]}")
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            r = await http.post(f"/v1/calls/{call_id}/assign", json={"agent_id": agent_id},
                                headers={"Authorization": f"Bearer {admin_key}"})
            r.raise_for_status()
            ws_url = api.replace("http", "ws", 1) + "/v1/events"
            # The key travels as a subprotocol, never in the URL (access logs keep URLs).
            async with websockets.connect(ws_url, subprotocols=[
                    Subprotocol("toneguard"), Subprotocol(agent_key)]) as ws:
                r = await http.post(f"/v1/calls/{call_id}/payments", json={},
                                    headers={"Authorization": f"Bearer {agent_key}"})
                r.raise_for_status()
                log(f"agent {agent_id} started secure payment {r.json()['sid']}")
                to_toneguard = media_endpoint(answer["sdp"])
                to_caller = media_endpoint(offer["sdp"])
                card = TEST_CARDS[brand]
                audio, key_windows = caller_audio(card)
                result.caller_audio_seconds = audio.size / 8000
                play = asyncio.gather(
                    caller.play(audio, to_toneguard),
                    agent.play(tones.white_noise(audio.size, -45.0, np.random.default_rng(9)),
                               to_caller))
                result.events = await _collect(ws, play, call_id, log)
        final = result.events[-1] if result.events else {}
        result.status = final.get("status", "")
        result.token = final.get("token", "")
        result.brand = final.get("brand", "")
        result.last4 = final.get("last4", "")
        for event in result.events:
            for name, value in event.get("masked", {}).items():
                if value:
                    result.agent_view[name] = value
        heard = agent.received.audio()
        result.agent_audio_seconds = heard.size / 8000
        result.spandsp_digits = spandsp_detect(heard)
        result.multimon_digits = multimon_detect(heard)
        # Energy at DTMF frequencies in and around each keyed tone (20 ms either side); the
        # timeline is the caller's, as ToneGuard keeps RTP timestamps.
        result.leak_ms = sum(leaked_ms_per_window(heard, [(s - 160, e + 160)
                                                          for s, e in key_windows]))
        if not keep_call:
            await ngc.request({"command": "delete", "call-id": call_id})
    finally:
        ngc.close()
        caller.close()
        agent.close()
    return result


async def _collect(ws: websockets.ClientConnection, play: asyncio.Future, call_id: str,
                   log: Callable[[str], None]) -> list[dict]:
    events: list[dict] = []

    async def receive() -> None:
        async for message in ws:
            event = json.loads(message)
            if event.get("call_id") != call_id:
                continue
            events.append(event)
            masked = " ".join(f"{k}={v}" for k, v in event.get("masked", {}).items() if v)
            log(f"  agent sees: {event['type']:<15} {event['status']:<11} {masked} "
                f"{event.get('brand', '')} {event.get('error', '')}".rstrip())
            if event["type"] in ("result", "ended"):
                return

    async with asyncio.timeout(40):
        await asyncio.gather(play, receive())
    return events


def report(result: SimResult, log: Callable[[str], None] = print) -> None:
    log("")
    log("What the agent saw")
    for name, value in result.agent_view.items():
        log(f"  {name:<22} {value}")
    log(f"  brand {result.brand.upper() or '-'}, card ending {result.last4 or '-'}")
    log(f"  result: {result.status} token={result.token or '-'}")
    log("")
    log(f"Leak check of the agent's audio ({result.agent_audio_seconds:.1f} s heard of "
        f"{result.caller_audio_seconds:.1f} s sent)")
    log(f"  spandsp decoded:      {result.spandsp_digits or 'nothing'}")
    log(f"  multimon-ng decoded:  {result.multimon_digits or 'nothing'}")
    log(f"  DTMF energy above −45 dBm0 around the keys: {result.leak_ms:.0f} ms")
    log("")
    if result.ok:
        log("PASS: card tokenised, nothing leaked to the agent")
    elif not result.audio_heard:
        log("FAIL: the agent did not hear the call, so the leak check proves nothing")
    else:
        log("FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One simulated secure-pay call.")
    parser.add_argument("--ng", default="127.0.0.1:2223")
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--brand", choices=sorted(TEST_CARDS), default="visa")
    parser.add_argument("--keep-call", action="store_true", help="do not delete the call")
    args = parser.parse_args(argv)
    admin, agent = os.environ.get("TONEGUARD_ADMIN_KEY"), os.environ.get("TONEGUARD_AGENT_KEY")
    if not admin or not agent:
        print("proxy.demo.simulate: set TONEGUARD_ADMIN_KEY and TONEGUARD_AGENT_KEY",
              file=sys.stderr)
        return 2
    host, _, port = args.ng.rpartition(":")
    result = asyncio.run(run_call((host, int(port)), args.api, admin, agent, brand=args.brand,
                                  keep_call=args.keep_call))
    report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
