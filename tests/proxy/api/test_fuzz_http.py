"""Fuzzing the proxy API in-process (httpx ASGI transport): ≥ 2 000 seeded hostile requests.

Invariants: no 5xx, no exception out of the app, no traceback in the logs, no card number and
no API key in any answer or log line. Real-socket cases are in test_hostile.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.api.app import ApiSettings, create_app
from proxy.api.auth import AgentDirectory, AuthSettings
from proxy.securepay.audit import AuditLog
from proxy.securepay.manager import PaymentManager
from tests.proxy.api.http_fuzz import (
    FUZZ_SETTINGS,
    PANS,
    LogCatcher,
    Request,
    assert_clean,
    requests,
    shaped_json,
)


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    keys: dict[str, str]
    logs: LogCatcher
    statuses: dict[int, int]

    def send(self, request: Request) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(
            request.method, request.path, content=request.body,
            headers={k.encode(): v.encode("latin-1") for k, v in request.headers.items()}))


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    manager = PaymentManager(None, audit=AuditLog(None))
    manager.call_started("c1", "agent=alice")
    manager.call_started("c2")
    manager.call_started("c3", "agent=sue")
    agents = AgentDirectory()
    keys = {name: agents.add(name, role) for name, role in (
        ("alice", "agent"), ("sue", "supervisor"))}
    # Limits out of the way so the fuzz reaches the routes (tests of the limits are apart).
    settings = ApiSettings(auth=AuthSettings(failures_per_source=10**9,
                                             key_lockout_failures=10**9))
    app = create_app(manager, agents, lambda: b"toneguard_fuzz_total 1\n", settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg")
    logs = LogCatcher()
    root = logging.getLogger()
    root.addHandler(logs)
    try:
        yield Harness(loop, client, keys, logs, {})
    finally:
        root.removeHandler(logs)
        loop.run_until_complete(client.aclose())
        loop.close()
        app.state.key_guard.close()


def _secrets(h: Harness) -> list[str]:
    return [key.split("_", 2)[2] for key in h.keys.values()]


def _strategy() -> st.SearchStrategy[Request]:
    alice, sue = "tg_00000000_placeholder", "tg_00000001_placeholder"
    calls = st.sampled_from(["c1", "c2", "c3", PANS[0]])
    sids = st.one_of(st.sampled_from(["PA00", PANS[1]]), st.text(max_size=8).map(quote))
    no_body = st.just(b"")
    shaped = [
        ("GET", st.sampled_from(["/v1/me", "/v1/calls", "/metrics", "/openapi.json",
                                 "/panel", "/static/panel.js", "/health"]), no_body),
        ("POST", calls.map("/v1/calls/{}/payments".format), shaped_json({
            "payment_method": ["credit-card", PANS[0]], "postal_code": [True, False, PANS[0]],
            "valid_card_types": [["visa"], [PANS[0]], "visa"],
            "amount": ["12.50", PANS[0], "1e9"], "currency": ["EUR", PANS[2]]})),
        ("POST", st.tuples(calls, sids).map(lambda t: f"/v1/calls/{t[0]}/payments/{t[1]}"),
         shaped_json({"Capture": ["payment-card-number", "security-code", PANS[0]],
                      "Status": ["complete", "cancel", PANS[1]]})),
        ("GET", st.tuples(calls, sids).map(lambda t: f"/v1/calls/{t[0]}/payments/{t[1]}"),
         no_body),
        ("POST", calls.map("/v1/calls/{}/assign".format),
         shaped_json({"agent_id": ["alice", "sue", "nobody", PANS[0], "x" * 65]})),
    ]
    return requests([f"Bearer {alice}", f"Bearer {sue}"],
                    {"Idempotency-Key": [PANS[0], "k1", "x" * 300]}, shaped)


@given(request=_strategy())
@FUZZ_SETTINGS
def test_hostile_requests_never_crash_or_leak(harness: Harness, request: Request) -> None:
    # The strategy is built before the keys exist: swap the placeholders for real keys.
    auth = request.headers.get("Authorization", "")
    for placeholder, name in (("tg_00000000_placeholder", "alice"),
                              ("tg_00000001_placeholder", "sue")):
        auth = auth.replace(placeholder, harness.keys[name])
    if auth:
        request.headers["Authorization"] = auth
    response = harness.send(request)
    harness.statuses[response.status_code] = harness.statuses.get(response.status_code, 0) + 1
    assert response.status_code < 500, (request, response.status_code)
    assert_clean(response.text + str(response.headers.raw), _secrets(harness), "a response")


def test_the_fuzz_reached_the_routes_and_logged_nothing_secret(harness: Harness) -> None:
    """Runs after the fuzz (same module fixture): it got past authentication and validation
    often enough to mean something, and nothing it logged carries a secret."""
    seen = harness.statuses
    print("fuzz statuses", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 2000 or not seen
    if seen:
        for status in (200, 401, 403, 404, 413, 422):
            assert seen.get(status, 0) > 0, seen
        assert seen.get(201, 0) + seen.get(409, 0) > 0, seen  # payments were started
    assert_clean("\n".join(harness.logs.lines), _secrets(harness), "the logs")
