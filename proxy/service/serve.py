"""`toneguard serve`: the ng control socket, the media engine and (when configured) the API.

Services start in order and stop in reverse: the ng socket stops taking commands first, then
calls are released, then the media engine stops.

SIGTERM drains first (``service.drain_seconds``): offers for new calls are refused the way
Kamailio's rtpengine module moves on to the next node of its set, while everything for live
calls (answers, re-offers, block DTMF, deletes, pings, the API and payments) goes on; the node
stops when the last call has gone or at the limit. SIGINT, or a second SIGTERM, stops at once.
What a draining node answers, and why: :mod:`proxy.service.drain`.

Start-up order, and why: after a crash the node's live calls are silent until it relays again,
so what the media plane and the store need comes first — the media engine (its worker processes
spawn while this process goes on), then the calls restored from the store (ports bound, masking
configured before the parties are linked), then the ng socket (Kamailio's next command for a
restored call finds it). The API stack (FastAPI, pydantic models, uvicorn, the metrics
exporter, the cluster router: about half of the start-up imports) is imported only after
that, in a thread while the event loop already relays, and the API starts last. Keep its
imports out of this module's top level.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import ipaddress
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import structlog
import typer

from proxy.control import ng
from proxy.control.calls import (
    Call,
    CallLimits,
    CallPolicy,
    CallRegistry,
    DigitSink,
    LatchingDefaults,
)
from proxy.control.ng_server import NgServer
from proxy.control.requests import NegotiateRequest, parse_request
from proxy.media.dtls import DtlsError, NodeCertificate
from proxy.media.engine import LocalMediaEngine
from proxy.media.latency import NG_BUCKETS, Histogram, Recorder
from proxy.media.pipeline import AudioPipeline
from proxy.media.policy import DtmfSecurityMode, MaskingPolicy
from proxy.media.runtime import (
    freeze_startup_objects,
    media_file_table,
    raise_open_file_limit,
    reserve_file_table,
)
from proxy.media.types import DigitEvent, MediaEngine, MediaTotals
from proxy.media.workers import WorkerPoolEngine
from proxy.securepay.audit import AuditLog
from proxy.securepay.manager import PaymentManager
from proxy.securepay.session import CaptureSettings
from proxy.service.config import Config, ConfigError, load_config, parse_hostport
from proxy.service.drain import NG_COMMANDS, command_name, refuse_new_call, starts_a_call
from proxy.service.logging import configure_logging

if TYPE_CHECKING:  # imported when used: see the module docstring
    import uvicorn

    from proxy.api.auth import AgentDirectory
    from proxy.securepay.gateway_client import GatewayClient
    from proxy.service.metrics import Readings
    from proxy.store.forward import ClusterRouter
    from proxy.store.node import NodeState
    from proxy.store.takeover import Heartbeat, NgRelay, TakeoverWatcher

log = structlog.get_logger("toneguard.serve")
# What only the API needs; imported after the calls are restored (see the module docstring).
# anyio's asyncio backend: httpx/httpcore import it lazily at a client's first request, which
# for the gateway client is the first payment submitted: ~20 ms of imports on the event loop
# (0.3 s under CPU contention, profiled with py-spy in a load test) while every call's media
# waits. Imported here, in the thread, it costs the loop nothing.
API_MODULES = ("proxy.api.app", "proxy.service.metrics", "proxy.service.api_server",
               "proxy.store.forward", "anyio._backends._asyncio")
IDLE_REAP_SECONDS = 5.0
DRAIN_REPORT_SECONDS = 30.0  # while draining, "calls left" at least this often


def caller_address(call: Call, agent_labels: set[str]) -> str:
    """What the agent panel shows as the caller when ng metadata names none (``caller=``): the
    offering party's SIP source or media address, unless that party is the agent's side."""
    party = call.party("offerer")
    if party is None or party.label.lower() in agent_labels:
        return ""
    return party.source_address or next(iter(party.addresses), "")


def dtls_certificate(config: Config) -> NodeCertificate:
    """The node's DTLS-SRTP certificate: the configured PEM files, else a new ECDSA P-256
    one (its fingerprint is logged: WebRTC peers see it in every SDP we send them)."""
    media = config.media
    if media.dtls_certificate:
        try:
            certificate = NodeCertificate.load(Path(media.dtls_certificate).read_bytes(),
                                               Path(media.dtls_private_key).read_bytes())
        except (OSError, DtlsError) as exc:
            raise ConfigError(f"media.dtls_certificate / media.dtls_private_key: {exc}") from exc
    else:
        certificate = NodeCertificate.generate()
    log.info("DTLS certificate", sha256=certificate.fingerprint("sha-256"),
             configured=bool(media.dtls_certificate))
    return certificate


def call_policy(config: Config) -> CallPolicy:
    """The node's masking defaults ([masking]) as the call registry takes them."""
    m = config.masking
    policy = MaskingPolicy(mode=DtmfSecurityMode.parse(m.mode),
                           tone_frequency_hz=m.tone_frequency_hz, volume_dbm0=m.volume_dbm0)
    return CallPolicy(always_on=m.always_on, caller=m.caller,
                      masking=policy.with_mode(policy.mode),
                      recording=parse_hostport(m.recording_tap) if m.recording_tap else None,
                      customer_networks=tuple(ipaddress.ip_network(n, strict=False)
                                              for n in m.customer_networks),
                      customer_labels=frozenset(s.lower() for s in m.customer_labels),
                      agent_labels=frozenset(s.lower() for s in m.agent_labels))


