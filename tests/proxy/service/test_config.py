"""Configuration: defaults, file, overrides; every bad value named with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.service.config import ConfigError, load_config, parse_hostport


def test_the_shipped_defaults_load_and_match_the_documented_file() -> None:
    config = load_config()
    assert config.ng.listen == "127.0.0.1:2223" and config.masking.mode == "tone"
    repo_copy = Path(__file__).parents[3] / "config" / "toneguard.toml"
    assert load_config(repo_copy) == config
    # Word for word: the embedded defaults document every key as the example file does.
    embedded = Path(__file__).parents[3] / "proxy" / "service" / "defaults" / "toneguard.toml"
    assert embedded.read_text() == repo_copy.read_text()


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[media]\nport_min = 32000\nport_max = 33000\n[masking]\nmode = "silence"\n')
    config = load_config(path, {"media": {"port_max": 34000}})
    assert (config.media.port_min, config.media.port_max) == (32000, 34000)
    assert config.masking.mode == "silence"


@pytest.mark.parametrize(("toml", "message"), [
    ("[media]\nport_min = 70000", "site.toml: media.port_min: Input should be less than"),
    ("[media]\nport_min = 30001", "site.toml: media.port_min: must be an even integer"),
    ("[media]\nport_min = 40000\nport_max = 40002", "port_max must be at least"),
    ("[media]\nportmin = 1", "site.toml: media.portmin: unknown key"),
    ('[ng]\nlisten = "localhost"', "site.toml: ng.listen: expected HOST:PORT"),
    ('[masking]\nmode = "shout"', "unknown DTMF-security mode 'shout'"),
    ('[gateway]\nurl = "http://x:1"', "gateway: url needs ca_file"),
    ('[logging]\nformat = "xml"', "site.toml: logging.format"),
    ("not toml [", "site.toml: not valid TOML"),
])
def test_bad_values_name_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_hostport_parsing_including_ipv6() -> None:
    assert parse_hostport("[::1]:2223") == ("::1", 2223)
    assert parse_hostport("127.0.0.1:80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError):
        parse_hostport("::1")
