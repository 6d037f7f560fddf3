"""Whose DTMF is masked on a call: which party is the customer, and what each party's media gets.

Fail closed: when nothing tells ToneGuard which party is the customer, every party is treated as
one — no party's DTMF reaches another — because "the offerer" is the customer only on inbound
calls (on an outbound call the contact centre offers and the customer answers). Hints narrow it,
first match wins (README "Whose DTMF is masked"):

1. the call's own ``caller-offerer`` | ``caller-answerer`` | ``caller-both`` | ``caller-none``
   flag on the offer;
2. labels: a party labelled with a customer label (``customer``) is a customer; if no party
   has one but a party carries an agent label (``agent``), the other parties are customers;
3. ``[masking] customer_networks``: a party whose SDP (or SIP source) address lies in one of
   them is a customer;
4. ``[masking] caller`` set to ``offerer`` | ``answerer`` | ``both`` | ``none`` for the node;
5. otherwise (``auto``, the default): every party.

A live ``block DTMF``/``unblock DTMF`` decision for a party wins over this, except while a
secure-pay session of the call is capturing: then the customers' DTMF is masked whatever was
said (and ``unblock DTMF`` on a customer is refused).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.types import Address

NodeCaller = Literal["auto", "offerer", "answerer", "both", "none"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CUSTOMER_LABELS = frozenset({"customer"})
AGENT_LABELS = frozenset({"agent"})


@dataclass(frozen=True)
class CallPolicy:
    """Deployment defaults for masking (config [masking])."""

    always_on: bool = True
    caller: NodeCaller = "auto"
    masking: MaskingPolicy = field(default_factory=MaskingPolicy)
    recording: Address | None = None  # RTP copy of what is sent (masked) to a recorder
    customer_networks: tuple[Network, ...] = ()
    customer_labels: frozenset[str] = CUSTOMER_LABELS
    agent_labels: frozenset[str] = AGENT_LABELS


class PartyView(Protocol):
    """What the decision reads of a party (``proxy.control.calls.Party``)."""

    @property
    def role(self) -> Literal["offerer", "answerer"]: ...

    @property
    def label(self) -> str: ...

    @property
    def addresses(self) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    customers: frozenset[int]  # indexes into the parties given
    reason: str  # which rule decided (for the call's log line; never an address or a digit)


def decide(parties: Sequence[PartyView], call_caller: str, policy: CallPolicy) -> Decision:
    """Which of ``parties`` are customers, and by which rule."""
    everyone = frozenset(range(len(parties)))
    if call_caller:
        return Decision(_by_role(parties, call_caller), f"caller-{call_caller} flag")
    labels = [p.label.lower() for p in parties]
    labelled = frozenset(i for i, label in enumerate(labels) if label in policy.customer_labels)
    if labelled:
        return Decision(labelled, "customer label")
    agents = frozenset(i for i, label in enumerate(labels) if label in policy.agent_labels)
    if agents:
        return Decision(everyone - agents, "agent label")
    if policy.customer_networks:
        inside = frozenset(i for i, p in enumerate(parties)
                           if any(_in_networks(a, policy.customer_networks) for a in p.addresses))
        if inside:
            return Decision(inside, "customer network")
    if policy.caller != "auto":
        return Decision(_by_role(parties, policy.caller), f"node caller={policy.caller}")
    return Decision(everyone, "no hint: every party masked")


def _by_role(parties: Sequence[PartyView], caller: str) -> frozenset[int]:
    if caller == "both":
        return frozenset(range(len(parties)))
    return frozenset(i for i, p in enumerate(parties) if p.role == caller)


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a hostname or garbage in SDP: not evidence of anything
        return False
    return any(ip in net for net in networks)


def party_masking(*, customer: bool, live: MaskingPolicy | None, capturing: bool,
                  policy: CallPolicy) -> MaskingPolicy | None:
    """The policy for media received from one party (None = plain relay, not inspected).

    ``live`` is the party's last ``block DTMF``/``unblock DTMF`` decision (None = never said).
    """
    if capturing and customer:
        base = live or policy.masking
        if base.effective:
            return base
        mode = base.mode if base.mode is not DtmfSecurityMode.OFF else policy.masking.mode
        if mode is DtmfSecurityMode.OFF:
            mode = DtmfSecurityMode.TONE
        return replace(base.with_mode(mode), masked=True)
    if live is not None:
        return live
    if not customer:
        return None
    if policy.always_on:
        return policy.masking
    return replace(policy.masking, masked=False)  # detect, count, don't mask yet
