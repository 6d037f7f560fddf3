"""Media across cores: worker processes, each a LocalMediaEngine on its own shard of the port
range, behind the same MediaEngine interface the control plane already uses.

All streams of a call live on one worker (chosen by a stable hash of the call id), so linking
and the per-tick masking batch stay inside one process. The parent talks to each worker over a
multiprocessing pipe read from the event loop (no threads): requests carry an id, replies and
media events come back on the same pipe. Digit events cross this pipe in clear — it never leaves
the host and never reaches a log — and go to the subscribers exactly as from the local engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import pickle
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog

from proxy.media import prespawn
from proxy.media.types import (
    LocalEndpoint,
    MediaError,
    MediaEvent,
    MediaTotals,
    PortsExhaustedError,
    RestoredStream,
    StreamConfig,
    StreamStats,
    UnknownStreamError,
)

log = structlog.get_logger("toneguard.workers")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
RESTORE_TIMEOUT = 60.0
# Messages read from a pipe per readable callback. Why: the event loop calls a reader once a
# turn, and a busy worker's turn (a masking tick, hundreds of packets) is long; one message a
# turn made N queued requests wait N turns. Bounded so the pipe cannot starve the media.
DRAIN_MAX = 64


class WorkerError(MediaError):
    """A worker failed, died, or did not answer (or raised what cannot cross the pipe)."""


class RemoteTraceback(Exception):
    """The worker-side traceback of an exception re-raised in the parent: set as its cause, so
    logs show where in the worker it happened (a traceback does not pickle)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


