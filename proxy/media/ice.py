"""ICE-lite for one stream (RFC 8445 §2.5): answer the browser's STUN binding requests.

ToneGuard offers one host candidate on its media address and never sends checks of its own:
the browser (a full agent, controlling) checks that candidate, and each request that
authenticates (USERNAME ``our-ufrag:their-ufrag``, MESSAGE-INTEGRITY keyed with our password,
FINGERPRINT, RFC 8489 §9.1) is answered with XOR-MAPPED-ADDRESS. Those authenticated checks
are what latches the stream: media and DTLS are accepted only from the address a check came
from, and consent to send (RFC 7675) lasts :data:`CONSENT_TIMEOUT` after the last one.

What fails authentication is dropped without an answer: a stranger gets nothing from us, not
even a 401 (nothing to reflect, nothing to learn). Messages are parsed and built with
``aioice.stun`` (its attribute table), this module only decides.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from proxy.media.types import Address, IceParams

CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: consent expires 30 s after the last response
MAX_STUN = 548  # RFC 8489 §6.1 (a check is ~100 bytes): larger ones are not checks


class Verdict(enum.Enum):
    """What a STUN datagram meant to the stream."""

    CHECK = "check"  # an authenticated binding request: answered, consent refreshed
    NOMINATED = "nominated"  # the same, with USE-CANDIDATE: the browser chose this path
    REFUSED = "refused"  # malformed, unauthenticated, not a request: dropped, counted


@dataclass(frozen=True, slots=True)
class StunResult:
    verdict: Verdict
    response: bytes = b""  # to send back to the source (empty when refused)
    reason: str = ""  # why refused (a log field; never a credential)


class IceLite:
    """The responder side of one stream's ICE: checks in, answers out, consent kept."""

    def __init__(self, params: IceParams, clock: Callable[[], float]) -> None:
        self.params = params
        self._clock = clock
        self._key = params.local_pwd.encode()
        self._consent: dict[Address, float] = {}  # source → last authenticated check

    def handle(self, data: bytes, source: Address) -> StunResult:
        # Imported at the first STUN message, not with the media plane: aioice brings its ICE
        # agent, mDNS and dnspython (~0.1 s of a restart's CPU before the first packet), and
        # most nodes never see a WebRTC leg. Later calls find it in sys.modules.
        from aioice import stun

        if len(data) > MAX_STUN:
            return StunResult(Verdict.REFUSED, reason=f"{len(data)}-byte STUN message")
        try:
            message = stun.parse_message(data)
        except (ValueError, KeyError, IndexError, struct.error) as exc:
            # Bad length or FINGERPRINT, or an attribute too short for its type (aioice's
            # unpackers raise struct.error: found by the datagram fuzzer).
            return StunResult(Verdict.REFUSED, reason=f"malformed STUN: {exc}")
        if (message.message_method != stun.Method.BINDING
                or message.message_class != stun.Class.REQUEST):
            return StunResult(Verdict.REFUSED, reason="not a binding request")
        if "FINGERPRINT" not in message.attributes:  # RFC 8445 §7.3: checks carry one
            return StunResult(Verdict.REFUSED, reason="no FINGERPRINT")
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str) or not self._username_ok(username):
            return StunResult(Verdict.REFUSED, reason="wrong USERNAME")
        if not message.check_message_integrity(self._key):
            return StunResult(Verdict.REFUSED, reason="MESSAGE-INTEGRITY does not verify")
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=message.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = source
        response.add_message_integrity(self._key)  # adds FINGERPRINT too
        self._consent[source] = self._clock()
        verdict = Verdict.NOMINATED if "USE-CANDIDATE" in message.attributes else Verdict.CHECK
        return StunResult(verdict, bytes(response))

    def _username_ok(self, username: str) -> bool:
        ours, sep, theirs = username.partition(":")
        if not sep or ours != self.params.local_ufrag:
            return False
        return not self.params.remote_ufrag or theirs == self.params.remote_ufrag

    def assume_consent(self, source: Address) -> None:
        """A restored leg's latched candidate, consented as of now: the browser's checks
        go on every few seconds and refresh it; if they stopped, it lapses as usual."""
        self._consent[source] = self._clock()

    def consented(self, destination: Address) -> bool:
        """Whether we may still send to ``destination`` (RFC 7675): a check from it came in
        within :data:`CONSENT_TIMEOUT`."""
        last = self._consent.get(destination)
        return last is not None and self._clock() - last < CONSENT_TIMEOUT

    def forget_stale(self) -> None:
        """Drop sources whose consent lapsed (bounded memory under a flood of checks)."""
        now = self._clock()
        self._consent = {a: t for a, t in self._consent.items() if now - t < CONSENT_TIMEOUT}
