"""chatkit async (no hooks) from whichever chatkit is first on the path: run it
alternately against two checkouts to compare them on this machine.

    git worktree add /tmp/before <commit>
    for i in 1 2 3 4; do
        PYTHONPATH=/tmp/before python benchmarks/bench_ab.py
        python benchmarks/bench_ab.py
    done

Prints the checkout, then the median chunks and requests per CPU second
(CPU time: steadier than wall time on a shared machine) of one long stream
and of sequential non-streamed requests, over ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import ChatkitAsync
from measure import Sizes, fake_server, long_stream, sequential_requests


async def measure(base_url: str, rounds: int) -> tuple[float, float]:
    contender = ChatkitAsync()
    await contender.open(base_url)
    streams, requests = [], []
    try:
        for _ in range(rounds):
            streams.append((await long_stream(contender, Sizes())).cpu)
            requests.append((await sequential_requests(contender, Sizes())).cpu)
    finally:
        await contender.close()
    return statistics.median(streams), statistics.median(requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import chatkit

    with fake_server() as base_url:
        stream, requests = asyncio.run(measure(base_url, args.rounds))
    checkout = Path(chatkit.__file__).resolve().parent.parent
    print(f"{checkout}  stream {stream:,.0f} chunks/cpu-s  requests {requests:,.0f}/cpu-s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
