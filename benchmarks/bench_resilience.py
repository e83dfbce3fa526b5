"""Resilience simulation: circuit breaker, hedged first tokens and rate limits.

    python benchmarks/bench_resilience.py [--calls 1500] [--quick] [--seed 1] [--json PATH]

Three scripted OpenAI-compatible servers run in a child process on 127.0.0.1
(their work does not share the client's core). Every call sends its number in
an ``x-bench-call`` header, and what each server does for call n was drawn up
front from ``random.Random(seed)``: call n meets the same latencies and the
same failures in every configuration.

- ``flaky``: first content after 2-8 ms; down for the calls from 20% to 60%
  of the run: it waits 10-100 ms, then answers 503 (two times in three) or
  resets the connection.
- ``tail``: healthy; first content after 5-15 ms for 92% of calls and after
  300-500 ms for the other 8%.
- ``limited``: first content after 5-15 ms; serves ``--limit`` requests per
  one-second window (a scaled "minute"), then 429 with Retry-After until the
  window resets; every answer carries ``x-ratelimit-remaining-requests`` and
  ``x-ratelimit-reset-requests``.

Each configuration streams every call through a fresh
``AsyncClient(provider=RetryProvider([flaky, tail, limited], strategy="ordered"))``
(fresh health), ``--rate`` calls started per second, at most
``--concurrency`` at once. Latency is the time to first content: from
``create()`` to the first chunk with text, over the calls that succeeded.
"Wasted" counts the requests that reached ``flaky`` while it was down.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import ClientSession, web

from chatkit import AsyncClient, ChatkitError, CircuitBreaker, RateLimit, Timeout
from chatkit.providers import OpenAI, RetryProvider

NAMES = ("flaky", "tail", "limited")
DOWN_FROM, DOWN_TO = 0.2, 0.6  # flaky's outage, as fractions of the run's calls
WINDOW = 1.0  # limited's scaled "minute", seconds
PIECES = ("The", " answer", " is", " forty", "-two", ".")
ANSWER = "".join(PIECES)
MESSAGES = [{"role": "user", "content": "What is the answer?"}]
# Scaled like the run: a real breaker counts failures over 30 s and cools down 30 s.
BREAKER = CircuitBreaker(failure_threshold=5, window=2.0, cooldown=0.25, max_cooldown=1.0)
HEDGE_AFTER = 0.05
TAIL_SLOW = 0.08  # tail's share of slow first tokens


# -- the script: what each server does for call n ----------------------------------


@dataclass(frozen=True)
class Plan:
    calls: int
    flaky: list[float]  # seconds to first content while up
    flaky_fail: list[tuple[str, float]]  # while down: "503" or "reset", after seconds
    tail: list[float]
    limited: list[float]

    @property
    def down(self) -> range:
        return range(int(self.calls * DOWN_FROM), int(self.calls * DOWN_TO))


def make_plan(calls: int, seed: int) -> Plan:
    rng = random.Random(seed)
    flaky = [rng.uniform(0.002, 0.008) for _ in range(calls)]
    fail = [
        ("reset" if rng.random() < 1 / 3 else "503", rng.uniform(0.01, 0.1)) for _ in range(calls)
    ]
    tail = [
        rng.uniform(0.3, 0.5) if rng.random() < TAIL_SLOW else rng.uniform(0.005, 0.015)
        for _ in range(calls)
    ]
    limited = [rng.uniform(0.005, 0.015) for _ in range(calls)]
    return Plan(calls, flaky, fail, tail, limited)


# -- the servers (the child process) -----------------------------------------------


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


OPENING = _chunk({"role": "assistant", "content": ""})
BODY = b"".join(_chunk({"content": p}) for p in PIECES) + _chunk({}, "stop") + b"data: [DONE]\n\n"


def _error(status: int, kind: str, message: str, headers: dict[str, str]) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


async def _stream(
    request: web.Request, delay: float, headers: dict[str, str]
) -> web.StreamResponse:
    """200, the role chunk at once, the content after ``delay``: time to first token."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    )
    try:
        await response.prepare(request)
        await response.write(OPENING)
        await asyncio.sleep(delay)
        await response.write(BODY)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client hung up: a hedge won the race, or the call's deadline passed
    return response


