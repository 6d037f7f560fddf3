"""Hypothesis strategies for hostile HTTP requests, and the invariants every answer must keep.

Shared by the proxy API and gateway fuzz tests. Requests are random methods, paths (known
routes with hostile segments, or anything percent-encoded), headers (keys right and wrong, card
numbers, junk) and bodies (JSON of any shape with card numbers in it, deep nesting, bytes that
are not UTF-8, bodies over the size limit).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PANS = ("4111111111111111", "5555555555554444", "378282246310005")
# 10 000 per surface in the test suite, like every surface of the campaign (tests/fuzzing.py);
# `./dev.sh fuzz` runs more (TONEGUARD_FUZZ_INPUTS).
EXAMPLES = int(os.environ.get("TONEGUARD_FUZZ_INPUTS", "10000"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                         database=None, print_blob=False,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example, kept short
        return f"Request({self.method} {self.path[:120]!r} {self.headers} body[{len(self.body)}])"


def _header_text(text: str) -> str:
    """Header values as a client can send them: latin-1, no line breaks."""
    return text.encode("latin-1", "replace").decode("latin-1").replace("\r", "").replace(
        "\n", "")


segments = st.one_of(
    st.sampled_from(["v1", "calls", "payments", "assign", "events", "me", "static", "panel",
                     "metrics", "openapi.json", "docs", "health", "tokens", "c1", "c2",
                     "panel.js", "%00", "..", "%2e%2e", "%ff", "%2f", "x" * 300, *PANS]),
    st.text(max_size=30).map(lambda t: quote(t, safe="")),
)
ids = st.one_of(st.sampled_from(["c1", "c2"]), segments)
routes = st.one_of(
    st.sampled_from(["/v1/me", "/v1/calls", "/metrics", "/openapi.json", "/panel",
                     "/static/panel.js", "/health", "/v1/tokens", "/v1/events"]),
    st.tuples(st.sampled_from(["/v1/calls/{}/payments", "/v1/calls/{}/assign",
                               "/v1/calls/{}/payments/{}", "/static/{}", "/v1/tokens/{}"]),
              ids, segments).map(lambda t: t[0].format(t[1], t[2])),
)
# Mostly real routes (the fuzz must get past routing to mean anything), some anything.
paths = st.one_of(routes, routes, st.lists(segments, max_size=6).map(lambda s: "/".join(s)))
queries = st.one_of(st.just(""), st.sampled_from([f"?key={PANS[0]}", "?a=b&c", "?%ff=%00"]),
                    st.text(max_size=30).map(lambda t: "?" + quote(t, safe="=&")))
methods = st.one_of(st.sampled_from(["GET", "POST"]),
                    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                     "HEAD"]),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10))
json_keys = st.one_of(st.sampled_from(["amount", "currency", "Capture", "Status", "agent_id",
                                       "postal_code", "valid_card_types", "payment_method",
                                       "pan", "expiry", "security_code", *PANS]),
                      st.text(max_size=10))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.sampled_from([*PANS, "complete", "cancel", "payment-card-number", "1230",
                               "123", "12.50", "EUR", "visa"])),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(json_keys, children, max_size=6)),
    max_leaves=25)
bodies = st.one_of(
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(json_keys, json_values, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=2000),
    st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),  # nesting, within the limit
    st.sampled_from([b"x" * 70_000, b'{"pan": "' + PANS[0].encode() * 5000 + b'"}']),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),  # not UTF-8
    st.sampled_from(PANS).map(lambda p: b'{"amount": "' + p.encode() + b'", "\xff": 1}'),
)


def shaped_json(fields: dict[str, list[object]]) -> st.SearchStrategy[bytes]:
    """A JSON object of (some of) ``fields`` with plausible values, or any JSON value for one:
    requests that get past parsing and into validation and the handlers."""
    value = {name: st.one_of(st.sampled_from(values), json_values)
             for name, values in fields.items()}
    plausible = st.fixed_dictionaries({}, optional={
        name: st.sampled_from(values) for name, values in fields.items()})
    return st.one_of(plausible, plausible,
                     st.fixed_dictionaries({}, optional=value)).map(
        lambda d: json.dumps(d).encode())


def requests(auth_values: list[str], extra_headers: dict[str, list[str]],
             shaped: list[tuple[str, st.SearchStrategy[str], st.SearchStrategy[bytes]]],
             shaped_headers: dict[str, st.SearchStrategy[str]] | None = None
             ) -> st.SearchStrategy[Request]:
    """Requests whose Authorization is one of ``auth_values`` (or junk, or none) and whose
    other headers come from ``extra_headers`` (name → candidate values) or junk. Half are
    ``shaped`` (method, path, body as a route expects them), half anything."""
    known = [st.sampled_from(auth_values)] * 2 if auth_values else []
    auth = st.one_of(st.none(), *known, st.text(max_size=60).map(lambda t: "Bearer " + t),
                     st.sampled_from([f"Bearer {p}" for p in PANS]))
    others = st.fixed_dictionaries({}, optional={
        name: st.one_of(st.sampled_from(values), st.text(max_size=40))
        for name, values in extra_headers.items()})
    content_type = st.sampled_from(["application/json", "text/plain", "", "multipart/form-data",
                                    "application/x-www-form-urlencoded; charset=utf-8"])

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Request:
        headers = {k: _header_text(v) for k, v in draw(others).items()}
        if (value := draw(auth)) is not None:
            headers["Authorization"] = _header_text(value)
        if draw(st.booleans()):
            headers["Content-Type"] = draw(content_type)
        if shaped and draw(st.booleans()):
            method, path_strategy, body_strategy = draw(st.sampled_from(shaped))
            path, body = draw(path_strategy), draw(body_strategy)
            headers.setdefault("Content-Type", "application/json")
            if auth_values and draw(st.integers(0, 9)):  # mostly with a key that works
                headers["Authorization"] = draw(st.sampled_from(auth_values))
            for name, values in (shaped_headers or {}).items():
                if draw(st.integers(0, 9)):  # mostly with the headers the route needs
                    headers[name] = draw(values)
        else:
            method, path, body = draw(methods), draw(paths), draw(bodies)
        # "//x" would be read as a host by the client: one leading slash.
        path = "/" + path.lstrip("/")
        return Request(method, path + draw(queries), headers, body)

    return build()


@dataclass
class LogCatcher(logging.Handler):
    """Every log record of the process while installed, formatted with tracebacks, except
    the test's own HTTP client's (it logs the URLs the fuzz made up)."""

    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self, logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("httpx", "httpcore", "hpack")):
            self.lines.append(self.format(record))

    def __hash__(self) -> int:
        return id(self)


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    """No card number, no API key secret and no traceback in ``text``."""
    assert "Traceback" not in text, f"traceback in {where}"
    for pan in PANS:
        assert pan not in text, f"card number in {where}"
    for secret in secrets:
        assert secret not in text, f"API key in {where}"
