"""Structured logging (structlog) with card numbers redacted before anything is rendered.

The redaction processor runs right after the context is merged, so a PAN that reaches a log call
by accident — in the message, a keyword, an exception text, a nested structure, with spaces or
dashes — is masked before any renderer or handler sees it. Standard-library logging (uvicorn,
asyncio) is routed through the same chain.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from proxy.securepay.redaction import redact_text


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return type(value)(_redact(v, depth + 1) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return redact_text(str(value))
    return value


def redact_card_numbers(logger: Any, method: str,
                        event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: mask card numbers anywhere in the event."""
    exc_info = event_dict.pop("exc_info", None)
    out = {k: _redact(v) for k, v in event_dict.items()}
    if exc_info:
        # Render the traceback now, redacted: a PAN in an exception message must not survive.
        info = sys.exc_info() if exc_info is True else exc_info
        if isinstance(info, BaseException):
            info = (type(info), info, info.__traceback__)
        if isinstance(info, tuple) and info[0] is not None:
            import traceback

            out["exception"] = redact_text("".join(traceback.format_exception(*info)))
    return out


def _drop_color_message(logger: Any, method: str,
                        event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    return event_dict


def configure_logging(format: str = "console", level: str = "info",
                      stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for the process."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        redact_card_numbers,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if format == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared,
                           structlog.stdlib.ExtraAdder(), _drop_color_message],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
