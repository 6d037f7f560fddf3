"""The relay benchmark runs end to end (a few calls, not for figures): both relays, real ng."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from loadtest import bench_relay


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("rtpengine") is None, reason="rtpengine-daemon not installed")
def test_the_relay_benchmark_runs_both_relays_and_verifies_srtp(
        capsys: pytest.CaptureFixture[str]) -> None:
    cpus = os.sched_getaffinity(0)
    bench_relay.main(["--calls", "4", "8", "--seconds", "1", "--repeat", "1", "--relays",
                      "rtpengine SRTP relay", "ToneGuard SRTP relay", "ToneGuard relay ×2"])
    out = capsys.readouterr().out
    rows = {line[:26].strip(): line for line in out.splitlines() if " 4 " in line[26:34]}
    assert set(rows) == {"rtpengine SRTP relay", "ToneGuard SRTP relay", "ToneGuard relay ×2"}
    # Delivery on a shared 2-core machine: nearly all, not necessarily every packet (a relay
    # that relays nothing, or a fraction, still fails); SRTP checked packet-exact below.
    for name, row in rows.items():
        delivered = re.search(r"\s(\d+\.\d{3})%", row)
        assert delivered is not None, row
        assert float(delivered[1]) >= 99.0, (name, row)
    assert "!!" not in out  # every SRTP stream decrypted to what was sent, nothing foreign
    assert "Most calls run" in out
    assert os.sched_getaffinity(0) == cpus  # the generator's pinning is undone


@pytest.mark.peer
def test_the_relay_benchmark_keys_dtls_agent_legs_and_verifies_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    bench_relay.main(["--calls", "4", "--seconds", "1", "--repeat", "1", "--relays",
                      "ToneGuard DTLS relay"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("ToneGuard DTLS relay "))
    delivered = re.search(r"\s(\d+\.\d{3})%", row)
    assert delivered is not None and float(delivered[1]) >= 99.0, row
    assert "!!" not in out  # every agent stream decrypted with its DTLS keys to what was sent
    assert re.search(r"ToneGuard DTLS relay\s+4 calls: relay CPU [\d.]+ ms per call", out)
