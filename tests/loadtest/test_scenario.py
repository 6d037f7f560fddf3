"""Scenario files: the shipped examples load; bad ones are refused naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.scenario import ScenarioError, keying_seconds, load_scenario, parse_scenario

EXAMPLES = sorted((Path(__file__).parents[2] / "config" / "loadtest").glob("*.toml"))


def test_the_four_examples_are_shipped() -> None:
    assert {p.stem for p in EXAMPLES} >= {"smoke", "steady-300", "ramp", "payment-storm"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_smoke_is_twenty_calls_of_ten_seconds_with_payments() -> None:
    smoke = load_scenario(EXAMPLES[0].parent / "smoke.toml")
    assert (smoke.calls.total, smoke.calls.hold_seconds) == (20, 10)
    assert smoke.payments.share > 0


def test_unknown_key_is_named_with_its_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[cards]\ntone_msec = 80\n')
    with pytest.raises(ScenarioError, match=r"^bad\.toml: cards\.tone_msec: unknown key$"):
        load_scenario(path)


def test_out_of_range_value_names_the_key_and_the_bound() -> None:
    with pytest.raises(ScenarioError, match=r"s\.toml: payments\.share: .*less than or equal "
                                            r"to 1"):
        parse_scenario({"payments": {"share": 1.5}}, "s.toml")


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"media\.codec: Input should be 'PCMU' or 'PCMA'"):
        parse_scenario({"media": {"codec": "G722"}})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"calls": {"total": 0}, "media": {"caller_transport": "TLS"}}, "x.toml")
    assert "x.toml: calls.total:" in str(info.value)
    assert "x.toml: media.caller_transport:" in str(info.value)


def test_keying_that_outlasts_the_call_names_hold_seconds() -> None:
    with pytest.raises(ScenarioError, match=r"^s\.toml: calls\.hold_seconds: card entry ends"):
        parse_scenario({"calls": {"hold_seconds": 4}}, "s.toml")


def test_concurrency_above_total_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"calls\.concurrency is larger than calls\.total"):
        parse_scenario({"calls": {"total": 5, "concurrency": 10}})


def test_not_toml_says_so(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[calls\n")
    with pytest.raises(ScenarioError, match=r"^broken\.toml: not valid TOML"):
        load_scenario(path)


def test_keying_time_counts_every_key_and_pause() -> None:
    cards = parse_scenario({}).cards
    # 27 keys of 80 + 80 ms and three 300 ms pauses.
    assert keying_seconds(cards) == pytest.approx(27 * 0.16 + 0.9)


def test_target_defaults_to_each_relays_own_workers_and_one_node() -> None:
    target = parse_scenario({}).target
    assert target.workers is None and target.nodes == [1]


@pytest.mark.parametrize(("nodes", "message"), [
    ([1, 1], "a node count is listed twice"), ([0], "each node count must be 1 to 8"),
    ([9], "each node count must be 1 to 8")])
def test_bad_node_counts_are_refused_naming_the_key(nodes: list[int], message: str) -> None:
    with pytest.raises(ScenarioError, match=rf"^s\.toml: target\.nodes: {message}$"):
        parse_scenario({"target": {"nodes": nodes}}, "s.toml")


def test_command_line_workers_and_nodes_override_the_file_and_are_validated() -> None:
    from loadtest.cli import with_target

    scenario = parse_scenario({"target": {"workers": 1}})
    assert with_target(scenario, workers=None, nodes=None) is scenario
    changed = with_target(scenario, workers=2, nodes=[1, 2])
    assert (changed.target.workers, changed.target.nodes) == (2, [1, 2])
    with pytest.raises(ScenarioError, match=r"^command line: target\.workers: .*greater than"):
        with_target(scenario, workers=-1, nodes=None)
