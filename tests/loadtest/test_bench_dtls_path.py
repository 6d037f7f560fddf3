"""The in-process DTLS/SDES path benchmark runs (a few packets, not for figures)."""

from __future__ import annotations

import re

import pytest

from loadtest import bench_dtls_path


def test_the_path_benchmark_keys_both_legs_and_reports_both_directions(
        capsys: pytest.CaptureFixture[str]) -> None:
    bench_dtls_path.main(["--packets", "400", "--repeat", "1"])
    out = capsys.readouterr().out
    for kind in ("SDES-SRTP", "DTLS-SRTP"):
        assert re.search(rf"^{kind}\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert "DTLS / SDES: carrier → agent" in out
