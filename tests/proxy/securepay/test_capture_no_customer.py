"""A capture on a call that names no customer (``caller-none``) masks every party, over real
sockets: both parties key digits in-band while a payment captures, and neither hears the
other's keys (spandsp and multimon-ng on what each received), while each heard the other's
audio. Before the capture the same call relays keys in clear both ways: the control that shows
the decoders and the path would have found them. (test_call_control.py checks the same rule
at the registry, without media.)"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import numpy as np

from dsp import tones
from proxy.control.ng_client import NgClient
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import Received, RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from tests.proxy.conftest import Stack

PACKET = 160


def keyed(keys: str, seed: int) -> np.ndarray:
    """Speech-level noise with ``keys`` at -12 dBm0 in it (80 ms tones, 80 ms gaps)."""
    rng = np.random.default_rng(seed)
    keying = tones.dtmf_sequence(keys, tone_ms=80, gap_ms=80, lead_ms=300, low_dbm0=-12.0)
    audio = np.concatenate([keying, np.zeros(4000)])
    audio += tones.white_noise(audio.size, -40.0, rng)
    return audio[:audio.size - audio.size % PACKET]


async def exchange(a: RtpPeer, a_sends_to: tuple[str, int], a_audio: np.ndarray,
                   b: RtpPeer, b_sends_to: tuple[str, int], b_audio: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Both play at once (each to its ToneGuard port); (what A received, what B received) of
    this exchange, once every packet sent has arrived (bounded)."""
    a_before, b_before = len(a.received.packets), len(b.received.packets)
    sent_a, sent_b = await asyncio.gather(a.play(a_audio, a_sends_to),
                                          b.play(b_audio, b_sends_to))
    await a.wait_for(a_before + sent_b, timeout=10)
    await b.wait_for(b_before + sent_a, timeout=10)
    return (Received(a.received.packets[a_before:]).audio(),
            Received(b.received.packets[b_before:]).audio())


async def test_a_capture_on_a_call_with_no_customer_masks_both_parties_keys(
        stack: Stack) -> None:
    call_id = "none-" + secrets.token_hex(4)
    ngc = await NgClient.connect(stack.ng)
    offerer, answerer = await RtpPeer(seed=1).start(), await RtpPeer(seed=2).start()
    try:
        offer = await ngc.request({
            "command": "offer", "call-id": call_id, "from-tag": "o", "flags": ["caller-none"],
            "sdp": audio_sdp("127.0.0.1", offerer.port)})
        answer = await ngc.request({
            "command": "answer", "call-id": call_id, "from-tag": "o", "to-tag": "a",
            "sdp": audio_sdp("127.0.0.1", answerer.port)})
        # Each party sends to the port ToneGuard gave it in the SDP it received.
        from_offerer, from_answerer = media_endpoint(answer["sdp"]), media_endpoint(offer["sdp"])

        # Control: no customer and no capture, so nobody is masked: keys pass both ways.
        heard_o, heard_a = await exchange(offerer, from_offerer, keyed("123", 1),
                                          answerer, from_answerer, keyed("456", 2))
        assert spandsp_detect(heard_a) == multimon_detect(heard_a) == "123"
        assert spandsp_detect(heard_o) == multimon_detect(heard_o) == "456"

        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as http:
            r = await http.post(f"/v1/calls/{call_id}/assign", json={"agent_id": "agent-demo"},
                                headers={"Authorization": f"Bearer {stack.admin_key}"})
            r.raise_for_status()
            r = await http.post(f"/v1/calls/{call_id}/payments", json={},
                                headers={"Authorization": f"Bearer {stack.agent_key}"})
            r.raise_for_status()
        # The capture reconfigures the streams in a task: wait until both are masked.
        call = stack.node.registry.calls[call_id]
        async with asyncio.timeout(5):
            while not all(m.config.masking is not None and m.config.masking.effective
                          for party in call.parties.values() for m in party.medias):
                await asyncio.sleep(0.01)

        o_audio, a_audio = keyed("4111111111111111", 3), keyed("5555555555554444", 4)
        heard_o, heard_a = await exchange(offerer, from_offerer, o_audio,
                                          answerer, from_answerer, a_audio)
        # Each heard all of the other's audio (every packet arrived, none dropped) ...
        assert heard_a.size == o_audio.size and heard_o.size == a_audio.size
        assert np.sqrt(np.mean(heard_a.astype(float) ** 2)) > 10  # not silence throughout
        # ... and none of the other's keys.
        for heard in (heard_a, heard_o):
            assert spandsp_detect(heard) == "" and multimon_detect(heard) == ""
        await ngc.request({"command": "delete", "call-id": call_id})
    finally:
        ngc.close()
        offerer.close()
        answerer.close()
