"""What the masking path can inspect: each payload type of a stream sorted into a kind, once.

SDP encoding names are case-insensitive (RFC 4566 §6: "PCMU", "pcmu" and "Pcmu" are one codec;
RFC 3551's table spells them upper case, RFC 4733 spells ``telephone-event`` lower case), and
payload types above 95 are dynamic: a stream's kinds come from its SDP (``StreamConfig.codecs``,
PT -> name as the SDP spelled it), never from a fixed number. The static table in the SDP parser
already put PT 0 / 8 into ``codecs`` when the m= line listed them; a PT the SDP did not list at
all has no kind here and is :data:`UNINSPECTABLE`.

Built once per configuration (a dict lookup per packet on the hot path), shared by the engine
(which drops what a masked stream cannot have inspected) and the masking pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class PayloadKind(IntEnum):
    UNINSPECTABLE = 0  # an unknown codec or payload type: must not reach a masked stream's peer
    ULAW = 1  # PCMU: decoded, inspected, masked
    ALAW = 2  # PCMA: decoded, inspected, masked
    EVENT = 3  # telephone-event (RFC 4733): read for digits, never forwarded while masked
    CN = 4  # comfort noise (RFC 3389): carries a level (and optional spectrum), no audio


UNINSPECTABLE = PayloadKind.UNINSPECTABLE

# Keys are casefolded encoding names.
_KINDS = {
    "pcmu": PayloadKind.ULAW,
    "pcma": PayloadKind.ALAW,
    "telephone-event": PayloadKind.EVENT,
    "cn": PayloadKind.CN,
}

LAW_OF_KIND = {PayloadKind.ULAW: "ulaw", PayloadKind.ALAW: "alaw"}


def kind_of(name: str) -> PayloadKind:
    """The kind of one SDP encoding name, in any letter case."""
    return _KINDS.get(name.strip().casefold(), UNINSPECTABLE)


def payload_kinds(codecs: Mapping[int, str]) -> dict[int, PayloadKind]:
    """PT -> kind for every payload type the SDP named; absent PTs are uninspectable."""
    return {pt: kind_of(name) for pt, name in codecs.items() if 0 <= pt <= 127}
