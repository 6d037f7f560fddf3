"""Fuzzing the gateway's HTTP app in-process: ≥ 2 000 seeded hostile requests.

Invariants: no 5xx, no exception out of the app, no traceback, no card number and no
Idempotency-Key in any answer or log line (its request log included). The real-socket cases
(mutual TLS) are in test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.pki import init_pki
from gateway.store import TokenStore, load_key
from tests.proxy.api.http_fuzz import (
    FUZZ_SETTINGS,
    PANS,
    LogCatcher,
    Request,
    assert_clean,
    requests,
    shaped_json,
)

SECRET_KEY = "idem-fuzz-secret-key"  # an Idempotency-Key that must never come back


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    store: TokenStore
    database: Path
    logs: LogCatcher
    statuses: dict[int, int]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    pki = init_pki(tmp_path_factory.mktemp("gateway-fuzz"))
    store = TokenStore(pki.database, load_key(pki.aes_key))
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)),
                               base_url="https://gateway")
    logs = LogCatcher()
    gateway_log = logging.getLogger("toneguard.gateway")
    level = gateway_log.level
    gateway_log.setLevel(logging.INFO)
    logging.getLogger().addHandler(logs)
    try:
        yield Harness(loop, client, store, pki.database, logs, {})
    finally:
        logging.getLogger().removeHandler(logs)
        gateway_log.setLevel(level)
        loop.run_until_complete(client.aclose())
        loop.close()
        store.close()


def _strategy() -> st.SearchStrategy[Request]:
    body = shaped_json({"pan": [*PANS, "4000000000000002", "4111111111111112", "1" * 19],
                        "expiry": ["1230", "0120", "1399", PANS[0]],
                        "security_code": ["123", "1234", PANS[1]],
                        "postal_code": ["12345", None, PANS[2], "x" * 11]})
    valid = st.fixed_dictionaries({
        "pan": st.sampled_from([*PANS, "4000000000000002"]), "expiry": st.just("1230"),
        "security_code": st.sampled_from(["123", "1234"])}).map(
        lambda d: json.dumps(d).encode())
    shaped = [("POST", st.just("/v1/tokens"), body), ("POST", st.just("/v1/tokens"), valid),
              ("GET", st.just("/health"), st.just(b""))]
    keys = [SECRET_KEY, SECRET_KEY + "-2", *PANS, "short", "k" * 129, "PA" + "0f" * 16]
    return requests([], {"Idempotency-Key": keys}, shaped,
                    shaped_headers={"Idempotency-Key": st.one_of(
                        st.sampled_from([SECRET_KEY, SECRET_KEY + "-2", PANS[0]]),
                        st.integers(0, 10**9).map("idem-fresh-{}".format))})


@given(request=_strategy())
@FUZZ_SETTINGS
def test_hostile_requests_never_crash_or_leak(harness: Harness, request: Request) -> None:
    response = harness.loop.run_until_complete(harness.client.request(
        request.method, request.path, content=request.body,
        headers={k.encode(): v.encode("latin-1") for k, v in request.headers.items()}))
    harness.statuses[response.status_code] = harness.statuses.get(response.status_code, 0) + 1
    assert response.status_code < 500, (request, response.status_code)
    text = response.text + str(response.headers.raw)
    assert_clean(text, [SECRET_KEY], "a response")


def test_the_fuzz_reached_the_gateway_and_kept_its_secrets(harness: Harness) -> None:
    seen = harness.statuses
    print("fuzz statuses", dict(sorted(seen.items())))
    if seen:
        assert sum(seen.values()) >= 2000
        for status in (200, 201, 402, 404, 409, 413, 422):
            assert seen.get(status, 0) > 0, seen
    lines = "\n".join(harness.logs.lines)
    assert_clean(lines, [SECRET_KEY], "the logs")
    assert not seen or "POST /v1/tokens" in lines  # the request log was captured
    raw = harness.database.read_bytes()
    assert all(pan.encode() not in raw for pan in PANS) and SECRET_KEY.encode() not in raw
