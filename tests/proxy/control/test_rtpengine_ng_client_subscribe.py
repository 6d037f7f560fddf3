"""``subscribe request`` / ``subscribe answer`` / ``unsubscribe`` as the real
`rtpengine-ng-client` (Debian rtpengine-utils) sends them: key spellings, the ``from-tags``
list, and a supervisor's phone that hears the customer masked."""

from __future__ import annotations

import pytest

from dsp import tones
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.service.serve import Node
from tests.proxy.control.test_rtpengine_ng_client import (  # noqa: F401 (node: a fixture)
    new_sdp,
    ng_client,
    node,
    succeeded,
)

pytestmark = pytest.mark.peer


async def test_a_supervisor_subscribed_by_the_real_client_hears_the_customer_masked(
        node: Node) -> None:  # noqa: F811
    customer, agent, supervisor = [await RtpPeer(seed=n).start() for n in range(3)]
    try:
        await ng_client(node, "offer", "--call-id=sub1", "--from-tag=cust",
                        f"--sdp={audio_sdp('127.0.0.1', customer.port)}")
        answer = await ng_client(node, "answer", "--call-id=sub1", "--from-tag=cust",
                                 "--to-tag=agent", f"--sdp={audio_sdp('127.0.0.1', agent.port)}")
        request = await ng_client(node, "subscribe request", "--call-id=sub1",
                                  "--from-tags=cust", "--to-tag=sup", "--set-label=supervisor")
        assert "'to-tag' => 'sup'" in request and "'cust'" in request
        offered = new_sdp(request)
        assert "a=sendonly" in offered
        reply = await ng_client(node, "subscribe answer", "--call-id=sub1", "--to-tag=sup",
                                f"--sdp={audio_sdp('127.0.0.1', supervisor.port)}")
        assert succeeded(reply)
        keyed = tones.dtmf_sequence("4111", tone_ms=70, gap_ms=70, lead_ms=200, tail_ms=400,
                                    low_dbm0=-10.0)
        sent = await customer.play(keyed, media_endpoint(new_sdp(answer)))
        for peer in (agent, supervisor):
            await peer.wait_for(sent, timeout=5)
            assert spandsp_detect(peer.received.audio()) == ""
        assert succeeded(await ng_client(node, "unsubscribe", "--call-id=sub1", "--to-tag=sup"))
        refused = await ng_client(node, "unsubscribe", "--call-id=sub1", "--to-tag=sup",
                                  expect_error=True)
        assert "Unknown subscription to-tag 'sup'" in refused
        third = await ng_client(node, "offer", "--call-id=sub1", "--from-tag=third",
                                f"--sdp={audio_sdp('127.0.0.1', 4000)}", expect_error=True)
        assert "cannot join by offer" in third
    finally:
        for peer in (customer, agent, supervisor):
            peer.close()
