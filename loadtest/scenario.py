"""Load-test scenario files (TOML): what ``toneguard loadtest`` plays, validated by pydantic.

Every error names the file and the dotted key (``smoke.toml: cards.tone_ms: ...``); unknown keys
are errors, because a misspelt setting silently falling back to its default would make a run
measure something else than its file says. Examples with every key: ``config/loadtest/``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# A card entry: number #, expiry #, security code # (the session's field order).
CARD_FIELDS = 3
FIELD_PAUSE_MS = 300  # caller's pause before each field, as people read the next number


Brand = Literal["visa", "mastercard", "amex"]
BRANDS: tuple[Brand, ...] = ("visa", "mastercard", "amex")
TargetKind = Literal["toneguard", "rtpengine"]
TARGETS: tuple[TargetKind, ...] = ("toneguard", "rtpengine")


class ScenarioError(ValueError):
    """The scenario file cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallsSection(_Section):
    """How many calls, how many at once, how they start and how long each lasts."""

    total: int = Field(20, ge=1, le=100_000)
    concurrency: int = Field(20, ge=1, le=5_000)
    ramp_seconds: float = Field(2.0, ge=0, le=3600)  # to reach `concurrency` from 0
    hold_seconds: float = Field(10.0, ge=2, le=3600)  # media time of each call
    seed: int = 1


class MediaSection(_Section):
    codec: Literal["PCMU", "PCMA"] = "PCMU"
    # Per leg: what the caller's phone and the agent's phone speak to the relay.
    caller_transport: Literal["RTP", "SDES-SRTP"] = "RTP"
    agent_transport: Literal["RTP", "SDES-SRTP"] = "RTP"
    caller_audio: Literal["speech", "noise"] = "speech"  # speech: espeak-ng, rendered once
    audio_dbm0: float = Field(-20.0, ge=-60, le=-3)  # caller's speech/noise level


class CardsSection(_Section):
    """How the caller keys the card (every call keys one; see payments.share)."""

    profile: Literal["inband", "rfc4733", "both"] = "inband"
    low_dbm0: float = Field(-10.0, ge=-40, le=0)  # level of the low-group tone
    # High group relative to low (dB): positive = high louder (Q.24: accept up to +4 / -8).
    twist_db: float = Field(0.0, ge=-12, le=8)
    tone_ms: int = Field(80, ge=20, le=1000)
    gap_ms: int = Field(80, ge=20, le=1000)
    start_seconds: float = Field(1.5, ge=0.5, le=600)  # into the call, after some speech
    brands: list[Brand] = Field(default_factory=lambda: list(BRANDS), min_length=1)


class PaymentsSection(_Section):
    share: float = Field(0.5, ge=0, le=1)  # of calls that take a payment through the API
    timeout_seconds: float = Field(20.0, gt=0, le=600)  # after the last key, for the token


class ImpairmentsSection(_Section):
    """Applied by the generator to what it sends (both directions), seeded."""

    loss: float = Field(0.0, ge=0, le=0.5)  # share of packets not sent
    jitter_ms: float = Field(0.0, ge=0, le=200)  # extra send delay, uniform 0..jitter_ms
    reorder: float = Field(0.0, ge=0, le=0.5)  # share of packets swapped with the next


class ChecksSection(_Section):
    """What a run is judged on (and what --find-capacity ramps against)."""

    leak_sample: float = Field(1.0, ge=0, le=1)  # share of calls decoded for leaks
    # What counts as a leak: "energy" = any DTMF tone energy above -45 dBm0 reaching the agent
    # around a key (the strict default, proxy/demo/leak.py), a digit decoded or an RFC 4733
    # event passed on; "decoded" = only a digit spandsp or multimon-ng decodes, or an event.
    leak: Literal["energy", "decoded"] = "energy"
    max_loss: float = Field(0.001, ge=0, le=1)
    # Added one-way latency, either direction; ToneGuard's masked direction carries its
    # look-ahead (26 ms) and tick alignment: about 60 ms at p50 on loopback.
    max_p99_ms: float = Field(120.0, gt=0)


class CapacitySection(_Section):
    """--find-capacity: concurrency levels tried in turn, each for `seconds` of hold."""

    start: int = Field(50, ge=1)
    step: int = Field(50, ge=1)
    max: int = Field(1000, ge=1)
    seconds: float = Field(10.0, ge=4)
    targets: list[TargetKind] = Field(default_factory=lambda: list(TARGETS), min_length=1)


class TargetSection(_Section):
    """What the tool starts when it starts the target itself (ignored with --ng)."""

    # Media worker processes of each ToneGuard node (its media.workers; 0 = one per core) and
    # rtpengine's --num-threads. Unset: each relay's own default (ToneGuard one worker,
    # rtpengine one thread per core but at least 4): say which when comparing.
    workers: int | None = Field(None, ge=0, le=64)
    # ToneGuard nodes sharing one redis-server ([store]), calls spread round robin over their
    # ng sockets as Kamailio's rtpengine set would; several counts = one run each, compared
    # (e.g. [1, 2]: one node against two). rtpengine always runs as one.
    nodes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=4)

    @field_validator("nodes")
    @classmethod
    def _node_counts(cls, nodes: list[int]) -> list[int]:
        if any(not 1 <= n <= 8 for n in nodes):
            raise ValueError("each node count must be 1 to 8")
        if len(set(nodes)) != len(nodes):
            raise ValueError("a node count is listed twice")
        return nodes


class Scenario(_Section):
    name: str = Field("scenario", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = ""
    calls: CallsSection = CallsSection()
    media: MediaSection = MediaSection()
    cards: CardsSection = CardsSection()
    payments: PaymentsSection = PaymentsSection()
    impairments: ImpairmentsSection = ImpairmentsSection()
    checks: ChecksSection = ChecksSection()
    capacity: CapacitySection = CapacitySection()
    target: TargetSection = TargetSection()

    @model_validator(mode="after")
    def _keying_fits(self) -> Scenario:
        if self.calls.concurrency > self.calls.total:
            raise ValueError("calls.concurrency is larger than calls.total")
        if self.capacity.max < self.capacity.start:
            raise ValueError("capacity.max is below capacity.start")
        end = self.cards.start_seconds + keying_seconds(self.cards, longest_card=True) + 1.0
        if end > self.calls.hold_seconds:
            raise ValueError(f"calls.hold_seconds: card entry ends {end:.1f} s into the call "
                             "(cards.start_seconds + keys + 1 s); hold the calls longer or "
                             "key faster (cards.tone_ms, cards.gap_ms)")
        return self


def keying_seconds(cards: CardsSection, *, longest_card: bool = True) -> float:
    """How long keying a card lasts: 16 digits + 4 + 4 (amex code) and a # after each field."""
    keys = 16 + 4 + 4 + CARD_FIELDS if longest_card else 0
    return (keys * (cards.tone_ms + cards.gap_ms) + CARD_FIELDS * FIELD_PAUSE_MS) / 1000


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError names the file and the key."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from exc
    return parse_scenario(data, path.name)


def parse_scenario(data: dict[str, object], source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            # Checks across keys name their keys in the message itself.
            problems.append(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        raise ScenarioError("; ".join(problems)) from exc
