"""The resilience simulation runs end to end (``--quick``) and writes its figures.

No timing is asserted: latency belongs in the benchmark's own output. This
proves the script works: it starts the three scripted servers in their own
process, drives every configuration through ``RetryProvider``, and reports
numbers for each. The one behaviour checked is what the circuit breaker is
for: with it on, fewer requests reach the provider while it is down.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_resilience.py"

CONFIGS = (
    "baseline",
    "+breaker",
    "+hedge 50 ms",
    "+hedge auto",
    "+rate limit",
    "+breaker +hedge",
    "all on",
)
NUMBERS = ("p50_ms", "p90_ms", "p99_ms", "error_rate", "wasted", "refused_429", "requests_per_call")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "resilience.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, report


@pytest.mark.timeout(180)
def test_every_configuration_has_its_figures(quick_run: tuple[str, dict[str, Any]]) -> None:
    table, report = quick_run
    assert list(report["configs"]) == list(CONFIGS)
    for name, figures in report["configs"].items():
        assert name in table
        assert figures["calls"] == report["scenario"]["calls"]
        for key in NUMBERS:
            value = figures[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, key)
            assert math.isfinite(value) and value >= 0, (name, key, value)
        assert 0 <= figures["error_rate"] <= 1
        assert figures["p50_ms"] <= figures["p99_ms"]
        assert figures["requests_per_call"] >= 1  # every call reached some provider
    for column in ("p50 ms", "p99 ms", "errors", "wasted on flaky"):
        assert column in table


@pytest.mark.timeout(180)
def test_the_breaker_spares_the_provider_that_is_down(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    configs = report["configs"]
    down_from, down_to = report["scenario"]["flaky_down_calls"]
    # Without a breaker every call of the outage tries flaky first.
    assert configs["baseline"]["wasted"] == down_to - down_from
    for without, with_breaker in (("baseline", "+breaker"), ("+hedge 50 ms", "+breaker +hedge")):
        assert configs[with_breaker]["wasted"] < configs[without]["wasted"], (without, with_breaker)
    assert configs["all on"]["wasted"] < configs["+rate limit"]["wasted"]


def test_bad_arguments_are_refused_before_any_work() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--calls", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--calls" in result.stderr