def default_pipeline_factory(config: Config) -> Callable[[], AudioPipeline]:
    # Imported here, not at the top: NumPy and the detector are ~0.3 s of CPU, and a node
    # whose media runs in worker processes (they import it themselves) never needs them.
    from proxy.media.masking import MaskingPipeline

    lookahead = config.masking.lookahead_ms
    return lambda: MaskingPipeline(lookahead_ms=lookahead)


@dataclass
class Node:
    """One running ToneGuard node: what the CLI, the demo and tests start and stop."""

    config: Config
    engine: MediaEngine
    registry: CallRegistry
    ng: NgServer
    payments: PaymentManager
    ng_address: tuple[str, int] = ("", 0)
    api_address: tuple[str, int] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _api: uvicorn.Server | None = None
    _gateway: GatewayClient | None = None
    _last_totals: MediaTotals = field(default_factory=MediaTotals)  # refreshed each second
    _media_engines: int = 1  # worker processes (or 1 in process) that must answer
    _stopping: bool = False
    state: NodeState | None = None  # the shared store ([store] url), None = alone
    _router: ClusterRouter | None = None
    _heartbeat: Heartbeat | None = None  # with Redis: others may take this node's calls over
    takeover: TakeoverWatcher | None = None  # [store] takeover: this node adopts dead nodes'
    _relay: NgRelay | None = None  # commands for calls a taker adopted go to it
    _draining: bool = False
    _offers_refused: int = 0
    _calls_changed: asyncio.Event = field(default_factory=asyncio.Event)  # a call came or went
    _ng_time: dict[str, Recorder] = field(default_factory=lambda: {
        name: Recorder(NG_BUCKETS) for name in (*NG_COMMANDS, "other")})
    # Start-up milestones, seconds since this process started (logged by `toneguard serve`).
    milestones: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def start(cls, config: Config, *, agents: AgentDirectory | None = None,
                    audit: AuditLog | None = None, on_digit: DigitSink | None = None,
                    pipeline_factory: Callable[[], AudioPipeline] | None = None,
                    api: bool = True) -> Node:
        media = config.media
        if api and agents is None:
            agents = load_agents(config)  # a missing agents file refuses before anything starts
        # Read now, with the rest of the configuration, not when the API starts: that is after
        # the restored calls relay and the ng socket answers, and a bad file would stop them.
        softphone_secret = load_softphone_secret(config) if api else b""
        gateway = gateway_client(config)
        sp = config.securepay
        if audit is None:
            audit = AuditLog(Path(config.api.audit_file) if config.api.audit_file else None)
        registry: CallRegistry  # built below; the hooks run only once the node is up

        def capture_changed(call_id: str, active: bool) -> None:
            # Capturing card data forces the customer's masking on (and refuses unblock).
            registry.capture_changed(call_id, active)

        payments = PaymentManager(gateway, audit=audit, settings=CaptureSettings(
            sp.inter_digit_timeout_seconds, sp.field_timeout_seconds, sp.max_attempts,
            tuple(sp.accepted_brands), sp.require_postal_code),
            trigger_sequence=sp.trigger_sequence,
            on_capture=capture_changed)

        def digit(call_id: str, tag: str, event: DigitEvent) -> None:
            payments.on_digit(call_id, tag, event)
            if on_digit is not None:
                on_digit(call_id, tag, event)

        calls_changed = asyncio.Event()

        agent_labels = {label.lower() for label in config.masking.agent_labels}

        def call_changed(call_id: str, alive: bool) -> None:
            calls_changed.set()  # wakes a drain waiting for the last call
            if alive:
                call = registry.calls[call_id]
                payments.call_started(call_id, call.metadata,
                                      caller=caller_address(call, agent_labels))
            else:
                payments.call_ended(call_id)

        def securepay_from_ng(call_id: str) -> str:
            info = payments.calls.get(call_id)
            return payments.start(call_id, info.agent_id if info and info.agent_id else "ng").sid

        workers = media.workers or os.cpu_count() or 1
        engine: MediaEngine
        if workers > 1 and pipeline_factory is None:
            engine = WorkerPoolEngine(media.address, media.port_min, media.port_max,
                                      workers=workers, tick_ms=media.tick_ms,
                                      idle_timeout=media.idle_timeout_seconds,
                                      lookahead_ms=config.masking.lookahead_ms)
        else:
            from proxy.media import prespawn

            prespawn.discard()  # spawned early for a worker count the config overrode
            engine = LocalMediaEngine(
                media.address, media.port_min, media.port_max,
                pipeline_factory=pipeline_factory or default_pipeline_factory(config),
                tick_ms=media.tick_ms, idle_timeout=media.idle_timeout_seconds)
        media_engines = workers if isinstance(engine, WorkerPoolEngine) else 1
        if config.store.takeover:  # adopted calls bind on the dead node's own address
            from proxy.store.takeover import AdoptingEngine

            engine = AdoptingEngine(engine, lambda m: LocalMediaEngine(
                m.address, m.port_min, m.port_max,
                pipeline_factory=pipeline_factory or default_pipeline_factory(config),
                tick_ms=media.tick_ms, idle_timeout=media.idle_timeout_seconds))
        # Worker processes start (each a fresh interpreter importing the media plane) while this
        # one reads the store; the restore waits for them only before it binds ports.
        engine_started = asyncio.ensure_future(engine.start())
        registry = CallRegistry(engine, address=media.address,
                                advertised_address=media.advertised_address,
                                policy=call_policy(config), on_digit=digit,
                                on_call=call_changed, on_securepay=securepay_from_ng,
                                on_renegotiated=payments.call_renegotiated,
                                limits=CallLimits(config.ng.max_media_per_offer,
                                                  config.ng.max_parties_per_call),
                                latching=LatchingDefaults(media.learn_any_source,
                                                          media.learning_window_seconds),
                                certificate=dtls_certificate(config))
        node: Node  # the ng handler below is the node's; it runs only once the node is up

        async def handle_ng(body: dict[str, Any]) -> dict[str, Any]:
            return await node.handle_ng(body)

        server = NgServer(handle_ng, cache_ttl=config.ng.cookie_cache_seconds,
                          cache_bytes=config.ng.cookie_cache_bytes)
        node = cls(config, engine, registry, server, payments, _gateway=gateway,
                   _media_engines=media_engines,
                   _calls_changed=calls_changed)
        host, port = parse_hostport(config.ng.listen)
        api_imported: asyncio.Future[None] | None = None
        try:
            if config.store.url:  # before the ng socket: Kamailio's next command finds the call
                from proxy.store.node import NodeState, StoreConfigError, open_store

                store = open_store(config.store.url)
                node_id = config.store.node_id or config.ng.listen
                # The heartbeat's first beat comes before the restore (proxy/store/takeover.py).
                node._heartbeat = await start_heartbeat(config, store, node_id, registry)
                if node._heartbeat is not None:
                    from proxy.store.takeover import NgRelay

                    node._relay = NgRelay(store.client, node_id)  # type: ignore[attr-defined]
                try:
                    node.state = await NodeState.open(
                        url=config.store.url, key_file=config.store.key_file,
                        node=node_id, registry=registry, store=store,
                        payments=payments, limit=config.store.queue_limit,
                        media_ready=engine_started,
                        shared_certificate=not config.media.dtls_certificate)
                except StoreConfigError as exc:
                    raise ConfigError(str(exc)) from exc
                node.takeover = start_takeover(config, node.state, registry, engine, handle_ng)
            await engine_started
            node._milestone("media")  # restored calls bound, configured, linked: relaying
            try:  # before the API import competes for the interpreter: Kamailio's next command
                node.ng_address = await start_ng(server, host, port,
                                                 retry=bool(node._heartbeat))
            except OSError as exc:
                raise BindError.of("ng socket", config.ng.listen, exc) from exc
            node._milestone("ng")
            if api:  # the restored calls relay while this thread imports (see the docstring)
                api_imported = asyncio.ensure_future(asyncio.to_thread(import_api_stack))
            # Read once now rather than at the first housekeeping second: /readyz (which a
            # restart's orchestration waits for) is true as soon as the API answers.
            node._last_totals = await engine.totals()
            if api_imported is not None:
                await api_imported
                node._milestone("api_imported")
                try:
                    await node._start_api(agents, softphone_secret)
                except BindError:
                    raise
                except OSError as exc:  # the API server died while starting
                    raise BindError.of("API socket", config.api.listen, exc) from exc
        except BaseException:
            # Let the engine finish starting (worker processes) so that it can be stopped; an
            # API import still running in its thread is left to finish (threads do not cancel).
            if not engine_started.done():
                with contextlib.suppress(Exception):
                    await engine_started
            if engine_started.done() and not engine_started.cancelled() \
                    and engine_started.exception() is None:
                await node.stop()
            raise
        node._milestone("started")
        if node._heartbeat is not None:  # regular beats once up (the first had a grace)
            node._heartbeat.begin()
        node._tasks.append(asyncio.create_task(node._housekeeping(), name="housekeeping"))
        log.info("toneguard node started", ng=f"{node.ng_address[0]}:{node.ng_address[1]}",
                 media=f"{media.address}:{media.port_min}-{media.port_max}",
                 api=f"{node.api_address[0]}:{node.api_address[1]}" if node.api_address else "",
                 masking=config.masking.mode, always_on=config.masking.always_on,
                 gateway=config.gateway.url or "none")
        return node

    def _milestone(self, name: str) -> None:
        age = process_age()
        if age is not None:
            self.milestones[name] = round(age, 3)

    async def _start_api(self, agents: AgentDirectory | None, softphone_secret: bytes) -> None:
        import uvicorn

        from proxy.api.app import ApiSettings, create_app
        from proxy.api.auth import AgentDirectory, AuthSettings
        from proxy.service.api_server import ApiServer
        from proxy.service.metrics import Metrics
        from proxy.store.forward import ClusterRouter, NodeAssertions, assertion_key

        agents = agents or AgentDirectory()
        host, port = parse_hostport(self.config.api.listen)
        # Bound here rather than by uvicorn, which logs a raw errno and exits the process (3)
        # from inside its task when the port is taken.
        try:
            listener = _tcp_listener(host, port)
        except OSError as exc:
            raise BindError.of("API socket", self.config.api.listen, exc) from exc
        metrics = Metrics(self.readings)
        api = self.config.api
        app = create_app(self.payments, agents, metrics.render, ApiSettings(
            max_body_bytes=api.max_body_bytes, public_metrics=api.public_metrics,
            auth=AuthSettings(failures_per_source=api.auth_failures_per_source,
                              failure_window_seconds=api.auth_failure_window_seconds,
                              key_lockout_failures=api.key_lockout_failures,
                              key_lockout_seconds=api.key_lockout_seconds),
            softphone_ws_url=api.softphone_ws_url, softphone_domain=api.softphone_domain,
            softphone_secret=softphone_secret,
            softphone_credential_seconds=int(api.softphone_credential_hours * 3600)),
            readiness=self.readiness)
        asgi: Any = app
        if self.state is not None:  # calls of the other nodes: listed here, actions forwarded
            key = assertion_key(Path(self.config.store.key_file))  # read by the store already
            asgi = self._router = ClusterRouter(
                app, node=self.state.node, store=self.state.store,
                local=lambda call_id: call_id in self.registry.calls,
                guard=app.state.key_guard, assertions=NodeAssertions(key, self.state.node),
                max_body=api.max_body_bytes)
        server = ApiServer(uvicorn.Config(asgi, host=host, port=port, log_config=None,
                                           access_log=False, lifespan="off",
                                           ws_max_size=api.max_body_bytes))
        self._api = server
        task = asyncio.create_task(server.serve(sockets=[listener]), name="api")
        self._tasks.append(task)
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # raises the bind error
                    raise OSError(98, "API server stopped during start-up")
                await asyncio.sleep(0.02)
        sock = server.servers[0].sockets[0].getsockname()
        self.api_address = (sock[0], sock[1])
        if self.state is not None:
            await self.state.announce(self.config.store.api_url
                                      or f"http://{_url_host(sock[0])}:{sock[1]}")

    async def handle_ng(self, body: dict[str, Any]) -> dict[str, Any]:
        """One ng message: parsed once, refused if it would start a call while draining, else
        handled by the call registry; its handling time is recorded under its command."""
        started = time.perf_counter()
        name = "other"
        try:
            request = parse_request(ng.normalise(body))
            name = command_name(request)
            call_id = getattr(request, "call_id", "")
            # Only once another node took this node's calls over (the ng worker waits for the
            # lookup: no Redis round trip for unknown calls otherwise).
            if (self._relay is not None and self._heartbeat is not None and call_id
                    and call_id not in self.registry.calls
                    and self._heartbeat.relays(call_id,
                                               starts_a_call(request, self.registry.calls))):
                relayed = await self._relay.relay(body, call_id)  # another node adopted it
                if relayed is not None:
                    return relayed
            if (self._draining and isinstance(request, NegotiateRequest)
                    and starts_a_call(request, self.registry.calls)):
                self._offers_refused += 1
                log.info("offer refused: draining", call_id=request.call_id[:80],
                         from_tag=request.from_tag[:80])
                return refuse_new_call(request)
            return await self.registry.dispatch(request)
        finally:
            self._ng_time.get(name, self._ng_time["other"]).observe(
                time.perf_counter() - started)

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, limit: float | None = None) -> bool:
        """Take no new calls; return once the last live call has gone (True) or after
        ``limit`` seconds (``service.drain_seconds``) with calls still up (False)."""
        limit = self.config.service.drain_seconds if limit is None else limit
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + limit
        self._draining = True
        log.info("drain started: new offers refused, live calls kept",
                 calls=len(self.registry.calls), limit_seconds=limit)
        reported, reported_at = len(self.registry.calls), began
        while self.registry.calls:
            now = loop.time()
            if now >= deadline:
                log.warning("drain limit reached: stopping with live calls",
                            calls=len(self.registry.calls), limit_seconds=limit)
                return False
            left = len(self.registry.calls)
            if left != reported or now - reported_at >= DRAIN_REPORT_SECONDS:
                log.info("draining: calls left", calls=left,
                         seconds_left=round(deadline - now))
                reported, reported_at = left, now
            self._calls_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline - now, DRAIN_REPORT_SECONDS)):
                    await self._calls_changed.wait()
        log.info("drain done: no live calls", seconds=round(loop.time() - began, 1))
        return True

    def readings(self) -> Readings:
        """What /metrics reports (media totals as of the last housekeeping second)."""
        from proxy.service.metrics import Readings

        return Readings(
            media=self._last_totals,
            calls=dataclasses.replace(self.registry.counters),
            calls_active=len(self.registry.calls),
            ng=dict(self.ng.counters),
            payments=dict(self.payments.counters),
            payments_active=sum(1 for s in self.payments.sessions.values()
                                if not s.status.terminal),
            store=self.state.sync if self.state is not None else None,
            ng_seconds=self.ng_seconds(),
            draining=self._draining,
            offers_refused=self._offers_refused)

    def ng_seconds(self) -> dict[str, Histogram]:
        """ng handling time per command (commands never seen are left out)."""
        snaps = {name: r.snapshot() for name, r in self._ng_time.items()}
        return {name: h for name, h in snaps.items() if h.count}

    async def _housekeeping(self) -> None:
        """Payment timeouts, media totals for /metrics, idle calls: once a second. One failing
        step is logged and the others go on (a node without timeouts or reaping is worse than
        one with a logged bug)."""
        while True:
            await asyncio.sleep(1.0)
            reap = int(asyncio.get_running_loop().time()) % int(IDLE_REAP_SECONDS) == 0
            for step in (self._poll_payments, self._read_totals,
                         *((self.registry.reap_idle,) if reap else ())):
                try:
                    await step()
                except Exception:
                    log.exception("housekeeping step failed", step=step.__name__)

    async def _poll_payments(self) -> None:
        self.payments.poll()

    async def _read_totals(self) -> None:
        self._last_totals = await self.engine.totals()

    def readiness(self) -> list[str]:
        """What keeps this node from taking calls now (``/readyz``); empty when ready."""
        problems = []
        if self._stopping:
            problems.append("stopping")
        elif self._draining:
            problems.append("draining")
        if self.ng.transport is None or self.ng.transport.is_closing():
            problems.append("ng socket not open")
        if self._last_totals.workers < self._media_engines:
            problems.append(f"media engines answering: {self._last_totals.workers} of "
                            f"{self._media_engines}")
        if self.state is not None:
            problems += self.state.problems()  # "degraded: ...": calls still work (200)
        return problems

    async def stop(self) -> None:
        self._stopping = True
        if self.registry.calls:  # Kamailio's deletes for these will find nothing: say so
            log.warning("stopping with live calls: their media ends now",
                        calls=len(self.registry.calls))
        if self._api is not None:
            self._api.should_exit = True
        await self.ng.stop()
        if self.takeover is not None:
            await self.takeover.stop()
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        if self.state is not None:  # first: the calls closed below stay in the store
            await self.state.stop()
        for task in self._tasks:
            if task.get_name() != "api":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._router is not None:
            await self._router.aclose()
        await self.payments.close()
        await self.registry.close()
        await self.engine.stop()
        if self._gateway is not None:
            await self._gateway.close()
        log.info("toneguard node stopped")


