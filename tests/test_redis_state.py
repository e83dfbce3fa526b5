"""chatkit.RedisState against a real redis-server, and shared by real processes.

Each operation is compared with ``InMemoryStore`` running the same sequence;
then spawned worker processes, each with its own client and its own
``RedisState``, call one fake provider: what reached the provider is counted
on the fake server. Time moves through clocks the test sets (a shared
``multiprocessing.Value``), never by sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import multiprocessing
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from health_support import Clock
from redis_support import REDIS_SERVER, RedisServer, SharedClock, WorkerConfig, kill, worker

import chatkit
from chatkit import (
    BudgetLeft,
    CircuitBreaker,
    InMemoryStore,
    InvalidRequestError,
    RateLimit,
    RedisState,
    StateStore,
)
from chatkit._health import BreakerState, check_state, provider_identity
from chatkit._ratelimit import RateSignal
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

PASSWORD = "pw-s3cret-xyz"
IDENTITY = "chatkit.providers.OpenAI|http://127.0.0.1:1/v1|0123456789ab"
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}:"


@pytest.fixture
async def shared(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisState]:
    state = RedisState(redis_server.url, prefix, timeout=2.0, lease=1e6)
    yield state
    await state.aclose()


def as_tuple(entry: BreakerState | None) -> tuple[Any, ...]:
    entry = entry or BreakerState()
    return (entry.state, list(entry.failures), entry.open_until, entry.cooldown, entry.probes)


def left(budget: BudgetLeft) -> tuple[Any, ...]:
    return (
        pytest.approx(budget.requests) if budget.requests is not None else None,
        pytest.approx(budget.tokens) if budget.tokens is not None else None,
        budget.concurrency,
    )


# -- arguments, repr, protocol ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "http://:pw-s3cret-xyz@127.0.0.1:6379/0"}, "url"),
        ({"url": 6379}, "url"),
        ({"url": "redis://[::1"}, "url"),
        ({"url": "redis://127.0.0.1:port/0"}, "url"),
        ({"url": "redis://127.0.0.1:6379/0?socket_timeout=soon"}, "url"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a{b}"}, "prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"lease": -1.0}, "lease"),
        ({"poll": "fast"}, "poll"),
        ({"retry_interval": -1}, "retry_interval"),
        ({"clock": 3.0}, "clock"),
    ],
)
def test_bad_arguments_are_refused_before_any_io(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RedisState(**kwargs)
    assert caught.value.field == field
    assert PASSWORD not in str(caught.value)


def test_repr_never_shows_the_password() -> None:
    state = RedisState(f"redis://admin:{PASSWORD}@127.0.0.1:6379/2?password={PASSWORD}")
    assert repr(state) == (
        "RedisState(url='redis://admin:***@127.0.0.1:6379/2?password=***', prefix='chatkit:')"
    )
    assert repr(RedisState()) == "RedisState(url='redis://127.0.0.1:6379/0', prefix='chatkit:')"
    assert RedisState(retry_interval=0.0)._retry_interval == 0.0


def test_it_is_a_state_store_clients_accept() -> None:
    state = RedisState()
    assert isinstance(state, StateStore)
    assert check_state(state) is state
    chatkit.AsyncClient(provider=OpenAI(base_url="http://127.0.0.1:1/v1"), state=state)


def test_import_chatkit_does_not_import_redis() -> None:
    code = (
        "import sys, chatkit; chatkit.RedisState; assert 'redis' not in sys.modules; "
        "chatkit.RedisState(); assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- each operation, as InMemoryStore does it --------------------------------


@pytest.mark.anyio
async def test_the_breaker_matches_the_in_memory_store(shared: RedisState) -> None:
    rng = random.Random(7)
    breaker = CircuitBreaker(
        failure_threshold=3, window=10.0, cooldown=5.0, half_open_probes=2, max_cooldown=40.0
    )
    memory = InMemoryStore()
    now, probes, calls = 100.0, 0, 0
    states = set()
    for _ in range(400):
        now += rng.choice([0.0, 0.5, 1.0, 3.0, 7.0])
        if rng.random() < 0.5:
            admission = await memory.admit(IDENTITY, breaker, now)
            assert await shared.admit(IDENTITY, breaker, now) == admission
            if admission.allowed:
                probes += admission.probe
                calls += not admission.probe
        elif probes or calls:
            probe = bool(probes) and (not calls or rng.random() < 0.5)
            probes -= probe
            calls -= not probe
            outcome: dict[str, Any] = {
                "failed": rng.choice([True, True, False, None]),
                "probe": probe,
                "now": now,
                "retry_after": rng.choice([None, None, 12.0]),
            }
            await memory.record(IDENTITY, breaker, **outcome)
            await shared.record(IDENTITY, breaker, **outcome)
        assert as_tuple(shared.peek(IDENTITY)) == as_tuple(memory.peek(IDENTITY))
        states.add(as_tuple(memory.peek(IDENTITY))[0])
    assert states == {"closed", "open", "half_open"}
    assert shared.fallbacks == shared.redis_errors == 0


@pytest.mark.anyio
async def test_the_rate_budget_matches_the_in_memory_store(
    redis_server: RedisServer, prefix: str
) -> None:
    rng = random.Random(11)
    clock = Clock()
    limit = RateLimit(requests_per_minute=6, tokens_per_minute=600, max_concurrency=3)
    memory = InMemoryStore(clock)
    async with RedisState(redis_server.url, prefix, timeout=2.0, lease=1e6, clock=clock) as shared:
        assert left(shared.budget_left(IDENTITY, limit)) == (6.0, 600.0, 3)
        held: list[float] = []
        waits = set()
        for _ in range(400):
            clock.now += rng.choice([0.0, 0.5, 2.0, 5.0, 20.0])
            roll = rng.random()
            if roll < 0.45:
                tokens = rng.choice([10.0, 100.0, 300.0, 900.0])
                wait = await memory.reserve(IDENTITY, limit, tokens)
                assert await shared.reserve(IDENTITY, limit, tokens) == pytest.approx(wait)
                waits.add("inf" if wait == math.inf else "wait" if wait else "now")
                if wait == 0:
                    held.append(tokens)
            elif roll < 0.85 and held:
                reserved = held.pop(rng.randrange(len(held)))
                used = rng.choice([None, 50.0, 400.0])
                sent = rng.random() < 0.8
                await memory.release(IDENTITY, limit, reserved, used, sent=sent)
                await shared.release(IDENTITY, limit, reserved, used, sent=sent)
            else:
                signal = RateSignal(
                    requests=rng.choice([None, 2.0, 0.0]),
                    tokens=rng.choice([None, 150.0]),
                    blocked_for=rng.choice([0.0, 0.0, 3.0]),
                )
                await memory.learn(IDENTITY, limit, signal)
                await shared.learn(IDENTITY, limit, signal)
            expected = left(memory.budget_left(IDENTITY, limit))
            assert left(shared.budget_left(IDENTITY, limit)) == expected
        assert waits == {"inf", "wait", "now"}
        assert shared.fallbacks == shared.redis_errors == 0


@pytest.mark.anyio
async def test_a_changed_limit_starts_a_fresh_budget(
    redis_server: RedisServer, prefix: str
) -> None:
    shared = RedisState(redis_server.url, prefix, timeout=2.0, clock=Clock())
    small, large = RateLimit(requests_per_minute=1), RateLimit(requests_per_minute=5)
    assert await shared.reserve(IDENTITY, small, 1.0) == 0
    assert await shared.reserve(IDENTITY, small, 1.0) == pytest.approx(60.0, rel=0.01)
    assert await shared.reserve(IDENTITY, large, 1.0) == 0
    assert left(shared.budget_left(IDENTITY, large)) == (4.0, None, None)
    assert left(shared.budget_left(IDENTITY, small)) == (1.0, None, None)
    await shared.aclose()


@pytest.mark.anyio
async def test_latency_samples_are_shared(redis_server: RedisServer, prefix: str) -> None:
    memory = InMemoryStore()
    first = RedisState(redis_server.url, prefix, timeout=2.0)
    samples = [0.1 * (n % 7 + 1) for n in range(30)]
    for seconds in samples[:25]:
        first.record_latency(IDENTITY, seconds)
        memory.record_latency(IDENTITY, seconds)
    assert first.latency(IDENTITY) == pytest.approx(memory.latency(IDENTITY))
    await first.aclose()  # sends what is pending
    async with RedisState(redis_server.url, prefix, timeout=2.0) as second:
        assert second.latency(IDENTITY) is None
        assert second.latency_quantile(IDENTITY, 0.5) is None
        for seconds in samples[25:]:
            second.record_latency(IDENTITY, seconds)
            memory.record_latency(IDENTITY, seconds)
        assert second._flusher is not None
        await second._flusher
        assert second.latency(IDENTITY) == pytest.approx(memory.latency(IDENTITY))
        for quantile in (0.5, 0.95):
            expected = memory.latency_quantile(IDENTITY, quantile)
            assert second.latency_quantile(IDENTITY, quantile) == pytest.approx(expected)
    outside = RedisState(redis_server.url, prefix)
    outside.record_latency(IDENTITY, 1.0)  # no event loop: counted here, sent later
    assert outside.latency(IDENTITY) == 1.0
    await outside.aclose()


@pytest.mark.anyio
async def test_every_key_expires_and_no_key_holds_a_secret(
    redis_server: RedisServer, prefix: str
) -> None:
    provider = OpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-very-secret-key")
    identity = provider_identity(provider)
    breaker = CircuitBreaker(failure_threshold=1)
    limit = RateLimit(requests_per_minute=10, tokens_per_minute=1000, max_concurrency=2)
    async with RedisState(redis_server.url, prefix, timeout=2.0, lease=30.0) as state:
        await state.admit(identity, breaker, 1.0)
        await state.record(identity, breaker, failed=True, probe=False, now=1.0)
        await state.admit(identity, breaker, 100.0)  # takes a probe slot
        await state.reserve(identity, limit, 10.0)
        await state.learn(identity, limit, RateSignal(blocked_for=600.0))
        state.record_latency(identity, 0.5)
        assert state._flusher is not None
        await state._flusher
    keys = redis_server.command("KEYS", f"{prefix}*")
    kinds = {key.rsplit(":", 1)[1] for key in keys}
    assert kinds == {"breaker", "probes", "budget", "slots", "latency", "samples"}
    for key in keys:
        ttl = redis_server.command("PTTL", key) / 1000
        if key.endswith((":breaker", ":probes", ":latency", ":samples")):
            assert 86_000 < ttl <= 86_400
        else:  # the budget outlives the 600 s block by two minutes
            assert 700 < ttl <= 720
        kind = redis_server.command("TYPE", key)
        read = {"hash": ("HGETALL",), "list": ("LRANGE", 0, -1), "string": ("GET",)}
        words = read.get(kind, ("ZRANGE", 0, -1, "WITHSCORES"))
        dump = str(redis_server.command(str(words[0]), key, *map(str, words[1:])))
        assert "sk-very" not in key and "sk-very" not in dump


@pytest.mark.anyio
async def test_a_probe_and_a_slot_held_by_a_dead_process_free_after_the_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5.0)
    limit = RateLimit(max_concurrency=1)
    dead = RedisState(redis_server.url, prefix, timeout=2.0, lease=10.0, clock=clock)
    alive = RedisState(redis_server.url, prefix, timeout=2.0, lease=10.0, clock=clock)
    await dead.record(IDENTITY, breaker, failed=True, probe=False, now=0.0)
    assert (await dead.admit(IDENTITY, breaker, 6.0)).probe
    assert await dead.reserve(IDENTITY, limit, 1.0) == 0
    await dead.aclose()  # it never records nor releases
    assert await alive.admit(IDENTITY, breaker, 15.0) == (False, False, None)
    assert await alive.reserve(IDENTITY, limit, 1.0) == math.inf
    clock.now += 11.0
    assert (await alive.admit(IDENTITY, breaker, 16.5)).probe
    assert await alive.reserve(IDENTITY, limit, 1.0) == 0
    assert alive.budget_left(IDENTITY, limit).concurrency == 0
    await alive.aclose()


@pytest.mark.anyio
async def test_probes_are_exact_under_concurrent_admits(
    redis_server: RedisServer, prefix: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5.0, half_open_probes=3)
    states = [RedisState(redis_server.url, prefix, timeout=2.0) for _ in range(3)]
    await states[0].record(IDENTITY, breaker, failed=True, probe=False, now=0.0)
    admitted = await asyncio.gather(
        *(state.admit(IDENTITY, breaker, 10.0) for state in states for _ in range(10))
    )
    assert sum(a.allowed for a in admitted) == sum(a.probe for a in admitted) == 3
    for state in states:
        await state.aclose()


@pytest.mark.anyio
async def test_budget_freed_wakes_on_a_release_here_or_after_poll(shared: RedisState) -> None:
    limit = RateLimit(max_concurrency=1)
    assert await shared.reserve(IDENTITY, limit, 1.0) == 0
    waiter = asyncio.create_task(shared.budget_freed(IDENTITY))
    await asyncio.sleep(0)
    await shared.release(IDENTITY, limit, 1.0, None)
    async with asyncio.timeout(5):
        await waiter
        await shared.budget_freed(IDENTITY)  # nothing freed: back after poll


# -- Redis failing ---------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_down_falls_back_to_memory_warns_once_and_comes_back(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(password=PASSWORD)
    server.start()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5.0)
    limit = RateLimit(requests_per_minute=100, max_concurrency=5)
    state = RedisState(server.url, prefix, timeout=0.5, retry_interval=0.0, clock=Clock())
    patient = RedisState(server.url, prefix, timeout=0.5, retry_interval=3600.0)
    try:
        assert await state.reserve(IDENTITY, limit, 1.0) == 0  # from Redis
        assert (await patient.admit(IDENTITY, breaker, 0.0)).allowed
        server.kill()
        caplog.set_level(logging.INFO, logger="chatkit.redis")
        for step in range(5):
            assert (await state.admit(IDENTITY, breaker, float(step))).allowed
            assert await state.reserve(IDENTITY, limit, 1.0) == 0
            await state.release(IDENTITY, limit, 1.0, None)
            await state.learn(IDENTITY, limit, RateSignal(requests=50.0))
            await state.record(IDENTITY, breaker, failed=False, probe=False, now=float(step))
            await patient.admit(IDENTITY, breaker, 0.0)
        await state.release(IDENTITY, limit, 1.0, None)  # reserved from Redis: its lease expires
        assert left(state.budget_left(IDENTITY, limit)) == (46.0, None, 5)
        assert state.peek(IDENTITY) == BreakerState()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2  # one per RedisState, not one per call
        assert "Redis at redis://:***@127.0.0.1" in warnings[0].getMessage()
        assert PASSWORD not in caplog.text
        # Every operation tried Redis (retry_interval=0), but the releases of
        # slots the memory gave, which memory settles.
        assert state.redis_errors == state.fallbacks == 5 * 4 + 1
        assert patient.redis_errors == 1 and patient.fallbacks == 5  # backing off
        # Failures go on counting in memory: two open this process's circuit.
        for _ in range(2):
            await state.record(IDENTITY, breaker, failed=True, probe=False, now=10.0)
        assert not (await state.admit(IDENTITY, breaker, 11.0)).allowed

        server.start()
        errors = state.redis_errors
        assert (await state.admit(IDENTITY, breaker, 11.0)).allowed  # Redis: closed there
        assert await state.reserve(IDENTITY, limit, 1.0) == 0
        assert state.redis_errors == errors
        assert state.budget_left(IDENTITY, limit).requests == 99.0  # a fresh Redis
        assert "is back" in caplog.records[-1].getMessage()
        assert server.command("KEYS", f"{prefix}*")
    finally:
        await state.aclose()
        await patient.aclose()
        server.stop()


@pytest.mark.anyio
async def test_a_wrong_password_falls_back_without_logging_it(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    async with RedisState(url, prefix, timeout=2.0) as state:
        assert await state.admit(IDENTITY, CircuitBreaker(), 0.0) == (True, False, None)
    assert state.redis_errors == 1 and state.fallbacks == 1
    assert "AuthenticationError" in caplog.text and PASSWORD not in caplog.text


# -- worker processes sharing one Redis -------------------------------------------


class Workers:
    """Spawned worker processes (redis_support.worker), one orders queue each."""

    def __init__(self, config: WorkerConfig, count: int, now: float = 1000.0) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.clock = self.ctx.Value("d", now)
        # A queue each way per worker: a worker killed while writing to a
        # shared queue would leave its lock held, and the others stuck.
        self.orders: list[Any] = [self.ctx.Queue() for _ in range(count)]
        self.results: list[Any] = [self.ctx.Queue() for _ in range(count)]
        self.processes = [
            self.ctx.Process(target=worker, args=(config, self.clock, orders, results))
            for orders, results in zip(self.orders, self.results, strict=True)
        ]
        for process in self.processes:
            process.start()

    def advance(self, seconds: float) -> None:
        with self.clock.get_lock():
            self.clock.value += seconds

    def order(self, index: int, *order: Any) -> None:
        self.orders[index].put(order)

    def result(self, index: int) -> Any:
        return self.results[index].get(timeout=45)

    def calls(self, index: int, count: int, concurrency: int = 1) -> Any:
        self.order(index, "calls", count, concurrency)
        return self.result(index)

    def close(self) -> None:
        for orders, process in zip(self.orders, self.processes, strict=True):
            if process.is_alive():
                orders.put(None)
        for process in self.processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()


def outcomes(reports: list[Any]) -> list[str]:
    return sorted(outcome for report in reports for outcome in report[2])


def test_workers_share_one_breaker_and_its_probes(redis_server: RedisServer, prefix: str) -> None:
    with FakeOpenAIServer(Behavior(status=503)).run_in_thread() as server:
        breaker = {"failure_threshold": 5, "window": 60.0, "cooldown": 30.0, "half_open_probes": 2}
        config = WorkerConfig(server.base_url, redis_server.url, prefix, breaker=breaker, total=2.0)
        workers = Workers(config, 4)
        try:
            # One call at a time, round robin: failures of every worker add up.
            reports = [workers.calls(n % 4, 1) for n in range(12)]
            assert len(server.requests) == 5  # not 5 per worker
            assert outcomes(reports) == ["InternalServerError"] * 5 + ["RetryNoProviderError"] * 7
            # The cooldown passes; the provider now hangs: 12 calls at once, 2 probe.
            server.default = Behavior(stall_after=0, stall_seconds=30.0)
            workers.advance(31.0)
            for index in range(4):
                workers.order(index, "calls", 3, 3)
            reports = [workers.result(index) for index in range(4)]
            assert len(server.requests) == 5 + 2
            refused = ["RetryNoProviderError"] * 10
            assert outcomes(reports) == sorted(["APITimeoutError"] * 2 + refused)
        finally:
            workers.close()


def test_workers_never_exceed_the_shared_requests_per_minute(
    redis_server: RedisServer, prefix: str
) -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        # The next request would be 5 s away (the clock stands still: no
        # refill), longer than a call may take: out of budget fails at once.
        config = WorkerConfig(server.base_url, redis_server.url, prefix, rpm=12, total=4.5)
        workers = Workers(config, 4)
        try:
            for index in range(4):
                workers.order(index, "calls", 10, 10)  # as fast as they can
            reports = [workers.result(index) for index in range(4)]
            assert outcomes(reports) == sorted(["ok"] * 12 + ["RateBudgetError"] * 28)
            assert len(server.requests) == 12
            assert all(report[3]["fallbacks"] == 0 for report in reports)
        finally:
            workers.close()


def test_workers_go_on_while_redis_is_down_and_use_it_again(prefix: str) -> None:
    redis_server = RedisServer()
    redis_server.start()
    try:
        with FakeOpenAIServer().run_in_thread() as server:
            config = WorkerConfig(
                server.base_url,
                redis_server.url,
                prefix,
                rpm=1000,
                breaker={"failure_threshold": 5},
                retry_interval=0.0,
            )
            workers = Workers(config, 2)
            try:
                first = [workers.calls(index, 3) for index in range(2)]
                assert all(
                    r[3] == {"fallbacks": 0, "redis_errors": 0, "warnings": 0} for r in first
                )
                redis_server.kill()
                down = [workers.calls(index, 3) for index in range(2)]
                assert outcomes(down) == ["ok"] * 6
                for report in down:
                    assert report[3]["warnings"] == 1
                    assert report[3]["fallbacks"] >= 9 and report[3]["redis_errors"] >= 1
                redis_server.start()  # empty: what was shared is gone
                again = [workers.calls(index, 3) for index in range(2)]
                assert outcomes(again) == ["ok"] * 6
                for before, after in zip(down, again, strict=True):
                    assert after[3] == before[3]  # no new fallback, no new warning
                (budget,) = redis_server.command("KEYS", f"{prefix}*:budget")
                requests = float(redis_server.command("HGET", budget, "rl"))
                assert requests == pytest.approx(1000 - 6)  # both workers' calls since
                assert len(server.requests) == 18
            finally:
                workers.close()
    finally:
        redis_server.stop()


def test_a_slot_held_by_a_killed_worker_frees_after_its_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    stalled = Behavior(stall_after=0, stall_seconds=30.0)
    with FakeOpenAIServer(stalled).run_in_thread() as server:
        config = WorkerConfig(
            server.base_url, redis_server.url, prefix, max_concurrency=1, lease=20.0, total=30.0
        )
        workers = Workers(config, 2)
        try:
            workers.order(0, "hold")
            kind, pid = workers.result(0)
            assert kind == "holding"
            _wait_for(lambda: len(server.requests) == 1)  # its call reached the provider
            kill(pid)  # SIGKILL: it never releases its slot
            workers.processes[0].join(timeout=10)
            server.default = Behavior()
            provider = OpenAI(base_url=server.base_url, api_key="sk-same")
            identity = provider_identity(provider)
            limit = RateLimit(max_concurrency=1)
            clock = SharedClock(workers.clock)
            probe = RedisState(redis_server.url, prefix, timeout=2.0, clock=clock)
            assert asyncio.run(_reserve_and_close(probe, identity, limit)) == math.inf
            workers.order(1, "calls", 1, 1)  # waits for the slot
            workers.advance(21.0)  # the lease runs out
            report = workers.result(1)
            assert report[2] == ["ok"]
            assert len(server.requests) == 2
        finally:
            workers.close()


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def _reserve_and_close(state: RedisState, identity: str, limit: RateLimit) -> float:
    try:
        return await state.reserve(identity, limit, 1.0)
    finally:
        await state.aclose()


@pytest.mark.anyio
async def test_one_slow_reply_is_served_from_memory_without_backing_off(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio

    breaker = CircuitBreaker(failure_threshold=3)
    admin = redis.asyncio.from_url(redis_server.url)
    caplog.set_level(logging.INFO, logger="chatkit.redis")
    async with RedisState(redis_server.url, prefix, timeout=0.05, retry_interval=3600.0) as state:
        try:
            assert (await state.admit(IDENTITY, breaker, 0.0)).allowed  # connected
            await admin.client_pause(300)  # every client waits 0.3 s: one slow reply
            assert (await state.admit(IDENTITY, breaker, 0.0)).allowed  # from memory
            assert (state.redis_errors, state.fallbacks) == (1, 1)
            await admin.ping()  # answered once the pause is over
            await state.record(IDENTITY, breaker, failed=True, probe=False, now=0.0)
            assert state.fallbacks == 1  # Redis again at once, no back-off
            await admin.client_pause(1000)  # slow three times in a row: back off
            for _ in range(3):
                await state.admit(IDENTITY, breaker, 0.0)
            await admin.ping()
            await state.admit(IDENTITY, breaker, 0.0)
            assert state.fallbacks == 5  # the back-off serves this one from memory
        finally:
            await admin.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the back-off, not the single slow reply
