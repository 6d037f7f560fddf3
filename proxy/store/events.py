"""Payment events fan out to every node (Redis pub/sub), so an agent's WebSocket on any node
sees the calls of every node.

Each node publishes the events of its own payments (masked values only: exactly what its
agents' WebSockets carry) on one channel and puts the other nodes' events on its local bus as
:class:`RemoteEvent` (never published again). Best effort, like the WebSocket itself: an event
published while Redis is down is lost (counted); the REST API still has the payment's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from proxy.securepay.events import EventBus, PaymentEvent
from proxy.securepay.states import PaymentStatus

log = structlog.get_logger("toneguard.store")
CHANNEL = "toneguard:events"
RECONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class RemoteEvent(PaymentEvent):
    """An event of a payment on another node (delivered here, not published again)."""


@dataclass(slots=True)
class FanoutCounters:
    published: int = 0
    received: int = 0
    lost: int = 0  # not published: Redis unreachable


class EventFanout:
    def __init__(self, redis: aioredis.Redis, url: str, node: str, bus: EventBus) -> None:
        self._redis = redis  # publishes (short timeouts)
        # Subscribes: its own connection without a read timeout (a quiet channel is no error).
        self._listener = aioredis.Redis.from_url(url, socket_connect_timeout=1.0,
                                                 socket_timeout=None)
        self._node = node
        self._bus = bus
        self._tasks: list[asyncio.Task[None]] = []
        self.counters = FanoutCounters()
        self.listening = asyncio.Event()

    def start(self) -> None:
        queue = self._bus.subscribe()
        self._tasks = [asyncio.create_task(self._publish(queue), name="events-out"),
                       asyncio.create_task(self._listen(), name="events-in")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._listener.aclose()

    async def _publish(self, queue: asyncio.Queue[PaymentEvent]) -> None:
        while True:
            event = await queue.get()
            if isinstance(event, RemoteEvent):
                continue
            data = json.dumps({"node": self._node, **event.as_dict()})
            try:
                await self._redis.publish(CHANNEL, data)
                self.counters.published += 1
            except (RedisError, OSError):
                self.counters.lost += 1

    async def _listen(self) -> None:
        while True:
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self.listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError) as exc:
                self.listening.clear()
                log.info("event fan-out: redis unreachable, retrying",
                         error=type(exc).__name__)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _deliver(self, data: bytes) -> None:
        try:
            body = json.loads(data)
            if body.pop("node") == self._node:
                return
            body["status"] = PaymentStatus(body["status"])
            event = RemoteEvent(**body)
        except (KeyError, TypeError, ValueError):
            log.warning("event fan-out: unreadable event dropped")
            return
        self.counters.received += 1
        self._bus.publish(event)