class FakeProvider:
    """One scripted server; counts what reached it (calls numbered >= 0 only)."""

    def __init__(self, name: str, plan: Plan, limit: int) -> None:
        self.name, self.plan, self.limit = name, plan, limit
        self.reset()

    def reset(self) -> None:
        self.requests = self.while_down = self.refused = 0
        self.window_start, self.window_used = time.monotonic(), 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        call = int(request.headers.get("x-bench-call", "-1"))  # -1: the warm-up
        counted = 0 <= call < self.plan.calls
        self.requests += counted
        headers: dict[str, str] = {}
        if self.name == "flaky":
            if counted and call in self.plan.down:
                self.while_down += 1
                kind, wait = self.plan.flaky_fail[call]
                await asyncio.sleep(wait)
                if kind == "reset":
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response()  # nothing reaches the closed connection
                return _error(503, "server_error", "flaky is down", headers)
            delay = self.plan.flaky[call] if counted else 0.005
        elif self.name == "tail":
            delay = self.plan.tail[call] if counted else 0.005
        else:
            headers, refused = self._take()
            if refused:
                self.refused += counted
                return _error(429, "rate_limit_exceeded", "limited: too many requests", headers)
            delay = self.plan.limited[call] if counted else 0.005
        return await _stream(request, delay, headers)

    def _take(self) -> tuple[dict[str, str], bool]:
        """A fixed window of ``limit`` requests per WINDOW seconds, OpenAI's headers."""
        now = time.monotonic()
        passed = now - self.window_start
        if passed >= WINDOW:
            self.window_start += WINDOW * (passed // WINDOW)
            self.window_used = 0
        reset = max(self.window_start + WINDOW - now, 0.001)
        refused = self.window_used >= self.limit
        if not refused:
            self.window_used += 1
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.limit - self.window_used),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }
        if refused:
            # Scaled time: to the millisecond (a real server rounds to whole seconds).
            headers["retry-after"] = f"{reset:.3f}"
            headers["retry-after-ms"] = str(math.ceil(reset * 1000))
        return headers, refused

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.reset()
        stats = {"requests": self.requests, "while_down": self.while_down, "refused": self.refused}
        return web.json_response({**stats, "cpu": time.process_time()})


