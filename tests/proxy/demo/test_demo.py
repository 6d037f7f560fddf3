"""The README's first command: `toneguard demo --once` runs the whole product on loopback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from proxy.demo.simulate import TEST_CARDS

pytestmark = pytest.mark.peer


def test_demo_tokenises_a_card_and_the_agent_hears_no_digit() -> None:
    proc = subprocess.run([sys.executable, "-m", "proxy", "demo", "--once", "--api-port",
                           "0"], capture_output=True, text=True, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "PASS: card tokenised, nothing leaked to the agent" in out
    assert "token=tok_" in out and "••••••••••••1111" in out
    assert TEST_CARDS["visa"][0] not in out  # not even the demo's own output shows it
    # "Nothing leaked" counts only if the agent heard the call: the seconds it heard.
    heard = re.search(r"agent's audio \(([\d.]+) s heard of ([\d.]+) s sent\)", out)
    assert heard is not None, out[-3000:]
    assert float(heard[2]) > 5 and float(heard[1]) >= 0.95 * float(heard[2]), heard[0]
    assert "spandsp decoded:      nothing" in out and "multimon-ng decoded:  nothing" in out


def test_the_demo_cards_are_the_published_test_numbers() -> None:
    from proxy.demo.simulate import TEST_CARDS
    assert {brand: card[0] for brand, card in TEST_CARDS.items()} == {
        "visa": "4111111111111111", "mastercard": "5555555555554444",
        "amex": "378282246310005"}
