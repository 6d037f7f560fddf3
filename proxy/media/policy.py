"""What happens to DTMF a party sends: the rtpengine ``DTMF-security`` modes, as one value.

Shared by the ng control plane (which sets it per call/party from ``block DTMF``,
``DTMF-security`` and config) and the media plane (which applies it to audio and RFC 4733
events). Pure data; no card digits are ever stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class DtmfSecurityMode(StrEnum):
    """rtpengine's ``DTMF-security`` values (NG-PROTOCOL.md), plus their meaning here."""

    DROP = "drop"  # RFC 4733 events dropped; in-band tones replaced by silence
    SILENCE = "silence"  # tones replaced by silence; events dropped
    TONE = "tone"  # tones replaced by a flat monotone off the DTMF frequencies (default)
    ZERO = "zero"  # every key replaced by key 0 (in-band) / event code 0
    RANDOM = "random"  # every key replaced by a random key
    DTMF = "DTMF"  # every key replaced by one fixed key (``digit``)
    OFF = "off"  # not masked: digits pass (only for controls and for parties not protected)

    @classmethod
    def parse(cls, text: str) -> DtmfSecurityMode:
        """Parse a mode name as Kamailio sends it (case-insensitive; ``dtmf`` == ``DTMF``)."""
        for mode in cls:
            if mode.value.lower() == text.strip().lower():
                return mode
        names = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown DTMF-security mode {text!r}: expected one of {names}")


@dataclass(frozen=True, slots=True)
class MaskingPolicy:
    """How DTMF *received from* one party is treated before it reaches the other party.

    ``masked`` False means the party's audio is relayed untouched (still detected and counted
    when ``detect`` is True).
    """

    masked: bool = True
    mode: DtmfSecurityMode = DtmfSecurityMode.TONE
    tone_frequency_hz: float = 400.0  # ``frequency``: rtpengine's default 400 Hz, off DTMF
    volume_dbm0: float = -20.0  # ``volume``: level of the replacement monotone / digit
    digit: str = "0"  # ``digit``/``code``: replacement key for mode DTMF
    detect: bool = True  # run the DTMF receiver on this party's audio at all

    def with_mode(self, mode: DtmfSecurityMode) -> MaskingPolicy:
        """This policy with another mode (``off`` also clears ``masked``)."""
        return replace(self, mode=mode, masked=mode is not DtmfSecurityMode.OFF)

    @property
    def effective(self) -> bool:
        """True if DTMF from this party must not reach the other side."""
        return self.masked and self.mode is not DtmfSecurityMode.OFF


UNMASKED = MaskingPolicy(masked=False, mode=DtmfSecurityMode.OFF)
