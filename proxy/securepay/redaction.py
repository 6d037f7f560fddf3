"""Find and mask card numbers in text: the one place that decides what looks like a PAN.

Used by the log chain (every rendered line) and the audit log (which refuses PAN-like values).
A candidate is 13–19 digits, optionally grouped by single spaces or dashes, that passes Luhn.
"""

from __future__ import annotations

import re

from proxy.securepay.cards import luhn_valid

_CANDIDATE = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")


def _mask(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return match.group(0)
    return f"[PAN redacted …{digits[-4:]}]"


def redact_text(text: str) -> str:
    """Mask every Luhn-valid 13–19 digit run (card number) in ``text``."""
    return _CANDIDATE.sub(_mask, text)


def contains_pan(text: str) -> bool:
    return redact_text(text) != text
