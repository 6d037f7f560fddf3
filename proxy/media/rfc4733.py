"""RFC 4733 telephone-event payloads (§2.3): one event per packet, 4 bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT_KEYS = "0123456789*#ABCD"  # event codes 0–15


class Rfc4733Error(ValueError):
    """Not a telephone-event payload."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int  # 0–255; 0–15 are the DTMF keys
    end: bool
    volume: int  # 0–63, −dBm0
    duration: int  # in timestamp units

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise Rfc4733Error(f"telephone-event payload is {len(payload)} bytes, need 4")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F),
                           self.duration)

    @property
    def key(self) -> str | None:
        """The DTMF key, or None for other events (flash, tones)."""
        return EVENT_KEYS[self.event] if self.event < 16 else None

    def __repr__(self) -> str:  # digits must not reach logs through a repr
        return (f"TelephoneEvent(event=<hidden>, end={self.end}, volume={self.volume}, "
                f"duration={self.duration})")
