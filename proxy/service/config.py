"""Configuration: embedded defaults ← TOML file ← command-line overrides, validated by pydantic.

Every error names the file and the dotted key (``toneguard.toml: media.port_min: ...``); unknown
keys are errors, not silently ignored, because a misspelt security setting must not fall back
to a default unnoticed. The defaults are ``proxy/service/defaults/toneguard.toml`` (shipped in the
wheel); ``config/toneguard.toml`` in the repository is the same file, documented.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.media.policy import DtmfSecurityMode


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if ":" in host and not text.startswith("["):
        raise ValueError(f"an IPv6 address needs brackets: [ADDR]:PORT, got {text!r}")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (or [IPv6]:PORT), got {text!r}")
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_hostport(value: str) -> str:
    parse_hostport(value)
    return value


HostPort = Annotated[str, AfterValidator(_valid_hostport)]

# What may go in a CSP source expression and a SIP URI host: no spaces, quotes, ';' or ','
# (which would add directives or sources to the Content-Security-Policy header).
_WS_URL = re.compile(r"^wss?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(/[A-Za-z0-9._~/-]*)?$")
_SIP_DOMAIN = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def _valid_ws_url(value: str) -> str:
    if value and not _WS_URL.match(value):
        raise ValueError(f"expected ws://HOST[:PORT][/PATH] or wss://..., got {value!r}")
    return value


def _valid_sip_domain(value: str) -> str:
    if value and not _SIP_DOMAIN.match(value):
        raise ValueError(f"expected a host name or IPv4 address, got {value!r}")
    return value


class NgConfig(_Section):
    listen: HostPort = "127.0.0.1:2223"
    cookie_cache_seconds: float = Field(60.0, gt=0)
    cookie_cache_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)  # replies kept, in all
    max_media_per_offer: int = Field(8, ge=1, le=64)  # m= sections one offer may open
    max_parties_per_call: int = Field(4, ge=2, le=64)  # tags one call may have


class MediaConfig(_Section):
    address: str = "127.0.0.1"
    advertised_address: str = ""
    port_min: int = Field(30000, ge=1024, le=65534)
    port_max: int = Field(40000, ge=1025, le=65535)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    tick_ms: int = Field(20, ge=10, le=60)
    workers: int = Field(1, ge=0, le=64)
    # Latching (proxy/media/engine.py): a stream latches only onto a source whose IP is the
    # SDP's; learn_any_source lets any source latch within the learning window (NAT'd peers
    # whose SDP shows a private address) — the weaker, rtpengine-like setting.
    learn_any_source: bool = False
    learning_window_seconds: float = Field(5.0, gt=0, le=300)
    # WebRTC legs: the DTLS-SRTP certificate (PEM files); both empty = generated at start.
    dtls_certificate: str = ""
    dtls_private_key: str = ""

    @field_validator("port_min")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be an even integer 1024..65534, got {v}")
        return v

    @model_validator(mode="after")
    def _range(self) -> MediaConfig:
        if self.port_max - self.port_min < 4:
            raise ValueError("port_max must be at least port_min + 4 (two port pairs per call)")
        if bool(self.dtls_certificate) != bool(self.dtls_private_key):
            raise ValueError("dtls_certificate and dtls_private_key go together (or neither)")
        return self


class MaskingConfig(_Section):
    always_on: bool = True
    mode: str = "tone"
    # Whose DTMF is masked when the call itself gives no hint (proxy/control/customer.py):
    # "auto" = every party (fail closed), or offerer|answerer|both|none for the whole node.
    caller: Literal["auto", "offerer", "answerer", "both", "none"] = "auto"
    customer_networks: list[str] = []  # a party whose SDP/SIP address is inside is the customer
    customer_labels: list[str] = ["customer"]  # ng label/from-label/to-label naming the customer
    agent_labels: list[str] = ["agent"]  # ... naming the contact-centre side
    tone_frequency_hz: float = Field(400.0, ge=50, le=3900)
    volume_dbm0: float = Field(-20.0, ge=-63, le=0)
    lookahead_ms: int = Field(26, ge=0, le=200)
    recording_tap: str = ""

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return DtmfSecurityMode.parse(v).value

    @field_validator("recording_tap")
    @classmethod
    def _tap(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v

    @field_validator("customer_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not a network (e.g. 198.51.100.0/24)") from exc
        return v


class ApiConfig(_Section):
    listen: HostPort = "127.0.0.1:8080"
    agents_file: str = ""
    audit_file: str = ""
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    public_metrics: bool = False
    auth_failures_per_source: int = Field(10, ge=1, le=10_000)
    auth_failure_window_seconds: float = Field(60.0, gt=0)
    key_lockout_failures: int = Field(5, ge=1, le=1000)
    key_lockout_seconds: float = Field(300.0, ge=0)
    # The agent panel's softphone (README "Agents in the browser"): Kamailio's SIP WebSocket
    # and the SIP domain agents register in ("" = the URL's host). Empty URL: no softphone.
    softphone_ws_url: Annotated[str, AfterValidator(_valid_ws_url)] = ""
    softphone_domain: Annotated[str, AfterValidator(_valid_sip_domain)] = ""
    # A file holding the secret Kamailio shares (its SOFTPHONE_SECRET): the API then hands each
    # agent a SIP password for its own address only, valid softphone_credential_hours.
    softphone_secret_file: str = ""
    softphone_credential_hours: float = Field(12.0, gt=0, le=24 * 7)


class SecurePayConfig(_Section):
    inter_digit_timeout_seconds: float = Field(10.0, gt=0)
    field_timeout_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    accepted_brands: tuple[str, ...] = ("visa", "mastercard", "amex", "discover", "jcb",
                                        "diners", "unionpay", "maestro")
    require_postal_code: bool = False
    trigger_sequence: str = Field("", pattern=r"^[0-9*#]{0,8}$")


class GatewayConfig(_Section):
    url: str = ""  # "" = no gateway: sessions capture but cannot submit
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> GatewayConfig:
        if self.url and not (self.ca_file and self.cert_file and self.key_file):
            raise ValueError("url needs ca_file, cert_file and key_file (mutual TLS)")
        if self.url and not self.url.startswith("https://"):
            raise ValueError("url must be https:// (card data only travels over TLS)")
        return self


class StoreConfig(_Section):
    """Shared state (proxy/store): "" = this node alone, in memory, as before."""

    url: str = ""  # redis://HOST:PORT/DB (or rediss://, unix://)
    key_file: str = ""  # base64 AES key (16/24/32 bytes) the node set shares: seals SRTP keys
    node_id: str = ""  # this node's name in the store ("" = its ng listen address)
    api_url: str = ""  # where other nodes reach this node's API ("" = http://<api.listen>)
    queue_limit: int = Field(10_000, ge=1, le=1_000_000)  # changed calls waiting to be written
    # Same-address takeover (proxy/store/takeover.py): adopt these nodes' calls when their
    # heartbeat expires. Every Redis node heartbeats; it counts as dead `heartbeat_ttl_seconds`
    # after its last beat (a takeover's media gap is about that long).
    takeover: list[str] = Field(default_factory=list)
    heartbeat_seconds: float = Field(1.0, gt=0, le=60)
    heartbeat_ttl_seconds: float = Field(3.0, gt=0, le=600)
    # A node whose heartbeat has been gone this long (no takeover, never back): every node may
    # delete its calls' records (proxy/store/orphans.py). Keep it above media.idle_timeout_seconds
    # and the longest restart you expect: those records are what a restart restores.
    orphan_seconds: float = Field(300.0, gt=0, le=7 * 24 * 3600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://", "memory://")):
            raise ValueError(f"expected redis://HOST:PORT/DB, got {v!r}")
        return v

    @model_validator(mode="after")
    def _key(self) -> StoreConfig:
        if self.url and not self.key_file:
            raise ValueError("url needs key_file (SRTP keys are written sealed with it)")
        if self.heartbeat_ttl_seconds <= self.heartbeat_seconds:
            raise ValueError("heartbeat_ttl_seconds must be above heartbeat_seconds (a node "
                             "beating on time would be taken for dead)")
        if self.orphan_seconds <= self.heartbeat_ttl_seconds:
            raise ValueError("orphan_seconds must be above heartbeat_ttl_seconds (a dead "
                             "node's calls would be reaped before a taker could adopt them)")
        if self.takeover and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("takeover needs a Redis url (the nodes' heartbeats are there)")
        return self


class ServiceConfig(_Section):
    # SIGTERM drains: new offers are refused the way Kamailio's rtpengine module moves on to
    # another node, live calls run until they end or for this long, then the node stops.
    # 0 = stop at once (live calls' media ends with the process).
    drain_seconds: float = Field(900.0, ge=0, le=7 * 24 * 3600)


class LoggingConfig(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    ng: NgConfig = NgConfig()
    media: MediaConfig = MediaConfig()
    masking: MaskingConfig = MaskingConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    securepay: SecurePayConfig = SecurePayConfig()
    gateway: GatewayConfig = GatewayConfig()
    store: StoreConfig = StoreConfig()
    service: ServiceConfig = ServiceConfig()


def default_text() -> str:
    return (Path(__file__).parent / "defaults" / "toneguard.toml").read_text("utf-8")


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _blame(loc: tuple[str, ...], flags: Mapping[str, str], source: str) -> str:
    """Who set the value at ``loc``: the command-line flags that touched it, else the file.

    A section-level check (``media``: port_max vs port_min) is blamed on a flag that set any
    key inside that section, since the flag is what the user just typed.
    """
    dotted = ".".join(loc)
    named = [flag for key, flag in flags.items()
             if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + ".")]
    return ", ".join(dict.fromkeys(named)) if named else source


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None,
                flags: Mapping[str, str] | None = None) -> Config:
    """Defaults, then ``path`` (if given), then ``overrides`` (``{"media": {"port_min": ...}}``).

    ``flags`` maps the dotted keys an override sets to the command-line flag that set them
    (``{"media.port_min": "--port-range"}``), so that an error names the flag, not the file.
    """
    data = tomllib.loads(default_text())
    source = "defaults"
    if path is not None:
        source = path.name
        try:
            data = _merge(data, tomllib.loads(path.read_text("utf-8")))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            key = ".".join(loc)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{_blame(loc, flags or {}, source)}: {key}: {message}")
        raise ConfigError("; ".join(problems)) from exc
