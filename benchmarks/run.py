"""chatkit benchmarks: chatkit vs a raw aiohttp loop vs the official openai SDK.

    python benchmarks/run.py               # full run, 5 rounds, prints the table
    python benchmarks/run.py --quick       # small sizes, 1 round: a smoke run
    python benchmarks/run.py --json out.json --rounds 9

A fake OpenAI-compatible server (``python -m chatkit.testing``) runs in its own
process, and so does every contender (``worker.py``): one library's imports,
heap and threads never slow another down. The contenders take turns, one at a
time, workload by workload, in an order that rotates every round. Cells are
medians over the rounds; ratios are medians of the per-round ratios.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import available, chatkit_sync_available
from measure import IMPORTS, QUICK, Sizes, fake_server, idle_client_rss_kb, import_time_ms
from report import WORKLOADS, Results, evaluate, loadavg, machine, median, table

WORKER = Path(__file__).resolve().parent / "worker.py"
# A workload that takes longer than this has hung (the slowest full-size one,
# openai on 20,000 chunks, takes seconds).
COMMAND_TIMEOUT = 600.0

T = TypeVar("T")


class WorkerError(RuntimeError):
    """A contender failed: its process died, or a workload raised."""


class Worker:
    """A contender's process (``worker.py``), answering one command at a time."""

    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self._proc = subprocess.Popen(
            [sys.executable, str(WORKER), name, base_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        # readline() blocks; the timer kills a worker that stopped answering.
        watchdog = threading.Timer(COMMAND_TIMEOUT, self._proc.kill)
        watchdog.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            raise WorkerError(f"{self.name}: the worker process exited ({self._proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise WorkerError(f"{self.name}: {message['error']}\n{message.get('traceback', '')}")
        return message

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()

    def wait_ready(self) -> None:
        self._receive()

    def run(self, workload: str, sizes: Sizes) -> tuple[float, float]:
        """The workload's rate per wall-clock second and per CPU second of the worker."""
        self._send({"op": "run", "workload": workload, "sizes": dataclasses.asdict(sizes)})
        answer = self._receive()
        return float(answer["value"]), float(answer["cpu"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send({"op": "quit"})
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def workers(names: Sequence[str], base_url: str) -> Iterator[dict[str, Worker]]:
    """Start every contender's process (they warm up in parallel), close them all after."""
    with ExitStack() as stack:
        started: dict[str, Worker] = {}
        for name in names:
            worker = Worker(name, base_url)
            stack.callback(worker.close)
            started[name] = worker
        for worker in started.values():
            worker.wait_ready()
        yield started


def _rotate(items: Sequence[T], by: int) -> list[T]:
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


def _order(names: Sequence[str], round_no: int) -> list[str]:
    """This round's running order: the fast contenders first, in rotating order.

    The fast ones (raw, chatkit, the server ceiling) take a fraction of a
    second per run, so the two sides of every chatkit ratio run right after
    each other; the openai contenders, seconds per run, come last.
    """
    slow = [n for n in names if n.startswith("openai")]
    fast = [n for n in names if n not in slow]
    return _rotate(fast, round_no) + _rotate(slow, round_no)


def measure_rounds(
    pool: dict[str, Worker], sizes: Sizes, rounds: int, repeat: int, errors: list[str]
) -> tuple[Results, Results]:
    """Rates per wall-clock second and per client CPU second, round by round.

    With ``repeat`` > 1 the contenders take turns run by run (A B A B ...) and
    each keeps its best run of the round. A run that fails is recorded as
    None (and its error in `errors`); the other contenders and rounds go on,
    so one hiccup does not void the run.
    """
    wall: Results = {w.key: {} for w in WORKLOADS}
    cpu: Results = {w.key: {} for w in WORKLOADS}
    for round_no in range(rounds):
        print(f"round {round_no + 1}/{rounds} ...", file=sys.stderr, flush=True)
        for workload in WORKLOADS:
            order = _order([n for n in workload.contenders if n in pool], round_no)
            best: dict[str, tuple[float, float] | None] = dict.fromkeys(order, (0.0, 0.0))
            for _ in range(repeat):
                for name in order:
                    so_far = best[name]
                    if so_far is None:
                        continue  # failed earlier in this round
                    try:
                        per_wall, per_cpu = pool[name].run(workload.key, sizes)
                    except WorkerError as exc:
                        print(exc, file=sys.stderr, flush=True)
                        first_line = str(exc).splitlines()[0]
                        errors.append(f"round {round_no + 1}, {workload.key}: {first_line}")
                        best[name] = None
                        continue
                    best[name] = (max(so_far[0], per_wall), max(so_far[1], per_cpu))
            for name, rates in best.items():
                wall[workload.key].setdefault(name, []).append(rates[0] if rates else None)
                cpu[workload.key].setdefault(name, []).append(rates[1] if rates else None)
    return wall, cpu


# -- command line -------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=_positive, default=None, help="rounds (default 5; --quick: 1)"
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="runs per contender, workload and round; the round keeps the best (default 1)",
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


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any], bool]:
    sizes = _sizes(args)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    names = available()
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"unknown or unavailable contenders: {sorted(unknown)}")
        names = [n for n in names if n in wanted]
    # The benchmark talks to loopback only; a proxy from the environment would skew it.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": rounds,
        "repeat": args.repeat,
        "machine": machine(),
        "load_before": loadavg(),
        "sync_available": chatkit_sync_available(),
    }
    imports = {name: import_time_ms(code, sizes.import_runs) for name, code in IMPORTS.items()}
    errors: list[str] = []
    with fake_server() as base_url:
        with workers(names, base_url) as pool:
            results, cpu_results = measure_rounds(pool, sizes, rounds, args.repeat, errors)
        rss = idle_client_rss_kb(base_url, sizes.idle_clients, 1 if args.quick else 3)
    info["load_after"] = loadavg()
    info["idle_client_rss_kb"] = rss
    verdicts = evaluate(results, imports, cpu_results)
    report = {
        **info,
        "sizes": dataclasses.asdict(sizes),
        "results": results,
        "medians": _medians(results),
        "cpu_results": cpu_results,
        "cpu_medians": _medians(cpu_results),
        "import_ms": imports,
        "targets": verdicts,
        "errors": errors,
    }
    all_met = all(v["met"] for v in verdicts if v["met"] is not None)
    text = table(results, cpu_results, imports, verdicts, sizes, info)
    if errors:
        text += "\n\nfailed runs (left out of the medians):\n" + "\n".join(f"  {e}" for e in errors)
    return text, report, all_met and not errors


def _medians(results: Results) -> dict[str, dict[str, float | None]]:
    return {
        key: {name: median(values) for name, values in row.items()} for key, row in results.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    text, report, all_met = run(args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if report["errors"]:
        return 1
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
