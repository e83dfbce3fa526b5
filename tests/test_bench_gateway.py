"""The gateway benchmark runs end to end (``--quick --skip-litellm``) and reports every part.

No timing is asserted: the figures belong in the benchmark's own output. This
proves the script works: it starts the fake upstream, ``chatkit serve`` (with
``--workers 2`` and ``--state`` where this chatkit has them), its own load
generator process and a redis-server, and prints a row for every
configuration it measured, or says why one was not measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gateway.py"

ALWAYS = (
    "direct, raw aiohttp (ceiling)",
    "direct, chatkit AsyncClient",
    "chatkit serve, 1 worker",
    "chatkit serve, 2 workers",
    "litellm proxy, 1 worker",
)
STATE = (
    "4 workers, per-process breakers",
    "4 workers, --state redis:// (default 5 ms timeout)",
    "4 workers, --state redis:// --state-timeout 0.05",
)


def _serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "chatkit", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "gateway.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--skip-litellm", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, report


@pytest.mark.timeout(240)
def test_every_configuration_is_in_the_table(quick_run: tuple[str, dict[str, Any]]) -> None:
    table, report = quick_run
    levels = report["settings"]["concurrency"]
    rows = report["throughput"]
    assert {(r["config"], r["concurrency"]) for r in rows} == {
        (name, level) for name in ALWAYS for level in levels
    }
    for name in ALWAYS:
        assert name in table
    measured = {r["config"] for r in rows if r["figures"] is not None}
    assert {"direct, raw aiohttp (ceiling)", "direct, chatkit AsyncClient"} <= measured
    assert "chatkit serve, 1 worker" in measured
    assert "litellm proxy, 1 worker" not in measured  # --skip-litellm
    assert "skipped" in table
    for row in rows:
        if row["figures"] is not None:
            assert row["figures"]["chunks"] > 0, row
            assert row["figures"]["errors"] == 0, row
    if "--workers" in _serve_help():
        assert "chatkit serve, 2 workers" in measured
    else:
        assert "not measured" in table


@pytest.mark.timeout(240)
def test_scale_and_shared_state_are_reported(quick_run: tuple[str, dict[str, Any]]) -> None:
    table, report = quick_run
    for run in report["scale"]:
        assert run["streams"] + run["errors"] == run["streams_started"]
        assert run["streams"] > 0
    assert "streams at once" in table
    state = report["state"]
    help_text = _serve_help()
    redis_here = shutil.which("redis-server") and importlib.util.find_spec("redis")
    if "--state" in help_text and "--workers" in help_text and redis_here:
        assert state["measured"], state
        assert list(state["configs"]) == list(STATE)
        for name in STATE:
            assert name in table
        assert "RedisState" in table and "InMemoryStore" in table
    else:
        assert "not measured" in table


def test_bad_arguments_are_refused_before_any_work() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--concurrency", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--concurrency" in result.stderr
