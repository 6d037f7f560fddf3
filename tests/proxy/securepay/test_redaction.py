"""The PAN finder masks every Luhn-valid 13–19 digit run and nothing else.

The 13- and 19-digit cases use synthetic Luhn-valid numbers (a 1, zeros, a check digit): no
listed test card has those lengths, and these are no one's card.
"""

from __future__ import annotations

import pytest

from proxy.securepay.redaction import contains_pan, redact_text

THIRTEEN = "1000000000009"  # Luhn-valid, 13 digits: the shortest length that must be masked
NINETEEN = "1000000000000000009"  # Luhn-valid, 19 digits: the longest
TWELVE = "100000000008"  # Luhn-valid, but too short to be a card number


@pytest.mark.parametrize("pan", [THIRTEEN, "378282246310005", "4111111111111111", NINETEEN])
def test_every_card_length_from_13_to_19_digits_is_masked(pan: str) -> None:
    assert redact_text(f"pan={pan};") == f"pan=[PAN redacted …{pan[-4:]}];"


def test_a_12_digit_luhn_valid_run_is_left_alone() -> None:
    assert redact_text(f"id {TWELVE}") == f"id {TWELVE}"


def test_two_cards_in_one_line_are_both_masked() -> None:
    text = redact_text("4111111111111111 and 5555 5555 5555 4444")
    assert text == "[PAN redacted …1111] and [PAN redacted …4444]"


def test_contains_pan_is_true_only_for_text_with_a_card_number() -> None:
    assert contains_pan("card 4111111111111111 here")
    assert contains_pan("5555-5555-5555-4444")
    assert not contains_pan("card 4111111111111112 here")  # fails Luhn
    assert not contains_pan("no digits at all")


def test_payment_ids_never_look_like_card_numbers() -> None:
    from proxy.securepay.manager import _session_id
    ids = [_session_id() for _ in range(3000)]  # ~6 would hold a Luhn-valid run otherwise
    assert len(set(ids)) == 3000
    assert not any(contains_pan(sid) for sid in ids)
    assert all(sid.startswith("PA") and len(sid) == 34 for sid in ids)


@pytest.mark.parametrize("written", [
    "4111  1111  1111  1111",  # two spaces
    "4111\t1111\t1111\t1111",
    "4111.1111.1111.1111",
    "4111/1111/1111/1111",
    "5555-5555 5555.4444",  # mixed
])
def test_cards_written_with_other_separators_are_masked(written: str) -> None:
    text = redact_text(f"card: {written} end")
    assert "1111" not in text.replace("…1111", "") and "5555" not in text, text
    assert text.startswith("card: [PAN redacted …") and text.endswith("] end")


@pytest.mark.parametrize("written", [
    "seq 12 4111 1111 1111 1111",  # a number, then the card
    "4111111111111111 7",  # the card, then a number
    "994111111111111111",  # glued on the left (18 digits)
    "41111111111111110000",  # glued on the right (20 digits)
    "00378282246310005",  # a 15-digit card glued to zeros
])
def test_a_card_next_to_or_glued_to_other_digits_is_masked(written: str) -> None:
    text = redact_text(written)
    assert "411111111111" not in text.replace(" ", "") and "82246" not in text, text
    assert "[PAN redacted" in text


@pytest.mark.parametrize("text", [
    "took 0.30000000000000004 s",  # a float: each side of the point is its own number
    "rtp 127.0.0.1:30000 ssrc 3735928559",
    "2026-12-01 12:14:12",
    "id 4111111111111112",  # 16 digits, fails Luhn, no card inside at 13-16 digits
])
def test_numbers_that_hold_no_card_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.timeout(60)  # a hang guard, not a benchmark: a window scan would take many minutes
def test_a_huge_digit_run_is_masked_without_scanning_it() -> None:
    hostile = "7" * 200_000  # e.g. a call id sent to be logged
    assert redact_text(f"call-id={hostile}") == "call-id=[PAN redacted …7777]"


# Runs of digits with no Luhn-valid 13-19 digit window anywhere (found by search, pinned):
NO_CARD_17 = "19093786579754323"
NO_CARD_20 = "19487574911862527601"
ONES_64 = "1" * 64  # 13-19 ones never pass Luhn: the longest run that is still looked at


@pytest.mark.parametrize("run", [NO_CARD_17, NO_CARD_20, ONES_64])
def test_long_runs_without_a_card_inside_are_left_alone(run: str) -> None:
    assert redact_text(f"n={run}") == f"n={run}"


def test_a_run_longer_than_64_digits_is_masked_without_looking() -> None:
    assert redact_text("n=" + "1" * 65) == "n=[PAN redacted …1111]"


def test_a_card_glued_after_other_digits_is_found_in_the_last_window() -> None:
    # the only Luhn-valid window of this run is its last 16 digits: the card
    assert redact_text("984111111111111111") == "[PAN redacted …1111]"


def test_a_short_card_after_a_short_number_is_found_by_its_groups() -> None:
    # 15 digits in all, too few for the glued rule: only the groups find the 13-digit card
    assert redact_text(f"seq 12 {THIRTEEN} end") == "seq [PAN redacted …0009] end"


def test_a_decimal_number_with_a_card_after_its_point_masks_only_that_side() -> None:
    assert redact_text("amount 1.4111111111111111") == "amount 1.[PAN redacted …1111]"


def test_the_label_shows_the_last_four_digits_whatever_the_grouping() -> None:
    assert redact_text("card 378282246310 005") == "card [PAN redacted …0005]"


def test_a_19_digit_card_after_a_decimal_point_is_found_by_its_groups_alone() -> None:
    # a decimal's sides skip the glued rule: only the groups can find the longest card
    assert redact_text(f"x 0.{NINETEEN}") == "x 0.[PAN redacted …0009]"


def test_a_card_straddling_groups_is_found_by_the_glued_rule() -> None:
    # grouped in fours from two digits early: no run of whole groups is the card
    assert redact_text("ref 9841 1111 1111 1111 11") == "ref [PAN redacted …1111]"
