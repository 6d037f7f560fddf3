"""ITU-T Q.24 / Mitel receiver tests on ToneGuard's detector, after µ-law and after A-law."""

from __future__ import annotations

import pytest

from loadtest import q24

LAWS = pytest.mark.parametrize("law", q24.LAWS)


def _assert_all_pass(results: list[q24.Q24Result]) -> None:
    failed = [f"{r.name}: {r.figure} (needs {r.criterion})" for r in results if not r.passed]
    assert not failed, failed


@LAWS
def test_all_160_digits_decoded_exactly(law: str) -> None:
    _assert_all_pass([q24.decode_all(q24.toneguard_adapter, law)])


@LAWS
def test_twist_accepts_8_db_normal_and_4_db_reverse(law: str) -> None:
    _assert_all_pass(q24.twist(q24.toneguard_adapter, law))


@LAWS
def test_dynamic_range_is_at_least_45_db_and_minus_55_dbm0_is_rejected(law: str) -> None:
    _assert_all_pass(q24.dynamic_range(q24.toneguard_adapter, law))


@LAWS
def test_tones_of_23_ms_never_and_40_ms_always_reported_at_every_alignment(law: str) -> None:
    _assert_all_pass(q24.guard_time(q24.toneguard_adapter, law))


@LAWS
def test_frequency_error_of_1_5_percent_accepted_and_3_5_percent_rejected_on_every_tone(
    law: str,
) -> None:
    _assert_all_pass(q24.bandwidth(q24.toneguard_adapter, law))


@LAWS
def test_all_digits_detected_at_10_db_signal_to_noise(law: str) -> None:
    _assert_all_pass(q24.noise(q24.toneguard_adapter, law))


@LAWS
def test_30_ms_gaps_separate_digits_and_10_ms_dropouts_are_bridged(law: str) -> None:
    _assert_all_pass(q24.interdigit(q24.toneguard_adapter, law))


def test_a_detector_that_hears_nothing_fails_every_procedure() -> None:
    """The procedure itself can fail: a deaf receiver passes none of the acceptance tests."""
    results = q24.run_all(lambda samples: "", "ulaw")
    passing = {r.name for r in results if r.passed}
    # Only the pure rejection criteria can be met by hearing nothing.
    assert passing == {"−55 dBm0 rejected", "bandwidth ±3.5 % rejected"}