NG_BIND_RETRY_SECONDS = 5.0  # a node that took this one's calls over gives the address back


async def start_ng(server: NgServer, host: str, port: int, *, retry: bool) -> tuple[str, int]:
    """Open the ng socket. ``retry`` (a node with heartbeats): a node that took this one's
    calls over while it was down may answer on its ng address until it sees this node's
    heartbeat (proxy/store/takeover.py), so a taken address is retried for a few seconds."""
    deadline = time.monotonic() + (NG_BIND_RETRY_SECONDS if retry else 0.0)
    while True:
        try:
            return await server.start(host, port)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise
            log.info("ng address taken (by a node that took this one's calls over?): retrying",
                     error=exc.strerror or str(exc))
            await asyncio.sleep(0.1)


async def start_heartbeat(config: Config, store: object, node_id: str,
                          registry: CallRegistry) -> Heartbeat | None:
    """With Redis, this node beats (its first beat awaited: before its calls are loaded)."""
    from proxy.store.redis_store import RedisStore
    from proxy.store.takeover import Heartbeat, NodeMedia

    if not isinstance(store, RedisStore):
        return None
    m = config.media
    heartbeat = Heartbeat(store.client, node_id, NodeMedia(
        m.address, m.advertised_address or m.address, m.port_min, m.port_max, config.ng.listen),
        interval=config.store.heartbeat_seconds, ttl=config.store.heartbeat_ttl_seconds,
        calls=lambda: list(registry.calls), forget=registry.forget,
        reap_after=config.store.orphan_seconds)
    await heartbeat.start()
    return heartbeat


