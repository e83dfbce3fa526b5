"""What the benchmark measured, judged against the targets and printed as a table."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contenders import (
    CEILING,
    CHATKIT_ASYNC,
    CHATKIT_SYNC,
    COLUMNS,
    LIMIT,
    OPENAI_ASYNC,
    RAW,
)
from measure import Sizes

Results = dict[str, dict[str, list[float | None]]]
"""workload key -> contender name -> one value per round (None: that run failed)."""


def median(values: list[float | None]) -> float | None:
    """The median of the runs that succeeded, or None when none did."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    contenders: tuple[str, ...]


_ASYNC = (LIMIT, RAW, CHATKIT_ASYNC, OPENAI_ASYNC)
WORKLOADS = [
    Workload(
        "long",
        "one stream, {long_chunks} chunks",
        "chunks/s",
        (*_ASYNC, CHATKIT_SYNC, "openai sync", CEILING),
    ),
    Workload(
        "concurrent", "{streams} streams x {stream_chunks} chunks", "chunks/s", (*_ASYNC, CEILING)
    ),
    Workload("sequential", "{sequential} sequential requests", "req/s", _ASYNC),
    Workload("batch", "{batch} requests, {batch_concurrency} at a time", "req/s", _ASYNC),
]


@dataclass(frozen=True)
class Target:
    label: str
    workload: str
    subject: str
    baseline: str
    at_least: float


