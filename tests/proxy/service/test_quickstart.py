"""The files docs/quickstart.md ships: the config loads and the customer's pcap keys the card."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from dsp import g711
from dsp.dtmf import digits_in
from proxy.service.config import load_config

ROOT = Path(__file__).resolve().parents[3]
ETHERNET_IP_UDP = 14 + 20 + 8
RTP_HEADER = 12


def _pcap_payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1  # libpcap, Ethernet
    out, pos = [], 24
    while pos < len(data):
        _, _, caplen, _ = struct.unpack_from("<IIII", data, pos)
        out.append(data[pos + 16 + ETHERNET_IP_UDP:pos + 16 + caplen])
        pos += 16 + caplen
    return out


def test_quickstart_config_has_agents_and_a_gateway() -> None:
    config = load_config(ROOT / "config" / "quickstart.toml")
    assert config.api.agents_file == "data/agents.json"
    assert config.gateway.url == "https://127.0.0.1:8443"
    assert config.gateway.key_file == "data/gateway/client.key"
    assert config.ng.listen == "127.0.0.1:2223"  # what kamailio.cfg's TONEGUARD_NG names
    assert '"udp:127.0.0.1:2223"' in (ROOT / "config" / "kamailio" / "kamailio.cfg").read_text()


def test_customer_pcap_keys_the_test_card_expiry_and_code_in_band() -> None:
    packets = _pcap_payloads(ROOT / "config" / "sipp" / "card-4111.pcap")
    assert {p[1] & 0x7F for p in packets} == {0}  # PCMU only: the keys are in-band tones
    codes = np.frombuffer(b"".join(p[RTP_HEADER:] for p in packets), dtype=np.uint8)
    assert digits_in(g711.decode(codes, "ulaw")) == "4111111111111111#1230#123#"


def test_customer_scenario_plays_the_pcap_beside_it() -> None:
    scenario = (ROOT / "config" / "sipp" / "customer.xml").read_text()
    assert 'play_pcap_audio="card-4111.pcap"' in scenario
    assert "telephone-event/8000" in scenario and "<pause/>" in scenario