def start_takeover(config: Config, state: NodeState, registry: CallRegistry,
                   engine: MediaEngine, handle_ng: Callable[[dict[str, Any]], Awaitable[
                       dict[str, Any]]]) -> TakeoverWatcher | None:
    """``[store] takeover``: watch those nodes' heartbeats, adopt the calls of one that dies."""
    from proxy.store.records import decode
    from proxy.store.redis_store import RedisStore
    from proxy.store.takeover import AdoptingEngine, TakeoverWatcher

    if not config.store.takeover or not isinstance(state.store, RedisStore):
        return None
    assert isinstance(engine, AdoptingEngine)
    sealer = state._sealer  # the node set's key, as the restore uses it

    async def open_ng(address: str) -> NgServer:  # a dead node's ng address: ours for now
        server = NgServer(handle_ng, cache_ttl=config.ng.cookie_cache_seconds,
                          cache_bytes=config.ng.cookie_cache_bytes)
        await server.start(*parse_hostport(address))
        return server

    watcher = TakeoverWatcher(
        state.store.client, state.node, list(config.store.takeover),
        registry=registry, engine=engine,
        decode_record=lambda data: decode(data, sealer),
        resume=state._restore_payments, mark=state.sync.mark,
        interval=config.store.heartbeat_seconds,
        may_claim=lambda: not state.sync.degraded, open_ng=open_ng)
    watcher.start()
    return watcher


