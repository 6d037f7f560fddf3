"""Card numbers never reach a log line, however they get into the call."""

from __future__ import annotations

import io
import logging

import pytest
import structlog

from proxy.securepay.redaction import redact_text
from proxy.service.logging import configure_logging

PANS = ("4111111111111111", "5555555555554444", "378282246310005")


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    yield out
    configure_logging("console", "info")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_pans_anywhere_in_an_event_are_redacted(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(fmt, "debug", stream=out)
    log = structlog.get_logger("t")
    log.info(f"card {PANS[0]} in the message", pan=PANS[1], nested={"a": [PANS[2]]},
             spaced="4111 1111 1111 1111", dashed="5555-5555-5555-4444", number=4111111111111111)
    try:
        raise ValueError(f"bad card {PANS[0]}")
    except ValueError:
        log.exception("failed")
    logging.getLogger("some.library").warning("stdlib says %s", PANS[1])
    text = out.getvalue()
    configure_logging("console", "info")
    for pan in PANS:
        assert pan not in text
    assert "4111 1111 1111 1111" not in text and "5555-5555-5555-4444" not in text
    assert text.count("PAN redacted") >= 8
    assert "ValueError" in text  # the exception is still logged, only the number is masked


def test_digit_runs_that_are_not_card_numbers_are_left_alone(stream: io.StringIO) -> None:
    structlog.get_logger("t").info("ids", call_id="1234567890123", ts="20261124053100",
                                   phone="+441234567890")
    text = stream.getvalue()
    assert "1234567890123" in text and "20261124053100" in text and "+441234567890" in text


def test_redact_text_masks_grouped_numbers_and_keeps_the_last_four() -> None:
    assert redact_text("x 4111-1111-1111-1111 y") == "x [PAN redacted …1111] y"
    assert redact_text("4111111111111112") == "4111111111111112"  # fails Luhn


def test_levels_are_filtered_at_configure_time() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    structlog.get_logger("t").info("hidden")
    structlog.get_logger("t").warning("shown")
    configure_logging("console", "info")
    assert "hidden" not in out.getvalue() and "shown" in out.getvalue()
