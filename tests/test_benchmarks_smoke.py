"""The benchmark script runs end to end (tiny sizes, one round) and prints its table.

No timing is asserted: speed belongs in the benchmark's own output. This only
proves the script works: it starts the fake server in its own process, drives
every contender through every workload, checks the chunk counts, and reports.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run.py"

TINY = [
    "--quick",
    "--rounds",
    "1",
    "--long-chunks",
    "40",
    "--streams",
    "3",
    "--stream-chunks",
    "4",
    "--sequential",
    "3",
    "--batch",
    "6",
    "--batch-concurrency",
    "3",
    "--import-runs",
    "1",
]


@pytest.mark.timeout(240)
def test_quick_run_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for row in (
        "one stream, 40 chunks (chunks/s)",
        "3 streams x 4 chunks (chunks/s)",
        "3 sequential requests (req/s)",
        "6 requests, 3 at a time (req/s)",
        "import chatkit (ms, fresh process)",
        "import openai (ms, fresh process)",
        "targets",
        "chatkit async streaming >= 0.6x raw floor (one stream)",
        "chatkit async streaming >= 0.5x limit raw+orjson (one stream)",
        "RSS per idle AsyncClient (KB, after one request)",
        "import chatkit < 50 ms",
    ):
        assert row in table, f"missing {row!r} in:\n{table}"
    for column in ("limit raw+orjson", "raw aiohttp+json", "chatkit async", "openai async"):
        assert column in table
    assert "openai sync" in table

    report = json.loads(out.read_text())
    assert report["rounds"] == 1
    assert report["sizes"]["long_chunks"] == 40
    long_row = report["results"]["long"]
    for name in ("raw aiohttp+json", "chatkit async", "openai async", "openai sync"):
        assert len(long_row[name]) == 1 and long_row[name][0] > 0
    assert {v["target"] for v in report["targets"]} >= {"import chatkit < 50 ms"}
    assert report["results"]["long"]["limit raw+orjson"][0] > 0
    assert len(report["idle_client_rss_kb"]) == 1


def test_sync_row_present_once_the_sync_client_exists() -> None:
    """The chatkit sync contender is measured whenever ``chatkit.Client`` exists."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        contenders = importlib.import_module("contenders")  # benchmarks/, not on mypy's path
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    names = contenders.available()
    try:
        from chatkit import Client  # noqa: F401
    except ImportError:
        assert "chatkit sync" not in names
    else:
        assert "chatkit sync" in names
    assert {"raw aiohttp+json", "chatkit async", "openai async", "openai sync"} <= set(names)


def test_bad_sizes_are_refused_before_any_work() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--long-chunks", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--long-chunks" in result.stderr


def _run_benchmark(script: str, *args: str) -> str:
    """Run ``benchmarks/<script>`` with ``args``; its output, after checking it succeeded."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_hooks_benchmark_runs_and_prints_every_contender() -> None:
    out = _run_benchmark("bench_hooks.py", "--quick")
    for name in ("raw aiohttp+json", "chatkit async", "no-op hook", "LoggingHook"):
        assert name in out


def test_the_layers_benchmark_runs_and_checks_its_counts() -> None:
    out = _run_benchmark("bench_layers.py", "--quick", "--rounds", "1")
    for name in (
        "limit: raw reads",
        "validate_json",
        "models copied in Python",
        "AsyncClient (everything)",
        "floor: + request check",
        "transport",
        "floor / raw aiohttp",
    ):
        assert name in out


def test_the_sync_benchmark_runs_and_reports_each_thread() -> None:
    out = _run_benchmark("bench_sync.py", "--quick")
    for name in ("chatkit async", "chatkit sync", "caller thread", "sync rate / async rate"):
        assert name in out
