"""Fixtures the SIP and media tests of this folder share: a node whose reported digits the test
reads, and a recording tap (a test phone the node copies the masked audio to)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.demo.phone import RtpPeer
from proxy.media.types import DigitEvent
from proxy.service.serve import Node
from tests.proxy.control import sip_peers


@pytest.fixture
def node_digits() -> list[DigitEvent]:
    """Every digit the node of ``masking_node`` / ``tapped_node`` reported, in order."""
    return []


@pytest.fixture
async def recording_tap() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer(seed=9).start()
    yield peer
    peer.close()


@pytest.fixture
async def masking_node(media_ports: tuple[int, int],
                       node_digits: list[DigitEvent]) -> AsyncIterator[Node]:
    """A node with the default policy (no hint: every party masked)."""
    node = await sip_peers.start_node(media_ports, node_digits)
    yield node
    await node.stop()


@pytest.fixture
async def tapped_node(media_ports: tuple[int, int], node_digits: list[DigitEvent],
                      recording_tap: RtpPeer) -> AsyncIterator[Node]:
    """The default policy, with the node's recording tap pointed at ``recording_tap``."""
    node = await sip_peers.start_node(media_ports, node_digits, masking={
        "recording_tap": f"127.0.0.1:{recording_tap.port}"})
    yield node
    await node.stop()
