"""`toneguard serve`: the ng control socket, the media engine and (when configured) the API.

Services start in order and stop in reverse on SIGTERM/SIGINT: the ng socket stops taking
commands first, then calls are released, then the media engine stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import structlog
import typer

from proxy.calls import CallPolicy, CallRegistry, DigitSink
from proxy.config import Config, ConfigError, load_config, parse_hostport
from proxy.logging import configure_logging
from proxy.masking import MaskingPipeline
from proxy.masking_policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.engine import LocalMediaEngine
from proxy.media.pipeline import AudioPipeline
from proxy.ng_server import NgServer

log = structlog.get_logger("toneguard.serve")
IDLE_REAP_SECONDS = 5.0


def masking_policy(config: Config) -> CallPolicy:
    m = config.masking
    policy = MaskingPolicy(mode=DtmfSecurityMode.parse(m.mode),
                           tone_frequency_hz=m.tone_frequency_hz, volume_dbm0=m.volume_dbm0)
    return CallPolicy(always_on=m.always_on, caller=m.caller,
                      masking=policy.with_mode(policy.mode),
                      recording=parse_hostport(m.recording_tap) if m.recording_tap else None)


def default_pipeline_factory(config: Config) -> Callable[[], AudioPipeline]:
    lookahead = config.masking.lookahead_ms
    return lambda: MaskingPipeline(lookahead_ms=lookahead)


@dataclass
class Node:
    """One running ToneGuard node: what the CLI, the demo and tests start and stop."""

    config: Config
    engine: LocalMediaEngine
    registry: CallRegistry
    ng: NgServer
    ng_address: tuple[str, int] = ("", 0)
    extra_stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _reaper: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: Config, *, on_digit: DigitSink | None = None,
                    pipeline_factory: Callable[[], AudioPipeline] | None = None) -> Node:
        media = config.media
        engine = LocalMediaEngine(
            media.address, media.port_min, media.port_max,
            pipeline_factory=pipeline_factory or default_pipeline_factory(config),
            tick_ms=media.tick_ms, idle_timeout=media.idle_timeout_seconds)
        await engine.start()
        registry = CallRegistry(engine, address=media.address,
                                advertised_address=media.advertised_address,
                                policy=masking_policy(config), on_digit=on_digit)
        server = NgServer(registry.handle, cache_ttl=config.ng.cookie_cache_seconds)
        host, port = parse_hostport(config.ng.listen)
        node = cls(config, engine, registry, server)
        try:
            node.ng_address = await server.start(host, port)
        except OSError as exc:
            await engine.stop()
            raise ConfigError(
                f"ng.listen {config.ng.listen}: cannot bind: {exc.strerror}") from None
        node._reaper = asyncio.create_task(node._reap(), name="idle-reaper")
        log.info("toneguard node started", ng=f"{node.ng_address[0]}:{node.ng_address[1]}",
                 media=f"{media.address}:{media.port_min}-{media.port_max}",
                 masking=config.masking.mode, always_on=config.masking.always_on)
        return node

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(IDLE_REAP_SECONDS)
            await self.registry.reap_idle()

    async def stop(self) -> None:
        for stop in reversed(self.extra_stops):
            await stop()
        await self.ng.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.registry.close()
        await self.engine.stop()
        log.info("toneguard node stopped")


async def run_until_signalled(node_factory: Callable[[], Awaitable[Node]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = await node_factory()
    try:
        await stop.wait()
    finally:
        await node.stop()


def serve_command(
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML configuration file (see config/toneguard.toml).")] = None,
    ng_listen: Annotated[str | None, typer.Option(
        help="ng control socket HOST:PORT (overrides ng.listen).")] = None,
    media_address: Annotated[str | None, typer.Option(
        help="Media address (overrides media.address).")] = None,
    port_range: Annotated[str | None, typer.Option(
        help="Media ports MIN-MAX (overrides media.port_min/port_max).")] = None,
    log_format: Annotated[str | None, typer.Option(help="console|json")] = None,
) -> int:
    """Run the media relay: ng control socket (for Kamailio's rtpengine module) and media."""
    overrides: dict[str, dict[str, object]] = {}
    if ng_listen:
        overrides.setdefault("ng", {})["listen"] = ng_listen
    if media_address:
        overrides.setdefault("media", {})["address"] = media_address
    if port_range:
        low, _, high = port_range.partition("-")
        if not (low.isdigit() and high.isdigit()):
            print(f"toneguard serve: --port-range: expected MIN-MAX, got {port_range!r}")
            return 2
        overrides.setdefault("media", {}).update(port_min=int(low), port_max=int(high))
    if log_format:
        overrides.setdefault("logging", {})["format"] = log_format
    try:
        config = load_config(config_file, overrides)
    except ConfigError as exc:
        print(f"toneguard serve: {exc}")
        return 2
    configure_logging(config.logging.format, config.logging.level)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(run_until_signalled(lambda: Node.start(config)))
    except ConfigError as exc:
        print(f"toneguard serve: {exc}")
        return 2
    return 0
