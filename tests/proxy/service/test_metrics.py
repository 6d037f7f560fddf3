"""/metrics: every metric has its declared type and a conventional name, and the media plane's
counters (masking included, through worker processes too) reach it while a call runs."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dsp import tones
from proxy.api.auth import AgentDirectory
from proxy.control.calls import CallCounters
from proxy.demo.multimon import multimon_detect
from proxy.demo.phone import RtpPeer
from proxy.demo.sdp_builder import audio_sdp, media_endpoint
from proxy.demo.spandsp import spandsp_detect
from proxy.media.latency import NG_BUCKETS, TICK_BUCKETS, Histogram, Recorder
from proxy.media.types import MaskingCounters, MediaTotals
from proxy.service.config import load_config
from proxy.service.metrics import METRICS, Kind, Metrics, Readings
from proxy.service.serve import Node
from tests.conftest import pick_udp_port

CALLS = CallCounters(created=3, deleted=1, idle=1)
NG = {"received": 9, "retransmissions": 1, "dropped": 0, "errors": 2}
PAYMENTS = {"started": 2, "complete": 1, "failed": 0, "cancelled": 1, "gateway_errors": 0}


def _families(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    """name -> (type, {sample name: value})."""
    return {f.name: (f.type, {s.name: s.value for s in f.samples})
            for f in text_string_to_metric_families(text)}


def _recorded(bounds: tuple[float, ...], *seconds: float) -> Histogram:
    recorder = Recorder(bounds)
    for s in seconds:
        recorder.observe(s)
    return recorder.snapshot()


SAMPLE = {Kind.COUNTER: "{}_total", Kind.GAUGE: "{}", Kind.HISTOGRAM: "{}_count"}


def test_each_metric_is_exported_with_its_declared_type() -> None:
    readings = Readings(
        media=MediaTotals(packets_in=40, dtmf_masked=2, streams=2, workers=1,
                          masking=MaskingCounters(masked_packets=7, uninspectable_packets=1),
                          tick_seconds=_recorded(TICK_BUCKETS, 0.0004, 0.003, 0.2)),
        calls=CALLS, calls_active=2, ng=NG, payments=PAYMENTS, payments_active=1,
        ng_seconds={"offer": _recorded(NG_BUCKETS, 0.002), "ping": _recorded(NG_BUCKETS, 0)},
        draining=True, offers_refused=3)
    families = _families(Metrics(lambda: readings).render().decode())
    assert set(families) == {m.name for m in METRICS}
    for m in METRICS:
        kind, samples = families[m.name]
        assert kind == m.kind.value, m.name
        # Counters are exposed as NAME_total (plus the client's _created), gauges as NAME,
        # histograms as NAME_bucket/_sum/_count.
        assert SAMPLE[m.kind].format(m.name) in samples, m.name
    assert families["toneguard_node_draining"][1]["toneguard_node_draining"] == 1.0
    assert families["toneguard_ng_offers_refused"][1]["toneguard_ng_offers_refused_total"] == 3
    assert families["toneguard_media_streams"] == ("gauge", {"toneguard_media_streams": 2.0})
    assert families["toneguard_calls_active"][0] == "gauge"
    assert families["toneguard_media_packets_received"][1][
        "toneguard_media_packets_received_total"] == 40.0
    assert families["toneguard_masking_masked_packets"][1][
        "toneguard_masking_masked_packets_total"] == 7.0
    assert families["toneguard_masking_uninspectable_packets"][0] == "counter"
    assert families["toneguard_calls_created"][1]["toneguard_calls_created_total"] == 3.0


def test_histograms_export_cumulative_buckets_sum_and_count_per_command() -> None:
    readings = Readings(
        media=MediaTotals(tick_seconds=_recorded(TICK_BUCKETS, 0.0004, 0.003, 0.2)),
        calls=CALLS, calls_active=0, ng=NG, payments=PAYMENTS, payments_active=0,
        ng_seconds={"offer": _recorded(NG_BUCKETS, 0.002, 0.03), "ping": _recorded(NG_BUCKETS, 0)})
    families = list(text_string_to_metric_families(Metrics(lambda: readings).render().decode()))
    tick = next(f for f in families if f.name == "toneguard_media_tick_seconds")
    buckets = {s.labels["le"]: s.value for s in tick.samples if s.name.endswith("_bucket")}
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 2 and buckets["0.1"] == 2
    assert buckets["+Inf"] == 3  # 0.2 s is above every bound
    total = next(s.value for s in tick.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(0.2034)
    ng_family = next(f for f in families if f.name == "toneguard_ng_command_seconds")
    counts = {s.labels["command"]: s.value for s in ng_family.samples
              if s.name.endswith("_count")}
    assert counts == {"offer": 2, "ping": 1}
    offer = {s.labels["le"]: s.value for s in ng_family.samples
             if s.name.endswith("_bucket") and s.labels["command"] == "offer"}
    assert offer["0.0025"] == 1 and offer["0.025"] == 1 and offer["0.05"] == 2


def test_histograms_of_two_workers_add_up_and_other_buckets_are_refused() -> None:
    one = MediaTotals(tick_seconds=_recorded(TICK_BUCKETS, 0.001), workers=1)
    two = MediaTotals(tick_seconds=_recorded(TICK_BUCKETS, 0.001, 0.05), workers=1)
    both = one + two
    assert both.tick_seconds.count == 3 and both.workers == 2
    assert both.tick_seconds.total == pytest.approx(0.052)
    with pytest.raises(ValueError, match="buckets differ"):
        _ = _recorded(TICK_BUCKETS) + _recorded(NG_BUCKETS)
    with pytest.raises(ValueError, match="increasing"):
        Recorder((0.1, 0.01))


def test_names_follow_prometheus_conventions_without_doubled_words() -> None:
    for m in METRICS:
        assert re.fullmatch(r"toneguard_[a-z]+(_[a-z0-9]+)+", m.name), m.name
        assert not m.name.endswith("_total"), m.name  # the exposition adds it to counters
        words = m.name.split("_")
        assert all(a != b for a, b in itertools.pairwise(words)), m.name
        assert m.help, m.name


def test_a_repeated_name_is_refused() -> None:
    streams = next(m for m in METRICS if m.name == "toneguard_media_streams")
    with pytest.raises(ValueError, match="toneguard_media_streams"):
        Metrics(lambda: Readings(MediaTotals(), {}, 0, {}, {}, 0), (*METRICS, streams))


@pytest.fixture(params=[1, 2], ids=["in-process", "two-workers"])
async def node(request: pytest.FixtureRequest, media_ports: tuple[int, int]
               ) -> AsyncIterator[Node]:
    config = load_config(overrides={
        "ng": {"listen": f"127.0.0.1:{pick_udp_port()}"},
        "media": {"port_min": media_ports[0], "port_max": media_ports[1],
                  "workers": request.param},
        "api": {"listen": "127.0.0.1:0", "public_metrics": True},
    })
    node = await Node.start(config, agents=AgentDirectory())
    yield node
    await node.stop()


async def _scrape(http: httpx.AsyncClient) -> dict[str, tuple[str, dict[str, float]]]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return _families(response.text)


def _value(families: dict[str, tuple[str, dict[str, float]]], name: str) -> float:
    return families[name][1][f"{name}_total"]


async def test_masking_counters_move_when_a_masked_call_keys_a_digit(node: Node) -> None:
    assert node.api_address is not None
    caller, agent = await RtpPeer(seed=4).start(), await RtpPeer(seed=5).start()
    registry = node.registry
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.api_address[1]}") as http:
        try:
            before = await _scrape(http)
            assert _value(before, "toneguard_masking_masked_packets") == 0.0
            await registry.handle({"command": "offer", "call-id": "m1", "from-tag": "c",
                                   "sdp": audio_sdp("127.0.0.1", caller.port)})
            answer = await registry.handle({"command": "answer", "call-id": "m1",
                                            "from-tag": "c", "to-tag": "a",
                                            "sdp": audio_sdp("127.0.0.1", agent.port)})
            keyed = tones.dtmf_sequence("7", tone_ms=80, gap_ms=80, lead_ms=200, tail_ms=400,
                                        low_dbm0=-10.0)
            sent = await caller.play(keyed, media_endpoint(answer["sdp"]))
            await agent.wait_for(sent, timeout=5)
            heard = agent.received.audio()
            assert heard.size > 0.9 * keyed.size  # the audio arrived ...
            assert spandsp_detect(heard) == multimon_detect(heard) == ""  # ... masked
            # Media totals are refreshed once a second: wait (bounded) for the digit to show.
            async with asyncio.timeout(10):
                while True:
                    after = await _scrape(http)
                    if _value(after, "toneguard_media_digits_masked") >= 1:
                        break
                    await asyncio.sleep(0.2)
        finally:
            caller.close()
            agent.close()
    assert _value(after, "toneguard_masking_masked_packets") > 0
    assert _value(after, "toneguard_media_packets_received") >= sent
    assert after["toneguard_media_streams"] == ("gauge", {"toneguard_media_streams": 2.0})
    assert after["toneguard_calls_active"][1]["toneguard_calls_active"] == 1.0
    workers = node.config.media.workers
    assert after["toneguard_media_workers"][1]["toneguard_media_workers"] == workers
    # Every worker's ticks were timed (totals lag up to a second behind the call).
    ticks = after["toneguard_media_tick_seconds"][1]
    assert ticks["toneguard_media_tick_seconds_count"] >= 10 * workers
    assert 0 < ticks["toneguard_media_tick_seconds_sum"] < ticks[
        "toneguard_media_tick_seconds_count"] * 0.02  # each tick took under its 20 ms