class BindError(OSError):
    """A listening socket could not be bound; the message names the socket and the address."""

    @classmethod
    def of(cls, what: str, address: str, exc: OSError) -> BindError:
        # uvloop raises "could not bind to local_addr (...)" without an errno, the OSError that
        # has it as its cause; asyncio raises that OSError itself.
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        errno = cause.errno or exc.errno
        reason = os.strerror(errno) if errno else (exc.strerror or str(exc))
        return cls(errno or 0, f"cannot bind the {what} {address}: {reason.lower()}")

    def __str__(self) -> str:
        return str(self.strerror)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


def gateway_client(config: Config) -> GatewayClient | None:
    g = config.gateway
    if not g.url:
        return None
    from proxy.securepay.gateway_client import GatewayClient

    try:
        return GatewayClient(g.url, ca_file=Path(g.ca_file), cert_file=Path(g.cert_file),
                             key_file=Path(g.key_file), timeout=g.timeout_seconds)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"gateway: cannot load certificates: {exc}") from exc


def load_agents(config: Config) -> AgentDirectory:
    """The agents file, re-read when it changes; a configured but missing or unreadable file
    refuses to start (an API with no keys would silently refuse every agent)."""
    from proxy.api.auth import AgentDirectory, AgentsFileError

    path = config.api.agents_file
    if not path:
        return AgentDirectory()
    try:
        return AgentDirectory.load(Path(path))
    except AgentsFileError as exc:
        raise ConfigError(f"api.agents_file: {exc}") from exc


