"""SDES keying of one leg: which key a stream receives with and which it advertises and sends.

Apart from the packet path (which only sees :class:`~proxy.media.types.SrtpParams`), so another
keying method (DTLS-SRTP) is another module beside this one.

Keys are per leg and stable across re-negotiation: phones keep the key of the first answer
(baresip does), so a re-offer or re-answer of the same call and tags advertises the key (suite
and tag) already advertised — a re-offer puts the suite the leg uses first, so the phone need
not switch — and only a suite not offered before gets a new key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.control import ng, sdes
from proxy.control.sdp import MediaSection
from proxy.media.types import SRTP_SUITES, SrtpParams


def offered_keys(section: MediaSection, index: int) -> list[sdes.CryptoAttribute]:
    """The supported keys of an SRTP section, best first; an ng error when there is none.

    Also called before a negotiation touches any stream, so an offer or answer that drops its
    crypto is refused with the call left exactly as it was."""
    try:
        theirs = sdes.offered(section.attributes("crypto"))
    except sdes.SdesError as exc:
        raise ng.NgError(f"media {index}: {exc}") from exc
    if not theirs:
        raise ng.NgError(f"media {index}: {section.proto} without a supported a=crypto "
                         f"suite ({', '.join(SRTP_SUITES)})")
    return theirs


@dataclass
class SdesLeg:
    """One stream's SDES state: the keys we advertised to the party it faces, by suite, and
    the suite that party chose (what we send with)."""

    ours: dict[str, sdes.CryptoAttribute] = field(default_factory=dict)
    suite: str = ""

    @property
    def send(self) -> SrtpParams | None:
        key = self.ours.get(self.suite)
        return key.params if key is not None else None

    def accept(self, section: MediaSection, *, offer: bool, index: int) -> SrtpParams:
        """The key the party sends with, from its ``a=crypto`` (its offer or its answer)."""
        # The offerer's preference that we support / the answerer's pick.
        chosen = offered_keys(section, index)[0]
        if offer:
            kept = self.ours.get(chosen.suite)
            # Our answer to this offer: our key for its suite, under the offerer's tag.
            self.ours = {chosen.suite: sdes.CryptoAttribute(chosen.tag, chosen.suite,
                                                            kept.params)
                         if kept is not None else sdes.generate(chosen.suite, chosen.tag)}
        elif chosen.suite not in self.ours:
            raise ng.NgError(f"media {index}: answer chose {chosen.suite}, not offered")
        self.suite = chosen.suite
        return chosen.params

    def advertise(self, out: MediaSection, *, offer: bool, options: frozenset[str]) -> None:
        """Add our ``a=crypto`` line(s) to ``out`` (the SDP for the party this leg faces)."""
        if "off" in options:
            return
        if offer:
            suites = [s for s in SRTP_SUITES if f"no-{s.lower()}" not in options]
            if not suites:
                raise ng.NgError("SDES: every supported suite was excluded")
            if self.suite in suites:  # a re-offer: what the leg uses now comes first, as it was
                suites.remove(self.suite)
                suites.insert(0, self.suite)
            kept_tag = self.ours[self.suite].tag if self.suite in self.ours else None
            tags = iter(t for t in range(1, len(suites) + 2) if t != kept_tag)
            self.ours = {s: self._stable(s, kept_tag if s == self.suite and kept_tag else
                                         next(tags)) for s in suites}
            for key in self.ours.values():
                out.add_attribute("crypto", key.format())
        elif (chosen := self.ours.get(self.suite)) is not None:
            out.add_attribute("crypto", chosen.format())

    def _stable(self, suite: str, tag: int) -> sdes.CryptoAttribute:
        kept = self.ours.get(suite)
        if kept is None:
            return sdes.generate(suite, tag)
        return sdes.CryptoAttribute(tag, suite, kept.params)
