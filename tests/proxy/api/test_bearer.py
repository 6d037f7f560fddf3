"""The Authorization header as clients really spell it: the scheme is case-insensitive (RFC 9110
§11.1), surrounding blanks are tolerated, and anything that is not a bearer key is refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("spelling", ["Bearer {k}", "bearer {k}", "BEARER {k}", " Bearer  {k} "])
def test_any_case_of_the_bearer_scheme_is_accepted(client_and_key: tuple[TestClient, str],
                                                   spelling: str) -> None:
    client, key = client_and_key
    r = client.get("/v1/calls", headers={"Authorization": spelling.format(k=key)})
    assert r.status_code == 200, r.text
    assert [c["call_id"] for c in r.json()] == ["c-ann"]


@pytest.mark.parametrize("spelling", ["{k}", "Basic {k}", "Bearer", "Bearer ", "Bearerx {k}",
                                      "Token {k}"])
def test_other_schemes_and_a_missing_key_are_refused(client_and_key: tuple[TestClient, str],
                                                     spelling: str) -> None:
    client, key = client_and_key
    r = client.get("/v1/calls", headers={"Authorization": spelling.format(k=key)})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
