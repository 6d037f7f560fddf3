"""Gateway-side card checks (the gateway trusts nothing the proxy validated)."""

from __future__ import annotations

import datetime

BRANDS = (  # (brand, IIN prefixes, lengths)
    ("amex", ("34", "37"), (15,)),
    ("visa", ("4",), (13, 16, 19)),
    ("mastercard", tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)),
     (16,)),
    ("discover", ("6011", "65", "644", "645", "646", "647", "648", "649"), (16, 19)),
    ("jcb", tuple(str(p) for p in range(3528, 3590)), (16, 19)),
    ("diners", ("300", "301", "302", "303", "304", "305", "36", "38"), (14, 16)),
)


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def brand(pan: str) -> str | None:
    for name, prefixes, lengths in BRANDS:
        if len(pan) in lengths and pan.startswith(prefixes):
            return name
    return None


def expiry_valid(mmyy: str, today: datetime.date | None = None) -> bool:
    if len(mmyy) != 4 or not mmyy.isdigit() or not 1 <= int(mmyy[:2]) <= 12:
        return False
    today = today or datetime.date.today()
    year, month = 2000 + int(mmyy[2:]), int(mmyy[:2])
    return (year, month) >= (today.year, today.month)
