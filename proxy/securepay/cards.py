"""Card checks on the proxy side: Luhn, brand from IIN ranges, expiry, security-code length."""

from __future__ import annotations

import datetime

# (brand, IIN ranges as (low, high) over the first len(low) digits, valid lengths)
BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[int, ...]], ...] = (
    ("amex", (("34", "34"), ("37", "37")), (15,)),
    ("visa", (("4", "4"),), (13, 16, 19)),
    ("mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65")), (16, 19)),
    ("jcb", (("3528", "3589"),), (16, 19)),
    ("diners", (("300", "305"), ("36", "36"), ("38", "39")), (14, 16, 19)),
    ("unionpay", (("62", "62"),), (16, 17, 18, 19)),
    ("maestro", (("50", "50"), ("56", "58"), ("6", "6")), tuple(range(12, 20))),
)
ALL_BRANDS = tuple(b[0] for b in BRANDS)


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = (ord(ch) - 48) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def brand_of(prefix: str) -> str | None:
    """Brand from the leading digits (as soon as enough are known), or None."""
    for name, ranges, _ in BRANDS:
        for low, high in ranges:
            head = prefix[: len(low)]
            if len(head) == len(low) and low <= head <= high:
                return name
    return None


def lengths(brand: str | None) -> tuple[int, ...]:
    for name, _, valid in BRANDS:
        if name == brand:
            return valid
    return tuple(range(12, 20))


def security_code_length(brand: str | None) -> int:
    return 4 if brand == "amex" else 3


def expiry_valid(mmyy: str, today: datetime.date) -> bool:
    if len(mmyy) != 4 or not mmyy.isdigit() or not 1 <= int(mmyy[:2]) <= 12:
        return False
    return (2000 + int(mmyy[2:]), int(mmyy[:2])) >= (today.year, today.month)
