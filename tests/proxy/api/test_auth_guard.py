"""KeyGuard in-process: per-source limits, key lock-out, the verified-key cache, scrypt off the
event loop, reloads and revocations (no sockets; a test clock; scrypt at a test cost).

The same rules over real sockets, against a served node, are tests/proxy/api/test_hostile.py;
these are the fast ones the mutation run (scripts/mutate.py) uses for proxy/api/auth.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.api import auth
from proxy.api.auth import AgentDirectory, AuthRefused, AuthSettings, KeyGuard, Principal

SOURCE, OTHER = "192.0.2.7", "198.51.100.9"


class Clock:
    """A monotonic clock the test moves by hand (the guard's windows are in seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # test_auth.py pins the real cost; here each check would otherwise spend ~50 ms.
    monkeypatch.setitem(auth._SCRYPT, "n", 2**4)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Guarded:
    def __init__(self, clock: Clock, settings: AuthSettings) -> None:
        self.directory = AgentDirectory()
        self.ann = self.directory.add("ann", "agent")
        self.sue = self.directory.add("sue", "supervisor")
        self.audit: list[tuple[str, dict[str, Any]]] = []
        self.guard = KeyGuard(self.directory, settings, clock=clock,
                              audit=lambda action, **f: self.audit.append((action, f)))

    async def refused(self, key: str, source: str = SOURCE) -> AuthRefused:
        with pytest.raises(AuthRefused) as info:
            await self.guard.check(key, source)
        return info.value


@pytest.fixture
def make(clock: Clock) -> Iterator[Callable[..., Guarded]]:
    made: list[Guarded] = []

    def _make(**settings: Any) -> Guarded:
        g = Guarded(clock, AuthSettings(**settings))
        made.append(g)
        return g

    yield _make
    for g in made:
        g.guard.close()


def wrong(key: str) -> str:
    """The same key id with another secret."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


class Gate:
    """Replaces auth._hash: each call waits until the test opens the gate (bounded), so checks
    can be held "in flight" on the thread pool."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = auth._hash
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)
        self.threads: list[str] = []
        monkeypatch.setattr(auth, "_hash", self)

    def __call__(self, secret: str, salt: bytes) -> bytes:
        self.threads.append(threading.current_thread().name)
        self.entered.release()
        assert self.open.wait(5), "gate never opened"
        return self.real(secret, salt)

    async def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.entered.acquire, True, 5), "check never started"


# --- valid keys, wrong keys, the cache ---------------------------------------------------------


async def test_a_valid_key_is_verified_once_then_served_from_the_cache(
        make: Callable[..., Guarded]) -> None:
    g = make()
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert g.guard.counters == {"verified": 1, "cached": 0, "refused": 0, "limited": 0,
                                "locked": 0}
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert await g.guard.check(g.sue, OTHER) == Principal("sue", "supervisor")
    assert g.guard.counters == {"verified": 2, "cached": 1, "refused": 0, "limited": 0,
                                "locked": 0}


@pytest.mark.parametrize("key", ["", "nope", "tg_0a1b2c3d", "Bearer tg_0a1b2c3d_x"])
async def test_a_malformed_key_is_401_and_counts_as_a_failure(
        make: Callable[..., Guarded], key: str) -> None:
    g = make(failures_per_source=1)
    refused = await g.refused(key)
    assert (refused.status, refused.reason, refused.retry_after) == (401, "invalid API key", 0.0)
    assert str(refused) == "invalid API key"
    assert g.guard.counters["refused"] == 1
    # One failure was the source's whole allowance: even a valid key now waits.
    assert (await g.refused(g.ann)).status == 429


async def test_a_wrong_secret_or_unknown_id_is_401_and_not_cached(
        make: Callable[..., Guarded]) -> None:
    g = make()
    for key in (wrong(g.ann), "tg_ffffffff_" + g.ann.split("_", 2)[2]):
        refused = await g.refused(key)
        assert (refused.status, refused.reason) == (401, "invalid API key")
    assert g.guard.counters["refused"] == 2
    assert g.guard.counters["verified"] == 0
    # A near miss is not served from the cache of a good key either.
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert (await g.refused(wrong(g.ann))).status == 401
    assert g.guard.counters["cached"] == 0


