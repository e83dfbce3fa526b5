"""What hooks and the breaker cost: chatkit with no hooks, with a hook that has
every method (doing nothing), with the LoggingHook, with a circuit breaker,
and with a breaker and the no-op hook (issue 17's "at most 10%" case), next to
raw aiohttp, in one run.

    python benchmarks/bench_hooks.py            # 5 rounds
    python benchmarks/bench_hooks.py --quick    # a smoke run (seconds)

Workloads (from measure.py): one long stream (chunks/s) and sequential
non-streamed requests (requests/s). Contenders alternate within each round;
cells are medians over rounds, with each one's ratio to "chatkit async" (no
hooks, no breaker): per wall-clock second and per client CPU second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import API_KEY, ChatkitAsync, RawAiohttp
from measure import QUICK, Sizes, fake_server, long_stream, sequential_requests


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


async def measure(base_url: str, sizes: Sizes, rounds: int) -> dict[str, dict[str, list[float]]]:
    racers = contenders()
    for racer in racers:
        await racer.open(base_url)
    kinds = ("stream", "seq", "stream cpu", "seq cpu")
    results: dict[str, dict[str, list[float]]] = {r.name: {k: [] for k in kinds} for r in racers}
    try:
        for round_no in range(rounds):
            order = racers[round_no % len(racers) :] + racers[: round_no % len(racers)]
            for racer in order:
                stream = await long_stream(racer, sizes)
                seq = await sequential_requests(racer, sizes)
                results[racer.name]["stream"].append(stream.wall)
                results[racer.name]["seq"].append(seq.wall)
                results[racer.name]["stream cpu"].append(stream.cpu)
                results[racer.name]["seq cpu"].append(seq.cpu)
    finally:
        for racer in racers:
            await racer.close()
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    base = {k: statistics.median(v) for k, v in results["chatkit async"].items()}
    kinds = ("stream", "seq", "stream cpu", "seq cpu")
    heads = ("chunks/s", "requests/s", "chunks/CPU s", "requests/CPU s")
    lines = [f"{'contender':26}" + "".join(f" {head:>14} {'ratio':>5}" for head in heads)]
    for name, cells in results.items():
        row = f"{name:26}"
        for kind in kinds:
            value = statistics.median(cells[kind])
            row += f" {value:14,.0f} {value / base[kind]:5.2f}"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    rounds = args.rounds or (1 if args.quick else 5)
    with fake_server() as base_url:
        results = asyncio.run(measure(base_url, sizes, rounds))
    print(f"{rounds} round(s); long stream {sizes.long_chunks} chunks, {sizes.sequential} requests")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
