"""[store] configuration: a URL needs the node set's key; only redis URLs; --store sets it."""

from __future__ import annotations

import pytest

from proxy.service.cli import main
from proxy.service.config import ConfigError, load_config


def test_default_is_a_node_alone() -> None:
    assert load_config().store.url == ""


def test_a_store_url_needs_the_key_file() -> None:
    with pytest.raises(ConfigError, match="store: url needs key_file"):
        load_config(overrides={"store": {"url": "redis://127.0.0.1:6379/0"}})


def test_only_redis_urls() -> None:
    with pytest.raises(ConfigError, match=r"store.url: expected redis://HOST:PORT/DB"):
        load_config(overrides={"store": {"url": "http://127.0.0.1:6379", "key_file": "k"}})


def test_serve_store_flag_is_blamed_for_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--store", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "--store" in err and "key_file" in err


def test_takeover_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="takeover needs a Redis url"):
        load_config(overrides={"store": {"url": "memory://", "key_file": "k",
                                         "takeover": ["node-a"]}})


def test_a_heartbeat_ttl_at_or_below_its_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="heartbeat_ttl_seconds must be above"):
        load_config(overrides={"store": {"heartbeat_seconds": 2.0,
                                         "heartbeat_ttl_seconds": 2.0}})


def test_takeover_settings_load() -> None:
    store = load_config(overrides={"store": {
        "url": "redis://127.0.0.1:6379/0", "key_file": "k", "takeover": ["node-a", "node-b"],
        "heartbeat_seconds": 0.5, "heartbeat_ttl_seconds": 2.0}}).store
    assert (store.takeover, store.heartbeat_seconds, store.heartbeat_ttl_seconds) == (
        ["node-a", "node-b"], 0.5, 2.0)
