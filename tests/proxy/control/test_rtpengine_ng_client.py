"""Driven by the real `rtpengine-ng-client` (Debian rtpengine-utils) over UDP on loopback."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator

import numpy as np
import pytest

from dsp import g711, tones
from proxy.control import sdes
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.service.config import load_config
from proxy.service.serve import Node

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which("rtpengine-ng-client") is None,
                       reason="rtpengine-ng-client missing: apt-get install rtpengine-utils"),
]


@pytest.fixture(params=[1, 2], ids=["in-process", "2-workers"])
async def node(request: pytest.FixtureRequest, free_udp_port: int,
               media_ports: tuple[int, int]) -> AsyncIterator[Node]:
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{free_udp_port}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1],
                  "workers": request.param},
        "api": {"listen": "127.0.0.1:0"},
    })
    node = await Node.start(config)
    yield node
    await node.stop()


async def ng_client(node: Node, *args: str, expect_error: bool = False) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rtpengine-ng-client", "--proxy-address=127.0.0.1",
        f"--proxy-port={node.ng_address[1]}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(20):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode()
    # The client exits non-zero when the reply is an error ("Error reason: ...").
    assert (proc.returncode != 0) == expect_error, text
    return text


def succeeded(output: str) -> bool:
    """The client deletes ``result: ok`` before printing; an error shows its reason."""
    return "error-reason" not in output and "result =>" not in output


def new_sdp(output: str) -> str:
    block = output.split("New SDP:", 1)[1].split("-----8<", 1)[1].split("\n", 1)[1]
    return block.split("----->8", 1)[0].replace("\n", "\r\n")


async def test_ping(node: Node) -> None:
    assert "result => 'pong'" in await ng_client(node, "ping")


async def test_a_whole_call_with_media_through_toneguard(node: Node) -> None:
    caller, agent = await RtpPeer(seed=3).start(), await RtpPeer(seed=4).start()
    try:
        offer = await ng_client(node, "offer", "--call-id=ngc1", "--from-tag=caller",
                                "--label=caller", "--replace-origin",
                                f"--sdp={audio_sdp('127.0.0.1', caller.port)}")
        to_agent = media_endpoint(new_sdp(offer))
        answer = await ng_client(node, "answer", "--call-id=ngc1", "--from-tag=caller",
                                 "--to-tag=agent", f"--sdp={audio_sdp('127.0.0.1', agent.port)}")
        to_caller = media_endpoint(new_sdp(answer))
        audio = tones.sine(440, 400, -15.0)
        await asyncio.gather(caller.play(audio, to_caller), agent.play(audio, to_agent))
        await agent.wait_for(15)
        await caller.wait_for(15)
        query = await ng_client(node, "query", "--call-id=ngc1")
        packets = [int(n) for n in re.findall(r"packets => '(\d+)'", query)]
        assert packets and max(packets) >= 15
        assert "'in dialogue with' => 'agent'" in query
        listed = await ng_client(node, "list")
        assert "'ngc1'" in listed
        deleted = await ng_client(node, "delete", "--call-id=ngc1")
        assert succeeded(deleted) and "totals" in deleted
        assert "'ngc1'" not in await ng_client(node, "list")
    finally:
        caller.close()
        agent.close()


async def test_srtp_toward_the_agent_from_a_plain_rtp_caller(node: Node) -> None:
    caller = await RtpPeer(seed=5).start()
    offer = await ng_client(node, "offer", "--call-id=ngc2", "--from-tag=caller",
                            "--protocol=RTP/SAVP", f"--sdp={audio_sdp('127.0.0.1', caller.port)}")
    offered = sdes.offered([line.split(":", 1)[1] for line in new_sdp(offer).split("\r\n")
                            if line.startswith("a=crypto:")])
    assert [c.suite for c in offered][:2] == ["AEAD_AES_256_GCM", "AEAD_AES_128_GCM"]
    choice = offered[2]  # AES_CM_128_HMAC_SHA1_80, the most common
    agent_key = sdes.generate(choice.suite, choice.tag)
    agent = await RtpPeer(seed=6, srtp_recv=choice.params, srtp_send=agent_key.params).start()
    try:
        answer = await ng_client(
            node, "answer", "--call-id=ngc2", "--from-tag=caller", "--to-tag=agent",
            f"--sdp={audio_sdp('127.0.0.1', agent.port, proto='RTP/SAVP', crypto=[agent_key])}")
        answered = new_sdp(answer)
        assert "RTP/AVP" in answered and "a=crypto" not in answered  # the caller stays plain
        to_agent_side = media_endpoint(new_sdp(offer))
        caller_audio = tones.sine(600, 400, -15.0)
        agent_audio = tones.sine(1100, 400, -15.0)
        await asyncio.gather(caller.play(caller_audio, media_endpoint(answered)),
                             agent.play(agent_audio, to_agent_side))
        await agent.wait_for(20)
        await caller.wait_for(20)
        # RTP in, SRTP out (and back): what each side decrypts/decodes is exactly what was sent.
        assert np.array_equal(agent.received.audio(), g711.round_trip(caller_audio, "ulaw"))
        assert np.array_equal(caller.received.audio(), g711.round_trip(agent_audio, "ulaw"))
        assert agent.received.errors == 0 and caller.received.errors == 0
    finally:
        caller.close()
        agent.close()


async def test_block_and_unblock_dtmf_and_errors(node: Node) -> None:
    caller = await RtpPeer().start()
    try:
        await ng_client(node, "offer", "--call-id=ngc3", "--from-tag=caller",
                        f"--sdp={audio_sdp('127.0.0.1', caller.port)}")
        out = await ng_client(node, "block DTMF", "--call-id=ngc3", "--from-tag=caller",
                              "--DTMF-security=silence")
        assert succeeded(out)
        media = node.registry.calls["ngc3"].parties["caller"].medias[0]  # control-plane view
        assert media.config.masking is not None and media.config.masking.mode.value == "silence"
        out = await ng_client(node, "block DTMF", "--call-id=nosuch", expect_error=True)
        assert 'Error reason: "Unknown call-ID"' in out
        out = await ng_client(node, "unblock DTMF", "--call-id=ngc3")
        assert succeeded(out) and not media.config.masking.masked
    finally:
        caller.close()
