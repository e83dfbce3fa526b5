"""What hooks and the breaker cost: chatkit with no hooks, with a hook that has
every method (doing nothing), with the LoggingHook, with a circuit breaker,
and with a breaker and the no-op hook (issue 17's "at most 10%" case), next to
raw aiohttp, in one run.

    python benchmarks/bench_hooks.py            # 5 rounds
    python benchmarks/bench_hooks.py --quick    # a smoke run (seconds)
    python benchmarks/bench_hooks.py --rounds 15 --repeat 3   # steadier on a busy machine

Workloads (from measure.py): one long stream (chunks/s) and sequential
non-streamed requests (requests/s). Contenders alternate within each round;
cells are medians over rounds, with each one's ratio to "chatkit async" (no
hooks, no breaker; the median of the per-round ratios and their range): per
wall-clock second and per client CPU second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import API_KEY, ChatkitAsync, RawAiohttp
from measure import QUICK, Rates, Sizes, fake_server, long_stream, sequential_requests


class NoOpHook:
    """Every event, doing nothing: the cost of being told."""

    def on_call_start(self, call: Any) -> None: ...
    def on_attempt_start(self, call: Any, attempt: Any, endpoint: Any) -> None: ...
    def on_attempt_end(self, call: Any, attempt: Any) -> None: ...
    def on_first_content(self, call: Any) -> None: ...
    def on_breaker_change(self, call: Any, provider: Any, old: Any, new: Any) -> None: ...
    def on_call_end(self, call: Any) -> None: ...


class ChatkitWithHooks(ChatkitAsync):
    def __init__(self, name: str, hooks: list[object], breaker: bool = False) -> None:
        super().__init__()
        self.name = name
        self._hooks = hooks
        self._breaker = breaker

    async def open(self, base_url: str) -> None:
        import chatkit

        self._client = chatkit.AsyncClient(
            base_url=base_url, api_key=API_KEY, hooks=self._hooks, breaker=self._breaker
        )


def contenders() -> list[Any]:
    from chatkit.hooks import LoggingHook

    quiet = logging.getLogger("chatkit.bench.quiet")
    quiet.setLevel(logging.WARNING)  # the hook runs, its lines are filtered out
    return [
        RawAiohttp(),
        ChatkitAsync(),
        ChatkitWithHooks("chatkit, no-op hook", [NoOpHook()]),
        ChatkitWithHooks("chatkit, LoggingHook", [LoggingHook(quiet)]),
        ChatkitWithHooks("chatkit, breaker", [], breaker=True),
        ChatkitWithHooks("chatkit, breaker + no-op", [NoOpHook()], breaker=True),
    ]


async def _best(
    workload: Callable[[Any, Sizes], Awaitable[Rates]], racer: Any, sizes: Sizes, repeat: int
) -> Rates:
    """The best of ``repeat`` runs (the fastest wall-clock and the fastest CPU rate)."""
    runs = [await workload(racer, sizes) for _ in range(repeat)]
    return Rates(max(r.wall for r in runs), max(r.cpu for r in runs))


async def measure(
    base_url: str, sizes: Sizes, rounds: int, repeat: int = 1
) -> dict[str, dict[str, list[float]]]:
    racers = contenders()
    for racer in racers:
        await racer.open(base_url)
    kinds = ("stream", "seq", "stream cpu", "seq cpu")
    results: dict[str, dict[str, list[float]]] = {r.name: {k: [] for k in kinds} for r in racers}
    try:
        for round_no in range(rounds):
            order = racers[round_no % len(racers) :] + racers[: round_no % len(racers)]
            for racer in order:
                stream = await _best(long_stream, racer, sizes, repeat)
                seq = await _best(sequential_requests, racer, sizes, repeat)
                results[racer.name]["stream"].append(stream.wall)
                results[racer.name]["seq"].append(seq.wall)
                results[racer.name]["stream cpu"].append(stream.cpu)
                results[racer.name]["seq cpu"].append(seq.cpu)
    finally:
        for racer in racers:
            await racer.close()
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    """Medians over the rounds; each ratio is the median of the per-round ratios
    to "chatkit async" (both sides measured moments apart), with its range."""
    base = results["chatkit async"]
    kinds = ("stream", "seq", "stream cpu", "seq cpu")
    heads = ("chunks/s", "requests/s", "chunks/CPU s", "requests/CPU s")
    lines = [f"{'contender':26}" + "".join(f" {head:>14} {'ratio (range)':>17}" for head in heads)]
    for name, cells in results.items():
        row = f"{name:26}"
        for kind in kinds:
            ratios = sorted(value / ref for value, ref in zip(cells[kind], base[kind], strict=True))
            spread = f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
            row += f" {statistics.median(cells[kind]):14,.0f} {spread:>17}"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per contender and round; keep the best"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    rounds = args.rounds or (1 if args.quick else 5)
    with fake_server() as base_url:
        results = asyncio.run(measure(base_url, sizes, rounds, max(1, args.repeat)))
    sized = f"long stream {sizes.long_chunks} chunks, {sizes.sequential} requests"
    print(f"{rounds} round(s), best of {max(1, args.repeat)}; {sized}")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
