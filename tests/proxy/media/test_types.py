"""The media plane's counter types: they add up field by field, cross a process pipe unchanged,
and the packet path's mutable counters carry exactly the fields the frozen ones report."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, fields

import pytest

from proxy.media import engine, masking
from proxy.media.types import MaskingCounters, MediaTotals, StreamCounters, StreamStats


def test_totals_add_field_by_field_including_the_masking_counters() -> None:
    a = MediaTotals(packets_in=3, errors=1, masking=MaskingCounters(masked_packets=2),
                    streams=4, workers=1)
    b = MediaTotals(packets_in=5, dtmf_masked=2, masking=MaskingCounters(stalls=7),
                    streams=1, workers=1)
    assert a + b == MediaTotals(packets_in=8, errors=1, dtmf_masked=2,
                                masking=MaskingCounters(masked_packets=2, stalls=7),
                                streams=5, workers=2)
    assert sum([a, b], MediaTotals()) == a + b


def test_counters_of_different_kinds_do_not_add() -> None:
    with pytest.raises(TypeError):
        _ = StreamCounters(packets_in=1) + MaskingCounters(stalls=1)  # type: ignore[operator]


def test_totals_and_stats_cross_a_pickle_unchanged_and_stay_frozen() -> None:
    totals = MediaTotals(packets_in=9, masking=MaskingCounters(uninspectable_packets=3), streams=2)
    stats = StreamStats(packets_in=4, last_packet=12.5, endpoint=("127.0.0.1", 4000))
    for value in (totals, stats):
        assert pickle.loads(pickle.dumps(value)) == value
    with pytest.raises(FrozenInstanceError):
        totals.packets_in = 0  # type: ignore[misc]


def _int_fields(cls: type) -> set[str]:
    # Annotations are strings here (``from __future__ import annotations`` in those modules).
    return {f.name for f in fields(cls) if f.type in ("int", int)}


def test_the_engines_live_counters_carry_every_stream_counter() -> None:
    """A counter added to one and not the other would be lost (or fail at the first totals)."""
    assert _int_fields(engine._Counters) == {f.name for f in fields(StreamCounters)}


def test_the_masking_pipelines_live_counters_carry_every_masking_counter() -> None:
    assert _int_fields(masking._Counts) == {f.name for f in fields(MaskingCounters)}