TARGETS = [
    # Issue 17: against the practical limit (raw reads + split + orjson, no models).
    Target(
        "chatkit async streaming >= 0.5x limit raw+orjson (one stream)",
        "long",
        CHATKIT_ASYNC,
        LIMIT,
        0.5,
    ),
    Target(
        "chatkit async streaming >= 0.6x raw floor (one stream)", "long", CHATKIT_ASYNC, RAW, 0.6
    ),
    Target(
        "chatkit async streaming >= 0.6x raw floor (many streams)",
        "concurrent",
        CHATKIT_ASYNC,
        RAW,
        0.6,
    ),
    Target(
        "chatkit async streaming >= 4x openai (one stream)", "long", CHATKIT_ASYNC, OPENAI_ASYNC, 4
    ),
    Target(
        "chatkit async streaming >= 4x openai (many streams)",
        "concurrent",
        CHATKIT_ASYNC,
        OPENAI_ASYNC,
        4,
    ),
    Target(
        "chatkit sync streaming >= 0.7x chatkit async (one stream)",
        "long",
        CHATKIT_SYNC,
        CHATKIT_ASYNC,
        0.7,
    ),
    Target(
        "chatkit non-streamed >= 0.9x raw floor (sequential)", "sequential", CHATKIT_ASYNC, RAW, 0.9
    ),
    Target("chatkit non-streamed >= 0.9x raw floor (concurrent)", "batch", CHATKIT_ASYNC, RAW, 0.9),
]
IMPORT_TARGET_MS = 50.0


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("chatkit", "aiohttp", "pydantic", "pydantic-core", "openai", "httpx", "httpx2"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _ratios(results: Results, target: Target) -> list[float]:
    """Per-round ratios subject / baseline (rounds pair up by position)."""
    row = results.get(target.workload, {})
    subject, baseline = row.get(target.subject, []), row.get(target.baseline, [])
    return [s / b for s, b in zip(subject, baseline, strict=False) if s is not None and b]


def evaluate(
    results: Results, imports: dict[str, list[float]], cpu_results: Results | None = None
) -> list[dict[str, Any]]:
    """Each target with its median ratio, whether it is met, and the per-round values.

    Targets are judged on wall-clock rates; the same ratio computed on
    client-CPU rates (``cpu_value``) is reported beside it as a noise check.
    """
    verdicts = []
    for target in TARGETS:
        ratios = _ratios(results, target)
        ratio = statistics.median(ratios) if ratios else None
        cpu_ratios = _ratios(cpu_results, target) if cpu_results is not None else []
        row = results.get(target.workload, {})
        subject, baseline = (
            median(row.get(target.subject, [])),
            median(row.get(target.baseline, [])),
        )
        verdicts.append(
            {
                "target": target.label,
                "value": None if ratio is None else round(ratio, 3),
                "unit": "x",
                "required": target.at_least,
                "met": None if ratio is None else ratio >= target.at_least,
                "per_round": [round(r, 3) for r in ratios],
                "cpu_value": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
                "of_medians": round(subject / baseline, 3) if subject and baseline else None,
            }
        )
    times = imports.get("import chatkit", [])
    median_ms = statistics.median(times) if times else None
    verdicts.append(
        {
            "target": f"import chatkit < {IMPORT_TARGET_MS:.0f} ms",
            "value": None if median_ms is None else round(median_ms, 1),
            "unit": "ms",
            "required": IMPORT_TARGET_MS,
            "met": None if median_ms is None else median_ms < IMPORT_TARGET_MS,
            "per_round": [round(t, 1) for t in times],
            "cpu_value": None,
            "of_medians": None,
        }
    )
    return verdicts


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _rows(
    results: Results, columns: list[str], labels: list[str], first: int, width: int
) -> list[str]:
    lines = ["workload".ljust(first) + "".join(c.rjust(width) for c in columns)]
    for label, workload in zip(labels, WORKLOADS, strict=False):
        row = results.get(workload.key, {})
        cells = [_fmt(median(row.get(c, []))) for c in columns]
        lines.append(label.ljust(first) + "".join(cell.rjust(width) for cell in cells))
    return lines


def table(
    results: Results,
    cpu_results: Results,
    imports: dict[str, list[float]],
    verdicts: list[dict[str, Any]],
    sizes: Sizes,
    info: dict[str, Any],
) -> str:
    columns = [c for c in COLUMNS if any(c in row for row in results.values())]
    labels = [f"{w.label.format(**asdict(sizes))} ({w.unit})" for w in WORKLOADS]
    import_labels = [f"{name} (ms, fresh process)" for name in imports]
    first = max(map(len, labels + import_labels)) + 2
    width = max(12, *(len(c) + 2 for c in columns))
    lines = [
        "chatkit benchmarks: medians over {rounds} round(s), best of {repeat} run(s) each".format(
            **info
        ),
        "{date}  {cpu} ({cores} cores)  Python {python}".format(**info, **info["machine"]),
        "load average before {load_before}, after {load_after}".format(**info),
        "",
        "throughput per second of wall-clock time",
        *_rows(results, columns, labels, first, width),
        "",
        "the same, per second of the client process's CPU time (less disturbed by other load)",
        *_rows(cpu_results, columns, labels, first, width),
        "",
    ]
    for label, times in zip(import_labels, imports.values(), strict=False):
        lines.append(label.ljust(first) + _fmt(statistics.median(times)).rjust(width))
    rss = info.get("idle_client_rss_kb")
    if rss:
        spread = f"  ({min(rss):,.1f}-{max(rss):,.1f} over {len(rss)} processes)"
        label = "RSS per idle AsyncClient (KB, after one request)"
        lines.append(label.ljust(first) + _fmt(statistics.median(rss)).rjust(width) + spread)
    lines.append("")
    lines.append(
        "targets: wall-clock median of the per-round ratios (range over the rounds);"
        " the same on CPU rates; the ratio of the cells' medians"
    )
    for verdict in verdicts:
        value = verdict["value"]
        shown = "n/a" if value is None else f"{value:.2f}{verdict['unit']}"
        mark = {True: "met", False: "NOT MET", None: "not measured"}[verdict["met"]]
        spread = verdict["per_round"]
        span = f"{min(spread):.2f}-{max(spread):.2f}" if len(spread) > 1 else ""
        cpu, of_medians = verdict["cpu_value"], verdict["of_medians"]
        extra = f"cpu {cpu:.2f}x" if cpu is not None else ""
        extra += f"  medians {of_medians:.2f}x" if of_medians is not None else ""
        lines.append(f"  {verdict['target']:<60}{shown:>9}  {mark:<13}{span:<12}{extra}".rstrip())
    if not info.get("sync_available", True):
        lines.append("")
        lines.append("chatkit sync: not measured (chatkit.Client does not exist in this checkout)")
    return "\n".join(lines)