def load_softphone_secret(config: Config) -> bytes:
    """The secret SIP passwords for the panel's softphone are derived from (shared with
    Kamailio); configured but missing, unreadable or empty refuses to start."""
    path = config.api.softphone_secret_file
    if not path:
        return b""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"api.softphone_secret_file: {exc.strerror}: {path}") from exc
    if len(secret) < 16:
        raise ConfigError(f"api.softphone_secret_file: {path}: under 16 bytes")
    return secret


def import_api_stack() -> None:
    """Import what only the API needs (run in a thread after the restore: imports are Python
    code that holds the GIL in short slices, so the event loop keeps relaying meanwhile)."""
    for name in API_MODULES:
        importlib.import_module(name)


async def run_until_signalled(node_factory: Callable[[], Awaitable[Node]]) -> None:
    """Run a node until SIGINT (stop now) or SIGTERM (drain, then stop; a second signal
    during the drain stops at once)."""
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    node = await node_factory()
    try:
        first = await signals.get()
        if first is signal.SIGTERM and node.config.service.drain_seconds > 0:
            drain = asyncio.create_task(node.drain(), name="drain")
            second = asyncio.create_task(signals.get(), name="second signal")
            await asyncio.wait((drain, second), return_when=asyncio.FIRST_COMPLETED)
            if second.done() and not drain.done():
                log.warning("signalled again while draining: stopping now",
                            signal=second.result().name, calls=len(node.registry.calls))
            for task in (drain, second):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await node.stop()


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms steps), None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            after_name = stat.read().rsplit(b")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime, in clock ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


async def _start_for_production(config: Config, configured: float | None = None) -> Node:
    open_files = raise_open_file_limit()
    reserve_file_table(media_file_table(config.media.port_min, config.media.port_max))
    try:
        node = await Node.start(config)
    finally:
        gc.enable()  # off during start-up (see proxy.service.cli.main)
    freeze_startup_objects()
    log.info("process limits", open_files=open_files)
    # Where a restart's media gap goes: imports and config (``configured``), the restored calls
    # relaying (``media``), the ng socket, the API stack imported and the API up (``started``).
    log.info("start-up timings", seconds_since_process_start={
        **({"configured": round(configured, 3)} if configured is not None else {}),
        **node.milestones})
    return node


EXIT_CONFIG = 2  # a usage or configuration error: fix the flag or the file named
EXIT_RUNTIME = 1  # the configuration is fine but the node could not run (a port is taken)


def serve_command(
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", metavar="FILE",
        help="TOML configuration file (see config/toneguard.toml).")] = None,
    ng_listen: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="ng control socket (overrides ng.listen).")] = None,
    media_address: Annotated[str | None, typer.Option(
        metavar="ADDRESS", help="Media address (overrides media.address).")] = None,
    port_range: Annotated[str | None, typer.Option(
        metavar="MIN-MAX", help="Media ports (overrides media.port_min/port_max).")] = None,
    workers: Annotated[int | None, typer.Option(
        metavar="N",
        help="Media worker processes (overrides media.workers; 0 = one per core).")] = None,
    log_format: Annotated[str | None, typer.Option(
        metavar="console|json", help="Log format (overrides logging.format).")] = None,
    store: Annotated[str | None, typer.Option(
        metavar="URL", help="Shared state, redis://HOST:PORT/DB (overrides store.url).")] = None,
) -> int:
    """Run the media relay: ng control socket (for Kamailio's rtpengine module) and media.

    Exit codes: 0 = stopped by SIGTERM/SIGINT; 1 = could not run (e.g. a port is taken);
    2 = usage or configuration error (the message names the flag or the file).
    """
    overrides: dict[str, dict[str, object]] = {}
    flags: dict[str, str] = {}  # dotted key -> the flag that set it, for error messages

    def override(section: str, key: str, value: object, flag: str) -> None:
        overrides.setdefault(section, {})[key] = value
        flags[f"{section}.{key}"] = flag

    if ng_listen:
        override("ng", "listen", ng_listen, "--ng-listen")
    if media_address:
        override("media", "address", media_address, "--media-address")
    if port_range:
        low, _, high = port_range.partition("-")
        if not (low.isdigit() and high.isdigit()):
            print(f"toneguard serve: --port-range: expected MIN-MAX, got {port_range!r}",
                  file=sys.stderr)
            return EXIT_CONFIG
        override("media", "port_min", int(low), "--port-range")
        override("media", "port_max", int(high), "--port-range")
    if workers is not None:
        override("media", "workers", workers, "--workers")
    if log_format:
        override("logging", "format", log_format, "--log-format")
    if store:
        override("store", "url", store, "--store")
    try:
        config = load_config(config_file, overrides, flags)
    except ConfigError as exc:
        print(f"toneguard serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.logging.format, config.logging.level)
    configured = process_age()
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(run_until_signalled(lambda: _start_for_production(config, configured)))
    except ConfigError as exc:
        print(f"toneguard serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BindError as exc:
        print(f"toneguard serve: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # e.g. the agents file cannot be read
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"toneguard serve: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0
