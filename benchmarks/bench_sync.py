"""Where the sync facade's time goes: one stream read through ``AsyncClient``
and through ``Client``, and through ``Client`` with both of its threads on one CPU.

    python benchmarks/bench_sync.py             # 7 rounds, about half a minute
    python benchmarks/bench_sync.py --quick     # a smoke run

A sync stream is produced on chatkit's loop thread and read in the caller's
thread (docs/sync.md). Per chunk this prints the wall-clock time, the CPU
time of the whole process and that of the caller's thread alone, so the
loop thread's share is their difference. "One CPU" pins the caller's thread
and the loop thread to the same CPU for that run only (Linux, two CPUs or
more; the fake server keeps its own): the chunks are then read where they
were built, and the difference to the unpinned run is what moving them from
one core's cache to another's costs. chatkit does not pin anything itself;
see docs/benchmarks.md for the figures and docs/sync.md for what a user can do.

The ratios are rates (async time / sync time), the median of the per-round
ratios with their range, as ``run.py`` reports them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import API_KEY, MESSAGES, MODEL
from measure import behavior, fake_server


class Times:
    """µs per chunk of each round: wall clock, process CPU, caller-thread CPU."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.caller: list[float] = []

    def add(self, run: Callable[[], int], chunks: int) -> None:
        wall, cpu, caller = time.perf_counter(), time.process_time(), time.thread_time()
        got = run()
        if got != chunks:
            raise RuntimeError(f"{got} content chunks, expected {chunks}")
        self.wall.append((time.perf_counter() - wall) / chunks * 1e6)
        self.cpu.append((time.process_time() - cpu) / chunks * 1e6)
        self.caller.append((time.thread_time() - caller) / chunks * 1e6)


def _can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


@contextmanager
def _one_cpu(thread_ids: list[int]) -> Iterator[None]:
    """Pin these native threads to one CPU for the block; their masks restored after."""
    masks = {tid: os.sched_getaffinity(tid) for tid in thread_ids}
    cpu = {min(os.sched_getaffinity(0))}
    try:
        for tid in thread_ids:
            os.sched_setaffinity(tid, cpu)
        yield
    finally:
        for tid, mask in masks.items():
            os.sched_setaffinity(tid, mask)


def _ratio(async_times: list[float], sync_times: list[float]) -> str:
    ratios = [a / s for a, s in zip(async_times, sync_times, strict=True)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def run(base_url: str, rounds: int, chunks: int) -> dict[str, Times]:
    import chatkit
    from chatkit import _portal

    headers = {"x-fake-behavior": behavior(chunks)}
    loop = asyncio.new_event_loop()
    aclient = chatkit.AsyncClient(base_url=base_url, api_key=API_KEY)
    client = chatkit.Client(base_url=base_url, api_key=API_KEY)

    async def read_async() -> int:
        count = 0
        async for chunk in await aclient.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
        ):
            count += bool(chunk.choices and chunk.choices[0].delta.content)
        return count

    def read_sync() -> int:
        count = 0
        for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
        ):
            count += bool(chunk.choices and chunk.choices[0].delta.content)
        return count

    def async_round() -> int:
        return loop.run_until_complete(read_async())

    times = {"chatkit async": Times(), "chatkit sync": Times()}
    pinned = _can_pin()
    if pinned:
        times["chatkit sync, one CPU"] = Times()
    try:
        async_round()  # warm up: connections, lazy imports, the loop thread
        read_sync()
        threads = [threading.get_native_id(), _portal.current().thread.native_id or 0]
        for _ in range(rounds):
            times["chatkit async"].add(async_round, chunks)
            times["chatkit sync"].add(read_sync, chunks)
            if pinned:
                with _one_cpu(threads):
                    times["chatkit sync, one CPU"].add(read_sync, chunks)
    finally:
        client.close()
        loop.run_until_complete(aclient.aclose())
        loop.close()
    return times


def report(times: dict[str, Times], chunks: int, rounds: int) -> str:
    lines = [
        f"one stream of {chunks} chunks, µs per chunk: median (min) of {rounds} rounds",
        f"  {'':24}{'wall':>14}{'process CPU':>16}{'caller thread':>16}",
    ]

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f})"

    for name, t in times.items():
        lines.append(f"  {name:24}{cell(t.wall):>14}{cell(t.cpu):>16}{cell(t.caller):>16}")
    base = times["chatkit async"]
    lines.append("sync rate / async rate, median of the per-round ratios (range):")
    for name, t in times.items():
        if name != "chatkit async":
            wall, cpu = _ratio(base.wall, t.wall), _ratio(base.cpu, t.cpu)
            lines.append(f"  {name:24} wall {wall}   CPU {cpu}")
    if len(times) == 2:
        lines.append("  (one CPU: not measured, needs Linux and two CPUs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.chunks = 1, 300
    if args.rounds < 1 or args.chunks < 1:
        parser.error("--rounds and --chunks must be positive")
    with fake_server() as base_url:
        times: dict[str, Any] = run(base_url, args.rounds, args.chunks)
    print(report(times, args.chunks, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