async def test_the_cache_is_emptied_when_full_not_grown(make: Callable[..., Guarded]) -> None:
    g = make(cache_size=2)
    bea = g.directory.add("bea", "agent")
    for key in (g.ann, g.sue):
        await g.guard.check(key, SOURCE)
    assert g.guard.counters["verified"] == 2
    await g.guard.check(g.sue, SOURCE)  # still remembered: two fit
    assert g.guard.counters["cached"] == 1
    # A third key finds the cache full: it is emptied, so ann costs a scrypt again.
    await g.guard.check(bea, SOURCE)
    await g.guard.check(g.ann, SOURCE)
    assert g.guard.counters["verified"] == 4
    assert g.guard.counters["cached"] == 1
    await g.guard.check(g.ann, SOURCE)  # and is remembered again
    assert g.guard.counters["cached"] == 2


async def test_scrypt_runs_on_the_guards_threads_never_the_event_loop(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(verify_threads=1)
    gate = Gate(monkeypatch)
    gate.open.set()
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert (await g.refused(wrong(g.sue))).status == 401
    assert len(gate.threads) == 2
    assert all(name.startswith("tg-keycheck") for name in gate.threads), gate.threads
    assert threading.current_thread().name not in gate.threads


async def test_the_event_loop_keeps_running_while_a_key_is_checked(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make()
    gate = Gate(monkeypatch)
    check = asyncio.ensure_future(g.guard.check(g.ann, SOURCE))
    await gate.wait_entered(1)
    # The loop ran this test's code while scrypt was "running": nothing blocked it.
    assert not check.done()
    gate.open.set()
    assert await asyncio.wait_for(check, 5) == Principal("ann", "agent")


# --- per-source limits -------------------------------------------------------------------------


async def test_failures_per_source_are_limited_within_the_window(
        make: Callable[..., Guarded], clock: Clock) -> None:
    g = make(failures_per_source=3, failure_window_seconds=60.0)
    for step in range(3):
        assert (await g.refused("nope")).status == 401
        clock.now += 10 if step < 2 else 0
    limited = await g.refused(g.ann)  # a valid key too: the source is what is limited
    assert (limited.status, limited.reason) == (429, "too many failed authentication attempts")
    assert limited.retry_after == pytest.approx(40.0)  # the oldest failure leaves at +60 s
    assert g.guard.counters["limited"] == 1
    assert g.guard.counters["refused"] == 3
    # Another source is not affected.
    assert await g.guard.check(g.sue, OTHER) == Principal("sue", "supervisor")
    # Just before the first failure leaves the window: still limited, told to wait >= 1 s.
    clock.now += 39.5
    limited = await g.refused(g.ann)
    assert (limited.status, limited.retry_after) == (429, 1.0)
    # When it leaves, one attempt is free again, and only one.
    clock.now += 0.5
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert (await g.refused("nope")).status == 401
    assert (await g.refused(g.ann)).status == 429
    assert g.guard.counters["limited"] == 3


async def test_a_failure_exactly_one_window_old_no_longer_counts(
        make: Callable[..., Guarded], clock: Clock) -> None:
    g = make(failures_per_source=1, failure_window_seconds=30.0)
    await g.refused("nope")
    clock.now += 30.0
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")


async def test_checks_in_flight_count_against_the_source(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(failures_per_source=2, verify_threads=3)
    gate = Gate(monkeypatch)
    flying = [asyncio.ensure_future(g.guard.check(k, SOURCE)) for k in (g.ann, g.sue)]
    await gate.wait_entered(2)
    # No failure yet, but two checks running fill the allowance: come back in a second.
    limited = await g.refused(g.ann)
    assert (limited.status, limited.retry_after) == (429, 1.0)
    # Another source is not held up by them.
    other = asyncio.ensure_future(g.guard.check(wrong(g.ann), OTHER))
    await gate.wait_entered(1)
    gate.open.set()
    assert [await asyncio.wait_for(f, 5) for f in flying] == [
        Principal("ann", "agent"), Principal("sue", "supervisor")]
    with pytest.raises(AuthRefused):
        await asyncio.wait_for(other, 5)
    # Finished checks no longer count (pending went back down).
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")


async def test_a_failed_check_in_flight_and_a_failure_add_up(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(failures_per_source=2)
    await g.refused("nope")  # one failure
    gate = Gate(monkeypatch)
    flying = asyncio.ensure_future(g.guard.check(g.sue, SOURCE))
    await gate.wait_entered(1)
    limited = await g.refused(g.ann)  # 1 failure + 1 in flight = 2
    assert limited.status == 429
    assert limited.retry_after == pytest.approx(60.0)  # the failure's window, not "1 s"
    gate.open.set()
    assert await asyncio.wait_for(flying, 5) == Principal("sue", "supervisor")
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")


async def test_node_wide_pending_checks_are_capped(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(max_pending=2, verify_threads=2)
    gate = Gate(monkeypatch)
    flying = [asyncio.ensure_future(g.guard.check(g.ann, f"10.0.0.{i}")) for i in (1, 2)]
    await gate.wait_entered(2)
    limited = await g.refused(g.sue, "10.0.0.3")  # a fresh source, but the node is busy
    assert (limited.status, limited.reason, limited.retry_after) == (
        429, "too many authentication attempts in progress", 1.0)
    assert g.guard.counters["limited"] == 1
    gate.open.set()
    for f in flying:
        assert await asyncio.wait_for(f, 5) == Principal("ann", "agent")
    assert await g.guard.check(g.sue, "10.0.0.3") == Principal("sue", "supervisor")
    # A key already verified is answered from the cache even when the node is busy.
    gate.open.clear()
    gate2 = [asyncio.ensure_future(g.guard.check(wrong(g.ann), f"10.0.1.{i}")) for i in (1, 2)]
    await gate.wait_entered(2)
    assert await g.guard.check(g.sue, "10.0.0.4") == Principal("sue", "supervisor")
    gate.open.set()
    for f in gate2:
        with pytest.raises(AuthRefused):
            await asyncio.wait_for(f, 5)


# --- key lock-out ------------------------------------------------------------------------------


async def test_wrong_secrets_lock_the_key_out_and_are_audited(
        make: Callable[..., Guarded], clock: Clock) -> None:
    g = make(key_lockout_failures=3, key_lockout_seconds=300.0, failures_per_source=100)
    key_id = g.ann.split("_")[1]
    for _ in range(2):
        assert (await g.refused(wrong(g.ann))).status == 401
    assert g.audit == []
    assert g.guard.counters["locked"] == 0
    assert (await g.refused(wrong(g.ann), OTHER)).status == 401  # the third, from anywhere
    assert g.guard.counters["locked"] == 1
    assert g.audit == [("auth.lockout", {"actor": f"source:{OTHER}", "key_id": key_id,
                                         "seconds": 300.0})]
    # Now even the right secret is refused, from any source, for the lock-out time.
    clock.now += 100
    locked = await g.refused(g.ann, "203.0.113.1")
    assert (locked.status, locked.reason) == (
        429, "API key locked out after repeated wrong secrets")
    assert locked.retry_after == pytest.approx(200.0)
    assert await g.guard.check(g.sue, SOURCE) == Principal("sue", "supervisor")  # others fine
    clock.now += 199.9
    assert (await g.refused(g.ann)).status == 429
    clock.now += 0.1
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    # The count started again: two more wrong secrets do not lock it.
    for _ in range(2):
        assert (await g.refused(wrong(g.ann))).status == 401
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")


async def test_a_locked_key_is_refused_even_if_cached(
        make: Callable[..., Guarded]) -> None:
    g = make(key_lockout_failures=2, failures_per_source=100)
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    for _ in range(2):
        await g.refused(wrong(g.ann))
    assert (await g.refused(g.ann)).status == 429


async def test_a_right_secret_resets_the_count_of_wrong_ones(
        make: Callable[..., Guarded]) -> None:
    g = make(key_lockout_failures=3, failures_per_source=100)
    for _ in range(2):
        await g.refused(wrong(g.ann))
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    for _ in range(2):
        await g.refused(wrong(g.ann))
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert g.guard.counters["locked"] == 0


async def test_wrong_secrets_older_than_the_lockout_time_are_forgotten(
        make: Callable[..., Guarded], clock: Clock) -> None:
    g = make(key_lockout_failures=2, key_lockout_seconds=50.0, failures_per_source=100)
    await g.refused(wrong(g.ann))
    clock.now += 50.0  # exactly one lock-out time later: the first no longer counts
    await g.refused(wrong(g.ann))
    assert g.guard.counters["locked"] == 0
    clock.now += 49.0
    await g.refused(wrong(g.ann))  # within 50 s of the previous one: locked
    assert (await g.refused(g.ann)).status == 429


async def test_unknown_key_ids_are_never_locked_or_tracked(
        make: Callable[..., Guarded]) -> None:
    g = make(key_lockout_failures=2, failures_per_source=100)
    for _ in range(5):
        assert (await g.refused("tg_ffffffff_secret")).status == 401
        assert (await g.refused("nope")).status == 401
    assert g.guard.counters["locked"] == 0
    assert g.guard._key_failures == {}
    assert g.guard._locked_until == {}


async def test_a_key_revoked_meanwhile_keeps_its_failures_counted(
        make: Callable[..., Guarded]) -> None:
    g = make(key_lockout_failures=2, failures_per_source=100)
    await g.refused(wrong(g.ann))
    old_ann = g.ann
    g.directory.revoke("ann")
    # The id is unknown now but already tracked: its failure still counts (and locks it).
    await g.refused(wrong(old_ann))
    assert g.guard.counters["locked"] == 1


# --- reloads and revocations -------------------------------------------------------------------


async def test_a_revoked_or_rotated_key_stops_working_at_once_even_if_cached(
        make: Callable[..., Guarded]) -> None:
    g = make()
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    assert await g.guard.check(g.sue, SOURCE) == Principal("sue", "supervisor")
    assert g.directory.revoke("ann")
    assert (await g.refused(g.ann)).status == 401
    new = g.directory.add("sue", "supervisor", rotate=True)
    assert (await g.refused(g.sue)).status == 401
    assert await g.guard.check(new, SOURCE) == Principal("sue", "supervisor")


async def test_a_key_revoked_while_its_check_runs_is_refused(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make()
    gate = Gate(monkeypatch)
    check = asyncio.ensure_future(g.guard.check(g.ann, SOURCE))
    await gate.wait_entered(1)
    g.directory.revoke("ann")
    gate.open.set()
    with pytest.raises(AuthRefused) as info:
        await asyncio.wait_for(check, 5)
    assert info.value.status == 401
    assert g.guard.counters == {"verified": 0, "cached": 0, "refused": 1, "limited": 0,
                                "locked": 0}


@dataclass
class FileBacked:
    path: Path  # the agents file, which ``writer`` (another process, say) writes
    writer: AgentDirectory
    directory: AgentDirectory  # loaded from the file: the guard's
    guard: KeyGuard
    ann: str


@pytest.fixture
async def file_backed(tmp_path: Path, clock: Clock) -> AsyncIterator[FileBacked]:
    """An agents file holding ann's key, and a guard on it that has verified (cached) that key."""
    path = tmp_path / "agents.json"
    writer = AgentDirectory()
    ann = writer.add("ann", "agent")
    writer.save(path)
    directory = AgentDirectory.load(path)
    guard = KeyGuard(directory, clock=clock)
    try:
        assert await guard.check(ann, SOURCE) == Principal("ann", "agent")
        yield FileBacked(path, writer, directory, guard, ann)
    finally:
        guard.close()


async def test_the_agents_file_is_reread_when_it_changes(file_backed: FileBacked) -> None:
    f = file_backed
    path, writer, guard, ann = f.path, f.writer, f.guard, f.ann
    # A new key written to the file works without a restart.
    bob = writer.add("bob", "supervisor")
    writer.save(path)
    assert await guard.check(bob, SOURCE) == Principal("bob", "supervisor")
    # A half-written file keeps the previous keys.
    path.write_text('{"broken": ')
    assert await guard.check(ann, SOURCE) == Principal("ann", "agent")
    # Revoked in the file: refused at once, although it was cached.
    writer.revoke("ann")
    writer.save(path)
    with pytest.raises(AuthRefused):
        await guard.check(ann, SOURCE)
    assert await guard.check(bob, SOURCE) == Principal("bob", "supervisor")
    # The file removed: every key is refused (fail closed), cached or not.
    path.unlink()
    with pytest.raises(AuthRefused):
        await guard.check(bob, OTHER)
    assert f.directory.agents() == []


# --- memory stays bounded ----------------------------------------------------------------------


async def test_expired_sources_are_forgotten_when_the_table_is_full(
        make: Callable[..., Guarded], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyGuard, "_MAX_SOURCES", 4)
    g = make(failures_per_source=1, failure_window_seconds=60.0)
    for i in range(3):
        await g.refused("nope", f"10.0.0.{i}")
    clock.now += 60.0  # those three have expired
    await g.refused("nope", "10.0.0.3")
    assert len(g.guard._sources) == 4
    await g.refused("nope", "10.0.0.4")  # full: the expired ones go, the live one stays
    assert set(g.guard._sources) == {"10.0.0.3", "10.0.0.4"}
    assert (await g.refused(g.ann, "10.0.0.3")).status == 429  # still limited


async def test_a_table_full_of_live_sources_drops_the_oldest_half_not_the_limits_of_new_ones(
        make: Callable[..., Guarded], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyGuard, "_MAX_SOURCES", 4)
    g = make(failures_per_source=1)
    for i in range(4):
        await g.refused("nope", f"10.0.0.{i}")
        clock.now += 1
    await g.refused("nope", "10.0.0.9")
    assert set(g.guard._sources) == {"10.0.0.2", "10.0.0.3", "10.0.0.9"}
    assert (await g.refused(g.ann, "10.0.0.3")).status == 429


async def test_a_source_with_a_check_in_flight_is_never_dropped(
        make: Callable[..., Guarded], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyGuard, "_MAX_SOURCES", 2)
    g = make(failures_per_source=5)
    gate = Gate(monkeypatch)
    flying = asyncio.ensure_future(g.guard.check(g.ann, "10.0.0.1"))
    await gate.wait_entered(1)
    clock.now += 3600  # 10.0.0.1 has no failure at all, but a check running
    await g.refused("nope", "10.0.0.2")
    await g.refused("nope", "10.0.0.3")  # full: prune, then the oldest half; not 10.0.0.1
    assert "10.0.0.1" in g.guard._sources
    assert g.guard._sources["10.0.0.1"].pending == 1
    gate.open.set()
    assert await asyncio.wait_for(flying, 5) == Principal("ann", "agent")
    assert g.guard._sources["10.0.0.1"].pending == 0


async def test_expired_lockouts_are_forgotten_when_pruning(
        make: Callable[..., Guarded], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyGuard, "_MAX_SOURCES", 2)
    g = make(key_lockout_failures=1, key_lockout_seconds=10.0, failures_per_source=100)
    await g.refused(wrong(g.ann), "10.0.0.1")
    await g.refused(wrong(g.sue), "10.0.0.2")
    key_id = g.sue.split("_")[1]
    clock.now += 5
    await g.refused(wrong(g.sue), "10.0.0.2")  # still locked: refused before any hash
    clock.now += 5  # ann's lock-out (from t=0) ends now, sue's too
    await g.refused("nope", "10.0.0.3")  # table full: prune
    assert g.guard._locked_until == {}
    assert key_id not in g.guard._key_failures


async def test_a_lockout_that_ended_after_a_right_key_is_pruned_cleanly(
        make: Callable[..., Guarded], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyGuard, "_MAX_SOURCES", 2)
    g = make(key_lockout_failures=1, key_lockout_seconds=10.0, failures_per_source=100)
    await g.refused(wrong(g.ann), "10.0.0.1")
    clock.now += 10
    assert await g.guard.check(g.ann, "10.0.0.2") == Principal("ann", "agent")  # forgets ann
    await g.refused("nope", "10.0.0.3")  # table full: prune the ended lock-out
    assert g.guard._locked_until == {}
    # A second lock-out is counted as the second.
    await g.refused(wrong(g.ann), "10.0.0.3")
    assert g.guard.counters["locked"] == 2


async def test_a_lockout_is_logged_with_the_key_id_and_source_never_the_secret(
        make: Callable[..., Guarded]) -> None:
    g = make(key_lockout_failures=1, key_lockout_seconds=42.0, failures_per_source=100)
    with capture_logs() as logs:
        await g.refused(wrong(g.ann), OTHER)
    assert logs == [{"event": "API key locked out after repeated wrong secrets",
                     "log_level": "warning", "key_id": g.ann.split("_")[1], "source": OTHER,
                     "seconds": 42.0}]
    assert g.ann.split("_", 2)[2][:-1] not in repr(logs)


def test_the_guard_checks_keys_on_as_many_threads_as_configured(
        make: Callable[..., Guarded]) -> None:
    # (the pool's size is what bounds the CPU a burst of bad keys can take)
    assert make(verify_threads=3).guard._pool._max_workers == 3
    assert make(verify_threads=1).guard._pool._max_workers == 1
    assert make().guard._pool._max_workers == 1  # by default a key flood takes one core at most


# --- the agents file ---------------------------------------------------------------------------


def test_an_agents_file_that_disappears_empties_the_directory_once_and_says_so(
        tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text("{}")  # no keys yet, but a file: its loss is still reported
    directory = AgentDirectory.load(path)
    before = directory.generation
    path.unlink()
    with capture_logs() as logs:
        directory.refresh()
        directory.refresh()  # already empty and gone: nothing more to say
    assert logs == [{"event": "agents file gone: every API key is refused",
                     "log_level": "warning", "path": str(path)}]
    assert directory.generation == before + 1


def test_an_agents_file_that_cannot_be_parsed_keeps_the_keys_and_is_reported_once(
        tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    writer = AgentDirectory()
    key = writer.add("ann", "agent")
    writer.save(path)
    directory = AgentDirectory.load(path)
    path.write_text('{"half": ')
    with capture_logs() as logs:
        directory.refresh()
        directory.refresh()  # unchanged since: not re-read, not reported again
    assert logs == [{"event": "agents file not reloaded, previous keys kept",
                     "log_level": "warning",
                     "error": f"{path}: not an agents file (invalid JSON)"}]
    assert directory.authenticate(key) == Principal("ann", "agent")
    writer.add("bob", "admin")
    writer.save(path)
    with capture_logs() as logs:
        directory.refresh()
    assert logs == [{"event": "agents file reloaded", "log_level": "info", "path": str(path),
                     "keys": 2}]
    assert directory.agents() == [("ann", "agent"), ("bob", "admin")]


@pytest.mark.parametrize("text", [
    "[]", '"agents"', "3",  # not an object
    '{"0a1b2c3d": "alice"}',  # an entry that is not an object
    '{"0a1b2c3d": {"role": "agent"}}',  # an entry without its fields
    '{"0a1b2c3d": {"agent_id": "a", "role": "agent", "salt": "00"}}',  # no hash
    '{"0a1b2c3d": {"agent_id": "a", "role": "root", "salt": "00", "hash": "00"}}',  # role
])
def test_a_file_that_is_not_an_agents_file_is_refused_saying_so(tmp_path: Path,
                                                                  text: str) -> None:
    path = tmp_path / "agents.json"
    path.write_text(text)
    with pytest.raises(auth.AgentsFileError) as refused:
        AgentDirectory.load(path)
    assert str(refused.value) == f"{path}: not an agents file (unexpected layout)"


def test_a_failed_save_leaves_no_temporary_file_and_raises_the_real_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = AgentDirectory()
    directory.add("ann", "agent")
    target = tmp_path / "agents.json"
    target.mkdir()  # the rename onto it fails
    with pytest.raises(IsADirectoryError):
        directory.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents.json"]

    def cannot_unlink(path: object) -> None:
        raise PermissionError("read-only folder")

    # Even when the clean-up fails too, the caller learns why the save failed.
    monkeypatch.setattr(os, "unlink", cannot_unlink)
    with pytest.raises(IsADirectoryError):
        directory.save(target)


@pytest.fixture
async def cached_ann(clock: Clock) -> AsyncIterator[tuple[AgentDirectory, KeyGuard, str]]:
    """A directory holding one key (ann's) and a guard that has verified (and cached) it."""
    directory = AgentDirectory()
    ann = directory.add("ann", "agent")
    guard = KeyGuard(directory, clock=clock)
    try:
        assert await guard.check(ann, SOURCE) == Principal("ann", "agent")
        yield directory, guard, ann
    finally:
        guard.close()


@pytest.mark.parametrize("saved", [False, True], ids=["in-memory", "after-save"])
async def test_a_revoked_key_is_refused_even_when_the_directory_had_one_key(
        cached_ann: tuple[AgentDirectory, KeyGuard, str], tmp_path: Path, saved: bool) -> None:
    directory, guard, ann = cached_ann
    directory.revoke("ann")
    if saved:
        directory.save(tmp_path / "agents.json")  # (a directory not bound to the file)
    with pytest.raises(AuthRefused):
        await guard.check(ann, SOURCE)


async def test_a_revoked_key_stays_refused_after_more_changes_nobody_checked_between(
        cached_ann: tuple[AgentDirectory, KeyGuard, str], tmp_path: Path) -> None:
    directory, guard, ann = cached_ann
    directory.revoke("ann")
    bob = directory.add("bob", "agent")  # two changes before the next check
    with pytest.raises(AuthRefused):
        await guard.check(ann, SOURCE)
    assert await guard.check(bob, SOURCE) == Principal("bob", "agent")
    directory.revoke("bob")
    directory.save(tmp_path / "agents.json")  # (a directory not bound to the file)
    with pytest.raises(AuthRefused):
        await guard.check(bob, SOURCE)


async def test_a_clock_that_starts_at_zero_locks_no_one_out(make: Callable[..., Guarded],
                                                            clock: Clock) -> None:
    clock.now = 0.0  # a monotonic clock may start anywhere, zero included
    g = make()
    assert await g.guard.check(g.ann, SOURCE) == Principal("ann", "agent")
    clock.now = 0.5
    assert await g.guard.check(g.sue, SOURCE) == Principal("sue", "supervisor")


async def test_finished_checks_free_their_place_in_the_node_wide_cap(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(max_pending=1)
    assert await g.guard.check(g.ann, "10.0.0.1") == Principal("ann", "agent")
    assert await g.guard.check(g.sue, "10.0.0.2") == Principal("sue", "supervisor")
    gate = Gate(monkeypatch)
    flying = asyncio.ensure_future(g.guard.check(wrong(g.ann), "10.0.0.3"))
    await gate.wait_entered(1)
    limited = await g.refused(wrong(g.sue), "10.0.0.4")  # exactly one in flight: full
    assert limited.status == 429
    assert g.guard.counters["limited"] == 1
    assert (await g.refused(wrong(g.sue), "10.0.0.5")).status == 429
    assert g.guard.counters["limited"] == 2
    gate.open.set()
    with pytest.raises(AuthRefused):
        await asyncio.wait_for(flying, 5)


async def test_closing_the_guard_does_not_wait_and_drops_queued_checks(
        make: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    g = make(verify_threads=1)
    gate = Gate(monkeypatch)
    running = asyncio.ensure_future(g.guard.check(g.ann, "10.0.0.1"))
    queued = asyncio.ensure_future(g.guard.check(g.sue, "10.0.0.2"))
    await gate.wait_entered(1)
    await asyncio.sleep(0)  # the second is queued behind the first on the one thread
    # close() returns while a check is still running (it must not block the event loop) ...
    await asyncio.wait_for(asyncio.to_thread(g.guard.close), 2)
    # ... and the queued check is cancelled rather than run after it.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, 5)
    gate.open.set()
    assert await asyncio.wait_for(running, 5) == Principal("ann", "agent")
    assert len(gate.threads) == 1


def test_a_directory_that_never_had_a_file_does_not_report_it_gone(tmp_path: Path) -> None:
    directory = AgentDirectory.load(tmp_path / "agents.json", missing_ok=True)
    before = directory.generation
    with capture_logs() as logs:
        directory.refresh()
    assert logs == [] and directory.generation == before


def test_an_unreadable_agents_file_is_refused_saying_why(tmp_path: Path) -> None:
    folder = tmp_path / "agents.json"
    folder.mkdir()
    with pytest.raises(auth.AgentsFileError) as refused:
        AgentDirectory.load(folder)
    assert str(refused.value) == f"{folder}: cannot read: Is a directory"
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"\xff": 1}')
    with pytest.raises(auth.AgentsFileError) as refused:
        AgentDirectory.load(binary)
    assert str(refused.value) == f"{binary}: cannot read: not UTF-8"
    # Gone between the check for it and the read (load() checked it exists first):
    gone = AgentDirectory(tmp_path / "gone.json")
    with pytest.raises(auth.AgentsFileError) as refused:
        gone._read()
    assert str(refused.value) == f"{tmp_path / 'gone.json'}: no such agents file"


def test_bad_names_and_second_keys_are_refused_saying_so() -> None:
    directory = AgentDirectory()
    with pytest.raises(ValueError) as refused:
        directory.add("no spaces", "agent")
    assert str(refused.value) == "name must be 1-64 characters of A-Z a-z 0-9 . _ -"
    directory.add("bob", "agent")
    with pytest.raises(auth.DuplicateAgentError) as refused:
        directory.add("bob", "agent")
    assert str(refused.value) == "agent 'bob' already has a key"


async def test_a_key_revoked_in_the_file_after_a_change_in_process_is_refused(
        file_backed: FileBacked) -> None:
    file_backed.directory.add("carol", "agent")  # a change in this process ...
    file_backed.writer.revoke("ann")
    file_backed.writer.save(file_backed.path)  # ... and one in the file, before the next check
    with pytest.raises(AuthRefused):
        await file_backed.guard.check(file_backed.ann, SOURCE)
