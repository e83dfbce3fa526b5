"""A real redis-server for the tests, and the worker processes that share it.

``RedisServer`` starts ``redis-server`` on a free loopback port (no disk
persistence), can kill and restart it on the same port, and stops it. The
workers run in spawned processes (``multiprocessing`` spawn context): each
makes its own ``chatkit.AsyncClient`` with ``state=RedisState(url)``, does
what the test asks through a queue, and reports what happened on another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, optionally with a password."""

    def __init__(self, password: str | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._answers():
                return
            time.sleep(0.01)
        raise RuntimeError("redis-server did not answer PING")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                if self.password:
                    conn.sendall(f"AUTH {self.password}\r\n".encode())
                    conn.recv(64)
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients (their next command fails)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def command(self, *words: str) -> Any:
        """Run one command with a fresh synchronous client (for assertions)."""
        import redis

        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            return client.execute_command(*words)
        finally:
            client.close()


class SharedClock:
    """Seconds read from a ``multiprocessing.Value``: every process sees the
    test move time (``clock.value.value += 60``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> float:
        return float(self.value.value)


@dataclass
class WorkerConfig:
    """What each worker builds its client from."""

    base_url: str
    redis_url: str
    prefix: str
    rpm: float | None = None
    max_concurrency: int | None = None
    breaker: dict[str, Any] | None = None
    lease: float = 300.0
    retry_interval: float = 1.0
    total: float = 5.0


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def worker(config: WorkerConfig, clock_value: Any, orders: Any, results: Any) -> None:
    """A worker process: runs ``orders`` until ``None``, reporting on ``results``.

    An order is ``("calls", n, concurrency)``: make n calls, concurrency at once,
    and report ("done", pid, outcomes, stats); ``("hold",)``: start one call
    the server stalls, report ("holding", pid), and keep it open.
    """
    asyncio.run(_work(config, clock_value, orders, results))


async def _work(config: WorkerConfig, clock_value: Any, orders: Any, results: Any) -> None:
    import chatkit
    from chatkit import CircuitBreaker, RateLimit, RedisState, Timeout
    from chatkit.providers import OpenAI

    warnings = _CountWarnings()
    logging.getLogger("chatkit.redis").addHandler(warnings)
    clock = SharedClock(clock_value)
    state = RedisState(
        config.redis_url,
        config.prefix,
        timeout=2.0,
        connect_timeout=5.0,
        lease=config.lease,
        clock=clock,
        retry_interval=config.retry_interval,
    )
    limit = None
    if config.rpm is not None or config.max_concurrency is not None:
        limit = RateLimit(requests_per_minute=config.rpm, max_concurrency=config.max_concurrency)
    provider = OpenAI(base_url=config.base_url, api_key="sk-same", rate_limit=limit)
    breaker = CircuitBreaker(**config.breaker, clock=clock) if config.breaker else None
    client = chatkit.AsyncClient(
        provider=provider,
        breaker=breaker,
        state=state,
        max_retries=0,
        timeout=Timeout(total=config.total),
    )
    held: list[asyncio.Task[Any]] = []
    async with client:
        while (order := await asyncio.to_thread(orders.get)) is not None:
            if order[0] == "hold":
                held.append(asyncio.create_task(_one(client)))
                await _wait_until(lambda: state.calls_in_flight(_identity(provider)) > 0)
                results.put(("holding", os.getpid()))
                continue
            _, count, concurrency = order
            gate = asyncio.Semaphore(concurrency)
            outcomes = await asyncio.gather(*(_limited(gate, client) for _ in range(count)))
            stats = {
                "fallbacks": state.fallbacks,
                "redis_errors": state.redis_errors,
                "warnings": warnings.count,
            }
            results.put(("done", os.getpid(), outcomes, stats))
        for task in held:
            task.cancel()
    await state.aclose()


async def _limited(gate: asyncio.Semaphore, client: Any) -> str:
    async with gate:
        return await _one(client)


async def _one(client: Any) -> str:
    """One call's outcome: "ok" or the error's class name."""
    try:
        await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "Hi"}]
        )
    except Exception as error:
        return type(error).__name__
    return "ok"


def _identity(provider: Any) -> str:
    from chatkit._health import provider_identity

    return provider_identity(provider)


async def _wait_until(condition: Any) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
