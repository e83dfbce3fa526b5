"""Timed workloads, the fake server process, and import timing.

Each workload returns one number per run (chunks/s or requests/s) and checks
that every answer arrived whole. The runner calls them round after round and
keeps the median.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from contenders import AsyncContender, SyncContender


@dataclass(frozen=True)
class Sizes:
    long_chunks: int = 20_000
    streams: int = 100
    stream_chunks: int = 200
    sequential: int = 300
    batch: int = 1_000
    batch_concurrency: int = 100
    import_runs: int = 7
    idle_clients: int = 100


QUICK = Sizes(
    long_chunks=300,
    streams=8,
    stream_chunks=20,
    sequential=20,
    batch=40,
    batch_concurrency=8,
    import_runs=2,
    idle_clients=5,
)


def behavior(chunks: int) -> str:
    """The ``x-fake-behavior`` header for a stream of `chunks` token-sized pieces."""
    return json.dumps({"chunks": [" token"], "repeat": chunks})


class CountMismatch(RuntimeError):
    """A contender received fewer or more chunks than the server sent."""


def _check(name: str, got: int, expected: int) -> None:
    if got != expected:
        raise CountMismatch(f"{name}: received {got} content chunks, expected {expected}")


# -- workloads ------------------------------------------------------------------
#
# Each returns two rates for the same run: per second of wall-clock time (what
# the tables show) and per second of this process's CPU time (all its threads),
# which a busy shared machine disturbs far less.


@dataclass(frozen=True)
class Rates:
    wall: float
    cpu: float


class _Clock:
    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def rates(self, units: int) -> Rates:
        # process_time ticks coarsely on some systems: never divide by zero.
        return Rates(units / max(self.wall, 1e-9), units / max(self.cpu, 1e-6))


async def long_stream(c: AsyncContender, sizes: Sizes) -> Rates:
    header = behavior(sizes.long_chunks)
    with _Clock() as clock:
        got = await c.stream(header)
    _check(c.name, got, sizes.long_chunks)
    return clock.rates(sizes.long_chunks)


async def concurrent_streams(c: AsyncContender, sizes: Sizes) -> Rates:
    header = behavior(sizes.stream_chunks)
    with _Clock() as clock:
        counts = await asyncio.gather(*(c.stream(header) for _ in range(sizes.streams)))
    _check(c.name, sum(counts), sizes.streams * sizes.stream_chunks)
    return clock.rates(sizes.streams * sizes.stream_chunks)


async def sequential_requests(c: AsyncContender, sizes: Sizes) -> Rates:
    with _Clock() as clock:
        for _ in range(sizes.sequential):
            if not await c.complete():
                raise CountMismatch(f"{c.name}: empty answer")
    return clock.rates(sizes.sequential)


async def batched_requests(c: AsyncContender, sizes: Sizes) -> Rates:
    left = sizes.batch

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if not await c.complete():
                raise CountMismatch(f"{c.name}: empty answer")

    with _Clock() as clock:
        await asyncio.gather(*(worker() for _ in range(sizes.batch_concurrency)))
    return clock.rates(sizes.batch)


def sync_long_stream(c: SyncContender, sizes: Sizes) -> Rates:
    header = behavior(sizes.long_chunks)
    with _Clock() as clock:
        got = c.stream(header)
    _check(c.name, got, sizes.long_chunks)
    return clock.rates(sizes.long_chunks)


ASYNC_WORKLOADS = {
    "long": long_stream,
    "concurrent": concurrent_streams,
    "sequential": sequential_requests,
    "batch": batched_requests,
}
SYNC_WORKLOADS = {"long": sync_long_stream}


# -- the server process ---------------------------------------------------------


@contextmanager
def fake_server(startup_timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m chatkit.testing --port 0`` in its own process; yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatkit.testing", "--port", "0"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    # readline() blocks; a timer kills a server that never announces itself.
    watchdog = threading.Timer(startup_timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        watchdog.cancel()
        if not line.startswith("READY "):
            raise RuntimeError(f"the fake server did not start (said {line!r})")
        yield line.split(" ", 1)[1]
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- import time ----------------------------------------------------------------

IMPORTS = {
    "import chatkit": "import chatkit",
    "chatkit.AsyncClient": "import chatkit; chatkit.AsyncClient",
    "import openai": "import openai",
}


def import_time_ms(statement: str, runs: int) -> list[float]:
    """Milliseconds `statement` takes in fresh interpreters, timed inside each one."""
    code = f"import time\n_t = time.perf_counter()\n{statement}\nprint(time.perf_counter() - _t)\n"
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.strip()) * 1000)
    return times


# -- memory of an idle client ---------------------------------------------------

_RSS_CODE = """
import asyncio, gc, sys
import chatkit

def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")

async def one(base_url):
    client = chatkit.AsyncClient(base_url=base_url, api_key="sk-bench")
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    return client

async def main(base_url, n):
    warm = [await one(base_url) for _ in range(3)]  # lazy imports, first validations
    gc.collect()
    before = rss_kb()
    clients = [await one(base_url) for _ in range(n)]
    gc.collect()
    after = rss_kb()
    print((after - before) / n)
    for client in warm + clients:
        await client.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def idle_client_rss_kb(base_url: str, clients: int, runs: int = 3) -> list[float]:
    """KB of resident memory per idle ``AsyncClient`` (after one request, its
    connection kept alive), from `clients` clients in a fresh interpreter; one
    value per run."""
    values = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CODE, base_url, str(clients)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        values.append(float(out.stdout.strip()))
    return values