async def serve(calls: int, seed: int, limit: int) -> None:
    """Start the three servers, print ``READY {ports}``, run until stdin closes."""
    plan = make_plan(calls, seed)
    runners, ports = [], {}
    for name in NAMES:
        fake = FakeProvider(name, plan, limit)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.chat)
        app.router.add_route("*", "/bench/stats", fake.control)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports[name] = runner.addresses[0][1]
        runners.append(runner)
    print("READY " + json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for runner in runners:
        await runner.cleanup()


class Servers:
    """The child process running the three servers."""

    def __init__(self, calls: int, seed: int, limit: int) -> None:
        argv = [sys.executable, __file__, "--serve", "--calls", str(calls), "--seed", str(seed)]
        self.proc = subprocess.Popen(
            [*argv, "--limit", str(limit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        watchdog = threading.Timer(30.0, self.proc.kill)
        watchdog.start()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        watchdog.cancel()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"the fake servers did not start (said {line!r})")
        self.ports: dict[str, int] = json.loads(line.split(" ", 1)[1])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the servers stop at end of input
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the client side ----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    breaker: bool = False
    hedge: float | Literal["auto"] | None = None
    rate_limit: bool = False


CONFIGS = (
    Config("baseline"),
    Config("+breaker", breaker=True),
    Config("+hedge 50 ms", hedge=HEDGE_AFTER),
    Config("+hedge auto", hedge="auto"),
    Config("+rate limit", rate_limit=True),
    Config("+breaker +hedge", breaker=True, hedge=HEDGE_AFTER),
    Config("all on", breaker=True, hedge=HEDGE_AFTER, rate_limit=True),
)


@dataclass
class Outcome:
    first: float | None  # seconds to first content (None: the call failed)
    error: str | None
    hedges: int = 0
    hedge_won: bool = False
    lost: int = 0
    skipped: int = 0


@dataclass
class Figures:
    """One configuration's results (what ``--json`` writes)."""

    name: str
    calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float
    errors: dict[str, int]
    wasted: int  # requests that reached flaky while it was down
    refused_429: int  # requests limited refused
    requests: dict[str, int]
    requests_per_call: float
    hedges: int  # hedged attempts started
    hedges_won: int  # calls answered by a hedged attempt
    lost: int  # attempts cancelled because another won the race
    skipped: int
    seconds: float
    late_starts: int  # calls that started over 10 ms behind schedule (all callers busy)
    client_cpu: float  # the client process's CPU seconds per second of the run
    server_cpu: float  # the same for the servers' process
    settings: dict[str, Any]


def build(config: Config, ports: dict[str, int], limit: int) -> RetryProvider:
    members = []
    for name in NAMES:
        budget = None
        if config.rate_limit and name == "limited":
            # chatkit budgets per minute: the server's `limit` per second, as a user
            # would configure it. The bucket holds a whole minute's worth, so it is
            # the server's headers that stop chatkit before the 429.
            budget = RateLimit(requests_per_minute=limit * 60 / WINDOW)
        base_url = f"http://127.0.0.1:{ports[name]}/v1"
        members.append(OpenAI(base_url=base_url, api_key=f"bench-{name}", rate_limit=budget))
    return RetryProvider(
        members,
        strategy="ordered",
        single_provider_retry=False,
        breaker=BREAKER if config.breaker else None,
        hedge_after=config.hedge,
    )


async def one_call(client: AsyncClient, call: int) -> Outcome:
    started = time.perf_counter()
    first = None
    text: list[str] = []
    attempts: list[Any] = []
    error = None
    try:
        stream = client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"x-bench-call": str(call)}
        )
        try:
            async for chunk in stream:
                if first is None and chunk.has_content:
                    first = time.perf_counter()
                text.append(chunk.text)
        finally:
            attempts = stream.attempts
        if "".join(text) != ANSWER:
            error = "wrong text"
    except ChatkitError as exc:
        error = type(exc).__name__
        attempts = getattr(exc, "attempts", None) or attempts
    return Outcome(
        None if error is not None or first is None else first - started,
        error,
        hedges=sum(1 for a in attempts if a.hedge),
        hedge_won=any(a.hedge and a.ok for a in attempts),
        lost=sum(1 for a in attempts if a.lost),
        skipped=sum(1 for a in attempts if a.skipped),
    )


async def _stats(session: ClientSession, ports: dict[str, int], reset: bool) -> dict[str, Any]:
    out = {}
    for name, port in ports.items():
        url = f"http://127.0.0.1:{port}/bench/stats"
        async with session.request("POST" if reset else "GET", url) as response:
            out[name] = await response.json()
    return out


def quantile(ordered: list[float], q: float) -> float:
    """Nearest rank; NaN for no samples."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(math.ceil(q * len(ordered)) - 1, 0))]


async def run_config(
    config: Config, ports: dict[str, int], args: argparse.Namespace, session: ClientSession
) -> Figures:
    before = await _stats(session, ports, reset=True)
    provider = build(config, ports, args.limit)
    gate = asyncio.Semaphore(args.concurrency)
    loop = asyncio.get_running_loop()
    late = 0

    async def call(n: int) -> Outcome:
        try:
            return await one_call(client, n)
        finally:
            gate.release()

    async with AsyncClient(provider=provider, timeout=Timeout(total=10)) as client:
        tasks = []
        start, cpu = loop.time(), time.process_time()
        for n in range(args.calls):
            await gate.acquire()
            due = start + n / args.rate
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.01:
                late += 1
            tasks.append(asyncio.create_task(call(n)))
        outcomes = await asyncio.gather(*tasks)
        seconds = loop.time() - start
        cpu = time.process_time() - cpu
    served = await _stats(session, ports, reset=False)
    firsts = sorted(o.first for o in outcomes if o.first is not None)
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    requests = {name: served[name]["requests"] for name in NAMES}
    return Figures(
        name=config.name,
        calls=args.calls,
        p50_ms=round(1000 * quantile(firsts, 0.5), 2),
        p90_ms=round(1000 * quantile(firsts, 0.9), 2),
        p99_ms=round(1000 * quantile(firsts, 0.99), 2),
        max_ms=round(1000 * quantile(firsts, 1.0), 2),
        error_rate=sum(errors.values()) / args.calls,
        errors=errors,
        wasted=served["flaky"]["while_down"],
        refused_429=served["limited"]["refused"],
        requests=requests,
        requests_per_call=round(sum(requests.values()) / args.calls, 3),
        hedges=sum(o.hedges for o in outcomes),
        hedges_won=sum(o.hedge_won for o in outcomes),
        lost=sum(o.lost for o in outcomes),
        skipped=sum(o.skipped for o in outcomes),
        seconds=round(seconds, 2),
        late_starts=late,
        client_cpu=round(cpu / seconds, 3),
        server_cpu=round((served["flaky"]["cpu"] - before["flaky"]["cpu"]) / seconds, 3),
        settings={
            "breaker": repr(BREAKER) if config.breaker else None,
            "hedge_after": config.hedge,
            "hedge_budget": 0.1 if config.hedge is not None else None,  # the default
            "rate_limit_rpm": args.limit * 60 / WINDOW if config.rate_limit else None,
        },
    )


def configs(only: str | None) -> list[Config]:
    known = {c.name: c for c in CONFIGS}
    wanted = list(known) if only is None else [name.strip() for name in only.split(",")]
    if any(name not in known for name in wanted):
        raise SystemExit(f"--only: the configurations are {', '.join(known)}")
    return [known[name] for name in wanted]


async def warm_up(ports: dict[str, int], concurrency: int) -> None:
    """Imports, first validations, every code path of the features, connections:
    a burst of calls (numbered -1: always fast and healthy, not counted)."""
    gate = asyncio.Semaphore(concurrency)
    config = Config("warm-up", breaker=True, hedge=HEDGE_AFTER, rate_limit=True)
    async with AsyncClient(provider=build(config, ports, 1000)) as client:

        async def call() -> Outcome:
            async with gate:
                return await one_call(client, -1)

        for outcome in await asyncio.gather(*(call() for _ in range(2 * concurrency))):
            if outcome.error is not None:
                raise RuntimeError(f"warm-up call failed: {outcome.error}")


async def measure(args: argparse.Namespace, ports: dict[str, int]) -> list[Figures]:
    await warm_up(ports, args.concurrency)
    results = []
    async with ClientSession() as session:
        for config in configs(args.only):
            figures = await run_config(config, ports, args, session)
            print(
                f"  {config.name}: {figures.seconds:.1f} s, CPU {figures.client_cpu:.0%} client"
                f" {figures.server_cpu:.0%} servers, {figures.late_starts} calls started late",
                file=sys.stderr,
                flush=True,
            )
            results.append(figures)
            gc.collect()  # each configuration starts with the same heap
            await asyncio.sleep(0.2)
    return results


# -- the report ---------------------------------------------------------------------

COLUMNS = (
    ("configuration", "name", "{}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("errors", "error_rate", "{:.1%}"),
    ("wasted on flaky", "wasted", "{}"),
    ("429s", "refused_429", "{}"),
    ("requests/call", "requests_per_call", "{:.2f}"),
    ("hedges (won)", "hedges", "{}"),
)


def table(results: list[Figures]) -> str:
    rows = []
    for f in results:
        cells = [fmt.format(getattr(f, key)) for _, key, fmt in COLUMNS]
        cells[-1] = f"{f.hedges} ({f.hedges_won})"
        rows.append(cells)
    heads = [head for head, _, _ in COLUMNS]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(heads), *(line(r) for r in rows)])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per configuration (1500)")
    parser.add_argument("--rate", type=float, default=None, help="calls started per second (250)")
    parser.add_argument("--concurrency", type=int, default=None, help="calls at once at most (50)")
    parser.add_argument("--limit", type=int, default=10, help="limited's requests per second (10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--only", default=None, help='comma-separated, e.g. "baseline,all on"')
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (300, 250.0, 50) if args.quick else (1500, 250.0, 50)
    for name, default in zip(("calls", "rate", "concurrency"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.calls < 10 or not args.rate > 0 or args.concurrency < 1 or args.limit < 1:
        parser.error("--calls must be >= 10; --rate, --concurrency and --limit positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.calls, args.seed, args.limit))
        return 0
    plan = make_plan(args.calls, args.seed)
    print(
        f"{args.calls} streamed calls per configuration, {args.rate:g} started per second,"
        f" at most {args.concurrency} at once; flaky down for calls"
        f" {plan.down.start}-{plan.down.stop - 1}; limited serves {args.limit} per"
        f" {WINDOW:g} s; seed {args.seed}",
        flush=True,
    )
    servers = Servers(args.calls, args.seed, args.limit)
    try:
        started = time.perf_counter()
        results = asyncio.run(measure(args, servers.ports))
        elapsed = time.perf_counter() - started
    finally:
        servers.close()
    print()
    print(table(results))
    print(
        "\nlatency: time to first content of the streamed calls that succeeded;"
        " wasted: requests that reached flaky while it was down;"
        f" hedges (won): hedged attempts (calls a hedge answered). {elapsed:.0f} s in all."
    )
    if args.json is not None:
        report = {
            "command": " ".join(["python", "benchmarks/bench_resilience.py", *sys.argv[1:]]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "scenario": {
                "calls": args.calls,
                "rate": args.rate,
                "concurrency": args.concurrency,
                "seed": args.seed,
                "flaky_down_calls": [plan.down.start, plan.down.stop],
                "limited_per_window": args.limit,
                "window_seconds": WINDOW,
            },
            "configs": {f.name: asdict(f) for f in results},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
