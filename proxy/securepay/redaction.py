"""Find and mask card numbers in text: the one place that decides what looks like a PAN.

Used by the log chain (every rendered line) and the audit log (which refuses PAN-like values).
A candidate is a run of digits grouped by separators people and programs put in card numbers
(up to two spaces or tabs, a dash, a dot, a slash). The run is masked whole when:
- its digits, 13–19 of them, pass Luhn (a card number as written);
- consecutive groups of it hold a Luhn-valid 13–19 digit number (a card number written right
  after another number: ``seq 12 4111 1111 1111 1111``);
- it holds more than 16 digits and any 13–19 digits in a row pass Luhn (a card number glued to
  other digits). Over-masking a long digit run in a log is the price of never printing a card.
A run whose only separator is a single dot is read as a decimal number: each side is checked on
its own, and without the glued rule (a float's 17 significant digits are not a card glued to
digits; a card written as either side still is one).
"""

from __future__ import annotations

import re

from proxy.securepay.cards import luhn_valid

_SEPARATOR = r"(?:[ \t]{1,2}|[-./])"
_CANDIDATE = re.compile(rf"(?<![\d])\d+(?:{_SEPARATOR}\d+)*(?![\d])")
_GROUPS = re.compile(r"\d+")
_PAN_LENGTHS = range(13, 20)
_GLUED_ABOVE = 16  # digits in a run beyond which every window is checked
_ALWAYS_ABOVE = 64  # digits in a run masked without looking: nothing legitimate, and bounded cost


def _pan_in(run: str, *, glued: bool) -> bool:
    groups = _GROUPS.findall(run)
    digits = "".join(groups)
    if len(digits) < _PAN_LENGTHS.start:
        return False
    if len(digits) > _ALWAYS_ABOVE:
        return True
    for first in range(len(groups)):  # consecutive whole groups (the whole run among them)
        joined = ""
        for group in groups[first:]:
            joined += group
            if len(joined) > _PAN_LENGTHS[-1]:
                break
            if len(joined) >= _PAN_LENGTHS.start and luhn_valid(joined):
                return True
    if glued and len(digits) > _GLUED_ABOVE:
        return any(luhn_valid(digits[start:start + size]) for size in _PAN_LENGTHS
                   for start in range(len(digits) - size + 1))
    return False


def _mask(match: re.Match[str]) -> str:
    run = match.group(0)
    if run.count(".") == 1 and _GROUPS.fullmatch(run.replace(".", "", 1)):  # a decimal number
        return ".".join(_masked(side, glued=False) for side in run.split("."))
    return _masked(run)


def _masked(run: str, *, glued: bool = True) -> str:
    if not _pan_in(run, glued=glued):
        return run
    return f"[PAN redacted …{''.join(_GROUPS.findall(run))[-4:]}]"


def redact_text(text: str) -> str:
    """Mask every run of digits in ``text`` that holds a card number (see the module doc)."""
    return _CANDIDATE.sub(_mask, text)


def contains_pan(text: str) -> bool:
    return redact_text(text) != text
