"""chatkit benchmarks: chatkit vs a raw aiohttp loop vs the official openai SDK.

    python benchmarks/run.py               # full run, 5 rounds, prints the table
    python benchmarks/run.py --quick       # small sizes, 1 round: a smoke run
    python benchmarks/run.py --json out.json --rounds 7

A fake OpenAI-compatible server (``python -m chatkit.testing``) runs in its own
process; every contender talks to it over loopback in the same run, round
after round, in rotating order. Cells are medians over the rounds; ratios are
medians of the per-round ratios (both sides measured minutes apart at most).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import (
    AsyncContender,
    SyncContender,
    async_contenders,
    chatkit_sync_available,
    sync_contenders,
)
from measure import (
    IMPORTS,
    QUICK,
    Sizes,
    batched_requests,
    behavior,
    concurrent_streams,
    fake_server,
    import_time_ms,
    long_stream,
    sequential_requests,
    sync_long_stream,
)

RAW = "raw aiohttp+json"
ASYNC = "chatkit async"
SYNC = "chatkit sync"
OPENAI = "openai async"
CEILING = "server ceiling"
COLUMNS = [RAW, ASYNC, SYNC, OPENAI, "openai sync", CEILING]

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    run: Callable[[AsyncContender, Sizes], Awaitable[float]]
    streamed: bool


WORKLOADS = [
    Workload("long", "one stream, {long_chunks} chunks", "chunks/s", long_stream, True),
    Workload(
        "concurrent",
        "{streams} streams x {stream_chunks} chunks",
        "chunks/s",
        concurrent_streams,
        True,
    ),
    Workload("sequential", "{sequential} sequential requests", "req/s", sequential_requests, False),
    Workload(
        "batch",
        "{batch} requests, {batch_concurrency} at a time",
        "req/s",
        batched_requests,
        False,
    ),
]


@dataclass(frozen=True)
class Target:
    label: str
    workload: str
    subject: str
    baseline: str
    at_least: float


TARGETS = [
    Target("chatkit async streaming >= 0.6x raw floor (one stream)", "long", ASYNC, RAW, 0.6),
    Target(
        "chatkit async streaming >= 0.6x raw floor (many streams)", "concurrent", ASYNC, RAW, 0.6
    ),
    Target("chatkit async streaming >= 4x openai (one stream)", "long", ASYNC, OPENAI, 4.0),
    Target("chatkit async streaming >= 4x openai (many streams)", "concurrent", ASYNC, OPENAI, 4.0),
    Target("chatkit sync streaming >= 0.5x chatkit async (one stream)", "long", SYNC, ASYNC, 0.5),
    Target("chatkit non-streamed >= 0.7x raw floor (sequential)", "sequential", ASYNC, RAW, 0.7),
    Target("chatkit non-streamed >= 0.7x raw floor (concurrent)", "batch", ASYNC, RAW, 0.7),
]
IMPORT_TARGET_MS = 150.0

Results = dict[str, dict[str, list[float]]]


def _rotate(items: Sequence[T], by: int) -> list[T]:
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- one round ------------------------------------------------------------------


async def _async_round(
    base_url: str,
    makers: Sequence[Callable[[], AsyncContender]],
    sizes: Sizes,
    round_no: int,
    results: Results,
) -> None:
    contenders = [make() for make in makers]
    opened: list[AsyncContender] = []
    try:
        for contender in contenders:
            await contender.open(base_url)
            opened.append(contender)
            # Warm up: connections, lazy imports, pydantic's first validation.
            await contender.stream(behavior(5))
            if contender.name != CEILING:
                await contender.complete()
        for workload in WORKLOADS:
            for contender in _rotate(contenders, round_no):
                if contender.name == CEILING and not workload.streamed:
                    continue
                value = await workload.run(contender, sizes)
                results[workload.key].setdefault(contender.name, []).append(value)
    finally:
        for contender in opened:
            await contender.close()


def _sync_round(
    base_url: str,
    makers: Sequence[Callable[[], SyncContender]],
    sizes: Sizes,
    round_no: int,
    results: Results,
) -> None:
    for make in _rotate(makers, round_no):
        contender = make()
        contender.open(base_url)
        try:
            contender.stream(behavior(5))
            value = sync_long_stream(contender, sizes)
        finally:
            contender.close()
        results["long"].setdefault(contender.name, []).append(value)


# -- reporting --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("chatkit", "aiohttp", "pydantic", "pydantic_core", "openai", "httpx"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _ratios(results: Results, target: Target) -> list[float]:
    """Per-round ratios subject / baseline (rounds pair up by position)."""
    row = results.get(target.workload, {})
    subject, baseline = row.get(target.subject, []), row.get(target.baseline, [])
    return [s / b for s, b in zip(subject, baseline, strict=False) if b > 0]


def evaluate(results: Results, imports: dict[str, list[float]]) -> list[dict[str, Any]]:
    verdicts = []
    for target in TARGETS:
        ratios = _ratios(results, target)
        ratio = statistics.median(ratios) if ratios else None
        verdicts.append(
            {
                "target": target.label,
                "value": None if ratio is None else round(ratio, 3),
                "unit": "x",
                "required": target.at_least,
                "met": None if ratio is None else ratio >= target.at_least,
                "per_round": [round(r, 3) for r in ratios],
            }
        )
    chatkit_ms = imports.get("import chatkit")
    median_ms = statistics.median(chatkit_ms) if chatkit_ms else None
    verdicts.append(
        {
            "target": f"import chatkit < {IMPORT_TARGET_MS:.0f} ms",
            "value": None if median_ms is None else round(median_ms, 1),
            "unit": "ms",
            "required": IMPORT_TARGET_MS,
            "met": None if median_ms is None else median_ms < IMPORT_TARGET_MS,
            "per_round": [round(t, 1) for t in chatkit_ms or []],
        }
    )
    return verdicts


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def table(
    results: Results,
    imports: dict[str, list[float]],
    verdicts: list[dict[str, Any]],
    sizes: Sizes,
    info: dict[str, Any],
) -> str:
    columns = [c for c in COLUMNS if any(c in row for row in results.values())]
    labels = [f"{w.label.format(**dataclasses.asdict(sizes))} ({w.unit})" for w in WORKLOADS]
    labels += [f"{name} (ms, fresh process)" for name in imports]
    first = max(map(len, labels)) + 2
    width = max(12, *(len(c) + 2 for c in columns))
    lines = [
        "chatkit benchmarks: medians over {rounds} round(s)".format(**info),
        "{date}  {cpu} ({cores} cores)  Python {python}".format(**info, **info["machine"]),
        "load average before {load_before}, after {load_after}".format(**info),
        "",
        "workload".ljust(first) + "".join(c.rjust(width) for c in columns),
    ]
    for workload in WORKLOADS:
        label = workload.label.format(**dataclasses.asdict(sizes)) + f" ({workload.unit})"
        row = results.get(workload.key, {})
        cells = [_fmt(statistics.median(row[c]) if row.get(c) else None) for c in columns]
        lines.append(label.ljust(first) + "".join(cell.rjust(width) for cell in cells))
    lines.append("")
    for name, times in imports.items():
        label = f"{name} (ms, fresh process)"
        lines.append(label.ljust(first) + _fmt(statistics.median(times)).rjust(width))
    lines.append("")
    lines.append("targets (median of the per-round ratios; range over the rounds)")
    for verdict in verdicts:
        value = verdict["value"]
        shown = "n/a" if value is None else f"{value:.2f}{verdict['unit']}"
        mark = {True: "met", False: "NOT MET", None: "not measured"}[verdict["met"]]
        spread = verdict["per_round"]
        span = f"{min(spread):.2f}-{max(spread):.2f}" if len(spread) > 1 else ""
        lines.append(f"  {verdict['target']:<60}{shown:>9}  {mark:<13}{span}".rstrip())
    if not chatkit_sync_available():
        lines.append("")
        lines.append("chatkit sync: not measured (chatkit.Client does not exist in this checkout)")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=_positive, default=None, help="rounds (default 5; --quick: 1)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one round")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated contenders, e.g. 'raw aiohttp+json,chatkit async'",
    )
    for field in dataclasses.fields(Sizes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=_positive, default=None, help=f"default {field.default}")
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Sizes)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(base, **overrides)


def _selected(makers: Sequence[Callable[[], T]], only: set[str] | None) -> list[Callable[[], T]]:
    if only is None:
        return list(makers)
    return [m for m in makers if getattr(m(), "name", None) in only]


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any], bool]:
    sizes = _sizes(args)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    only = {name.strip() for name in args.only.split(",")} if args.only else None
    amakers = _selected(async_contenders(), only)
    smakers = _selected(sync_contenders(), only)
    # The benchmark talks to loopback only; a proxy from the environment would skew it.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(name, None)
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": rounds,
        "machine": machine(),
        "load_before": _loadavg(),
    }
    imports = {name: import_time_ms(code, sizes.import_runs) for name, code in IMPORTS.items()}
    results: Results = {w.key: {} for w in WORKLOADS}
    with fake_server() as base_url:
        for round_no in range(rounds):
            print(f"round {round_no + 1}/{rounds} ...", file=sys.stderr, flush=True)
            asyncio.run(_async_round(base_url, amakers, sizes, round_no, results))
            _sync_round(base_url, smakers, sizes, round_no, results)
    info["load_after"] = _loadavg()
    verdicts = evaluate(results, imports)
    report = {
        **info,
        "sizes": dataclasses.asdict(sizes),
        "results": results,
        "medians": {
            key: {name: statistics.median(values) for name, values in row.items()}
            for key, row in results.items()
        },
        "import_ms": imports,
        "targets": verdicts,
    }
    all_met = all(v["met"] for v in verdicts if v["met"] is not None)
    return table(results, imports, verdicts, sizes, info), report, all_met


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    text, report, all_met = run(args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
