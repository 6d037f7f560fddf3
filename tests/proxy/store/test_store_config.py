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