def portable(exc: BaseException) -> BaseException:
    """``exc`` itself if it survives a pickle round trip (its type and arguments reach the
    parent: ``PortsExhaustedError`` stays one), else a WorkerError naming its type."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # e.g. a required keyword-only argument, an unpicklable attribute
        return WorkerError(f"{type(exc).__name__}: {exc}")
    return exc


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    address: str
    port_min: int
    port_max: int
    tick_ms: int
    idle_timeout: float
    lookahead_ms: int
    parent_pid: int  # the node process: the worker ends with it



def shards(port_min: int, port_max: int, workers: int) -> list[tuple[int, int]]:
    """Split [port_min, port_max] into ``workers`` even-aligned ranges of at least 4 ports."""
    span = (port_max - port_min) // workers // 2 * 2
    if span < 4:
        raise ValueError(f"port range {port_min}-{port_max} is too small for {workers} workers")
    return [(port_min + i * span, port_min + (i + 1) * span - 1) for i in range(workers)]


def _more(conn: Connection) -> bool:
    """Another message is waiting (or the pipe closed: the next recv says so)."""
    try:
        return conn.poll()
    except (EOFError, OSError):
        return True


# --- the worker process ---------------------------------------------------------------------

def worker_main(conn: Connection, spec: WorkerSpec | None, parent_pid: int = 0) -> None:
    """Entry point of a worker process. ``spec`` None: spawned early (:func:`prespawn`, before
    the node read its configuration): import the media plane now, then wait for the spec."""
    from proxy.media.runtime import die_with_parent
    die_with_parent(spec.parent_pid if spec is not None else parent_pid)
    if spec is None:
        import importlib

        for module in ("proxy.media.engine", "proxy.media.masking", "uvloop"):
            with contextlib.suppress(ImportError):  # uvloop is optional
                importlib.import_module(module)  # what _serve needs, while the node imports
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the node did not need this worker (media.workers differs) or died
        spec = message
        assert isinstance(spec, WorkerSpec)
    try:
        import uvloop
        uvloop.run(_serve(conn, spec))
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(conn, spec))
    except KeyboardInterrupt:
        pass


async def _serve(conn: Connection, spec: WorkerSpec) -> None:
    from proxy.media.engine import LocalMediaEngine
    from proxy.media.masking import MaskingPipeline
    from proxy.media.runtime import freeze_startup_objects, media_file_table, reserve_file_table

    reserve_file_table(media_file_table(spec.port_min, spec.port_max))
    engine = LocalMediaEngine(
        spec.address, spec.port_min, spec.port_max,
        pipeline_factory=lambda: MaskingPipeline(lookahead_ms=spec.lookahead_ms),
        tick_ms=spec.tick_ms, idle_timeout=spec.idle_timeout)
    await engine.start()
    engine.subscribe(lambda event: conn.send(("event", event)))
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(request_id: int, op: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
        try:
            method = getattr(engine, op)
            result = await method(*args, **kwargs)
            conn.send(("reply", request_id, True, result))
        except Exception as exc:  # sent back to the parent, which raises it there
            text = "".join(traceback.format_exception(exc))
            conn.send(("reply", request_id, False, (portable(exc), text)))

    def readable() -> None:
        for _ in range(DRAIN_MAX):  # what is waiting, not one a loop turn (see DRAIN_MAX)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                stopping.set()  # the parent is gone
                return
            if message[0] == "stop":
                stopping.set()
                return
            _, request_id, op, args, kwargs = message
            task = loop.create_task(handle(request_id, op, args, kwargs))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if not _more(conn):
                return

    loop.add_reader(conn.fileno(), readable)
    conn.send(("ready", spec.index, os.getpid()))
    await stopping.wait()
    loop.remove_reader(conn.fileno())
    await engine.stop()


# --- the parent side ------------------------------------------------------------------------

class _Worker:
    def __init__(self, spec: WorkerSpec, context: Any) -> None:
        self.spec = spec
        self._context = context
        self._child: Connection | None = None
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[int] | None = None
        warm = prespawn.take()
        if warm is not None:  # spawned early (proxy.media.prespawn): its spec at start()
            self.process, self.conn = warm
        else:
            self._fresh()

    def _fresh(self) -> None:
        self.conn, child = self._context.Pipe()
        self.process = self._context.Process(target=worker_main, args=(child, self.spec),
                                             name=f"toneguard-media-{self.spec.index}",
                                             daemon=True)
        self._child = child

    def start(self, on_event: Callable[[MediaEvent], None]) -> None:
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        if self._child is None:  # a pre-spawned worker: it is waiting for this
            try:
                self.conn.send(self.spec)
            except (OSError, ValueError):  # it died meanwhile: a fresh one then
                self.conn.close()
                self._fresh()
        if self._child is not None:
            self.process.start()
            self._child.close()

        def readable() -> None:
            for _ in range(DRAIN_MAX):  # what is waiting, not one a loop turn (see DRAIN_MAX)
                if not receive() or not _more(self.conn):
                    return

        def receive() -> bool:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                loop.remove_reader(self.conn.fileno())
                for future in self._waiting.values():
                    if not future.done():
                        future.set_exception(WorkerError(f"media worker {self.spec.index} died"))
                self._waiting.clear()
                return False
            kind = message[0]
            if kind == "event":
                on_event(message[1])
            elif kind == "reply":
                waiting: asyncio.Future[Any] | None = self._waiting.pop(message[1], None)
                if waiting is not None and not waiting.done():
                    if message[2]:
                        waiting.set_result(message[3])
                    else:
                        error, text = message[3]
                        error.__cause__ = RemoteTraceback(text)
                        waiting.set_exception(error)
            elif kind == "ready" and self.ready is not None and not self.ready.done():
                self.ready.set_result(message[2])
            return True

        loop.add_reader(self.conn.fileno(), readable)

    async def call(self, op: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self.conn.send(("call", request_id, op, args, kwargs))
        except (OSError, ValueError) as exc:
            self._waiting.pop(request_id, None)
            raise WorkerError(f"media worker {self.spec.index} is not running") from exc
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError as exc:
            self._waiting.pop(request_id, None)
            raise WorkerError(f"media worker {self.spec.index}: {op} timed out") from exc

    async def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(self.conn.fileno())
        deadline = loop.time() + STOP_TIMEOUT
        while self.process.is_alive() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.sleep(0.2)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(timeout=1)
        self.conn.close()


class WorkerPoolEngine:
    """A MediaEngine whose streams run in ``workers`` processes."""

    def __init__(self, address: str, port_min: int, port_max: int, *, workers: int = 2,
                 tick_ms: int = 20, idle_timeout: float = 60.0, lookahead_ms: int = 26) -> None:
        context = multiprocessing.get_context("spawn")  # a clean interpreter per worker
        self._workers = [
            _Worker(WorkerSpec(i, address, low, high, tick_ms, idle_timeout, lookahead_ms,
                                  os.getpid()),
                    context)
            for i, (low, high) in enumerate(shards(port_min, port_max, workers))]
        self._owner: dict[str, _Worker] = {}
        self._stream_call: dict[str, str] = {}  # stream id → its call id
        self._call_worker: dict[str, tuple[_Worker, int]] = {}  # call id → worker, streams
        self._subscribers: list[Callable[[MediaEvent], None]] = []
        prespawn.discard()  # more were spawned early than media.workers says: not needed

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _publish(self, event: MediaEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("media event subscriber failed")

    async def start(self) -> None:
        for worker in self._workers:
            worker.start(self._publish)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for worker in self._workers:
                    assert worker.ready is not None
                    await worker.ready
        except TimeoutError as exc:
            await self.stop()
            raise WorkerError("media workers did not start") from exc
        log.info("media workers started", workers=len(self._workers))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self._workers))

    def subscribe(self, callback: Callable[[MediaEvent], None]) -> None:
        self._subscribers.append(callback)

    def worker_for(self, call_id: str) -> int:
        return zlib.crc32(call_id.encode()) % len(self._workers)

    def _of(self, stream_id: str) -> _Worker:
        worker = self._owner.get(stream_id)
        if worker is None:
            raise UnknownStreamError(stream_id)
        return worker

    def _shard_of(self, port: int) -> _Worker | None:
        return next((w for w in self._workers
                     if w.spec.port_min <= port <= w.spec.port_max), None)

    def _place(self, call_id: str, port: int | None) -> _Worker:
        """The worker for a new stream of ``call_id``: the call's worker when it has streams;
        else, for a stream restored on ``port``, the worker whose shard holds that port; else
        the call id's hash. With an unchanged ``media.workers`` a restored call's port is in
        its hash's shard anyway; after a change it is not, and the call still comes back."""
        placed = self._call_worker.get(call_id)
        if placed is not None:
            worker = placed[0]
        elif port is not None:
            found = self._shard_of(port)
            if found is None:
                raise PortsExhaustedError(
                    f"port {port} is outside the media port range (media.port_min/max "
                    f"changed since the call was stored?)")
            worker = found
            if worker.spec.index != self.worker_for(call_id):
                log.warning("restored call placed on the worker that owns its port "
                            "(media.workers changed since it was stored)",
                            call_id=call_id[:80], port=port, worker=worker.spec.index)
        else:
            worker = self._workers[self.worker_for(call_id)]
        if port is not None and not worker.spec.port_min <= port <= worker.spec.port_max:
            # All streams of a call must share a worker (linking, the masking batch).
            raise PortsExhaustedError(
                f"port {port} is on another worker's shard than the rest of call "
                f"{call_id[:80]!r} (worker {worker.spec.index}: {worker.spec.port_min}-"
                f"{worker.spec.port_max}): media.workers changed since the call was stored")
        return worker

    async def allocate(self, stream_id: str, call_id: str, *, rtcp_mux: bool,
                       port: int | None = None) -> LocalEndpoint:
        worker = self._place(call_id, port)
        local: LocalEndpoint = await worker.call("allocate", stream_id, call_id,
                                                 rtcp_mux=rtcp_mux, port=port)
        self._owner[stream_id] = worker
        self._stream_call[stream_id] = call_id
        count = self._call_worker.get(call_id, (worker, 0))[1]
        self._call_worker[call_id] = (worker, count + 1)
        return local

    async def configure(self, stream_id: str, config: StreamConfig) -> None:
        await self._of(stream_id).call("configure", stream_id, config)

    async def restore(self, call_id: str, streams: list[RestoredStream],
                      links: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
        """The whole call in one round trip to its worker. Why: stream by stream (allocate,
        configure, link) a 100-call restart made 500 sequential round trips through the
        worker's pipe, each waiting for the worker's event loop: ~1 s before the last call
        relayed, against ~40 ms in process."""
        if not streams:
            return
        worker = self._place(call_id, streams[0].port)
        for s in streams[1:]:
            if not worker.spec.port_min <= s.port <= worker.spec.port_max:
                raise PortsExhaustedError(
                    f"port {s.port} is on another worker's shard than the rest of call "
                    f"{call_id[:80]!r}: media.workers changed since the call was stored")
        # A longer bound than other requests': a restart sends every call at once, and a call
        # the parent gave up on while the worker restored it would have its record deleted.
        await worker.call("restore", call_id, streams, links, outputs, timeout=RESTORE_TIMEOUT)
        for s in streams:
            self._owner[s.stream_id] = worker
            self._stream_call[s.stream_id] = call_id
        count = self._call_worker.get(call_id, (worker, 0))[1]
        self._call_worker[call_id] = (worker, count + len(streams))

    async def link(self, a: str, b: str) -> None:
        worker = self._of(a)
        if self._of(b) is not worker:
            raise MediaError(f"cannot link {a} and {b}: they live on different workers")
        await worker.call("link", a, b)

    async def add_output(self, source: str, sink: str) -> None:
        worker = self._of(source)
        if self._of(sink) is not worker:
            raise MediaError(f"cannot send {source} to {sink}: they live on different workers")
        await worker.call("add_output", source, sink)

    async def remove_output(self, source: str, sink: str) -> None:
        worker = self._owner.get(source)
        if worker is not None:
            await worker.call("remove_output", source, sink)

    async def release(self, stream_id: str) -> None:
        worker = self._owner.pop(stream_id, None)
        call_id = self._stream_call.pop(stream_id, None)
        placed = self._call_worker.get(call_id) if call_id is not None else None
        if call_id is not None and placed is not None:
            if placed[1] <= 1:
                del self._call_worker[call_id]
            else:
                self._call_worker[call_id] = (placed[0], placed[1] - 1)
        if worker is not None:
            with contextlib.suppress(WorkerError):
                await worker.call("release", stream_id)

    async def stats(self, stream_id: str) -> StreamStats:
        result: StreamStats = await self._of(stream_id).call("stats", stream_id)
        return result

    async def totals(self) -> MediaTotals:
        """The sum of every worker's totals; ``workers`` counts those that answered."""
        total = MediaTotals()
        results = await asyncio.gather(*(w.call("totals") for w in self._workers),
                                       return_exceptions=True)
        for worker, result in zip(self._workers, results, strict=True):
            if isinstance(result, MediaTotals):
                total += result
            else:
                log.warning("media worker did not report totals", worker=worker.spec.index,
                            error=f"{type(result).__name__}: {result}")
        return total
