"""Provider health shared by processes: ``RedisState``, a ``StateStore`` in Redis.

Every process (and host) that passes ``state=RedisState(url, prefix)`` with the
same Redis and prefix shares, per provider identity, the circuit breaker (its
state, the failures in its window, its half-open probe slots), the rate budget
(requests and tokens buckets, concurrency slots) and the latency samples.
Each state-changing operation is one Lua script (``chatkit._redis_state``),
atomic in Redis, with ``InMemoryStore``'s semantics; the sync reads of the
protocol (``peek``, ``budget_left``, ``latency``, ...) answer from a local
copy of what the last script returned. Calls in flight (``call_started``) are
counted per process.

Redis down or slow: every operation is bounded by ``timeout``; a failed one is
served by a per-process ``InMemoryStore`` (fail open), one warning is logged
per outage, ``fallbacks`` and ``redis_errors`` count, and Redis is tried again
``retry_interval`` seconds later. See docs/scale-out.md.

The ``redis`` package (the ``chatkit[redis]`` extra) is imported only here,
when a ``RedisState`` is made; ``import chatkit`` never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from chatkit import _redis_state as lua
from chatkit._config import is_number
from chatkit._errors import InvalidRequestError
from chatkit._health import (
    Admission,
    BreakerState,
    BudgetLeft,
    CircuitBreaker,
    InMemoryStore,
    State,
)
from chatkit._ratelimit import RateLimit, RateSignal

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisState"]

logger = logging.getLogger("chatkit.redis")

_SCHEMES = ("redis", "rediss", "unix")
_STATES: dict[str, State] = {"closed": "closed", "open": "open", "half_open": "half_open"}
_DAY = 86_400.0
# Budget keys outlive a full refill (60 s) by two minutes; slots outlive their leases.
_BUDGET_TTL = 180.0


@dataclass
class _Budget:
    """This process's copy of a budget, as the last script left it."""

    limit: RateLimit
    requests: float
    requests_at: float
    tokens: float
    tokens_at: float
    in_flight: int


class RedisState:
    """A ``StateStore`` in Redis, shared by every process using the same Redis and prefix.

    url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
        ``unix://``; the password never appears in ``repr``, logs or errors.
    prefix: of every key (``chatkit:`` by default): one Redis serves several
        deployments apart.
    timeout: seconds each Redis operation may take before the call goes on with
        this process's memory; connect_timeout: the same for the first
        operation after (re)connecting, which also loads the scripts.
    lease: seconds after which a concurrency slot or a half-open probe slot
        held by a process that died is free again.
    clock: seconds, shared by every process (``time.time``): the rate budgets'
        time and their leases. Breakers use the ``now`` their ``CircuitBreaker``
        gives (its ``clock``): across hosts, pass ``CircuitBreaker(clock=time.time)``.
    poll: seconds between two looks at a full concurrency budget, while waiting
        for a slot another process frees.
    retry_interval: seconds after a Redis failure before Redis is tried again.
        A reply slower than ``timeout`` is served from memory for that one
        operation; only ``SLOW_REPLIES_TO_BACK_OFF`` slow replies in a row (or
        an error) back off for ``retry_interval``: one hiccup under load must
        not send a whole process to its own memory.
    """

    SLOW_REPLIES_TO_BACK_OFF = 3

    LATENCY_WEIGHT = InMemoryStore.LATENCY_WEIGHT
    LATENCY_SAMPLES = InMemoryStore.LATENCY_SAMPLES
    MIN_QUANTILE_SAMPLES = InMemoryStore.MIN_QUANTILE_SAMPLES

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "chatkit:",
        *,
        timeout: float = 0.005,
        connect_timeout: float = 1.0,
        lease: float = 300.0,
        clock: Callable[[], float] = time.time,
        poll: float = 0.05,
        retry_interval: float = 1.0,
    ) -> None:
        self._safe_url, self._secrets = _check_url(url)
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise InvalidRequestError(
                f"prefix must be a non-empty string without braces or spaces, got {prefix!r}",
                field="prefix",
            )
        for name, value in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("lease", lease),
            ("poll", poll),
            ("retry_interval", retry_interval),
        ):
            low = value >= 0 if name == "retry_interval" and is_number(value) else False
            if not is_number(value) or not (value > 0 or low) or not math.isfinite(value):
                raise InvalidRequestError(
                    f"{name} must be a finite number of seconds > 0, got {value!r}", field=name
                )
        if not callable(clock):
            raise InvalidRequestError("clock must be a callable", field="clock")
        self._prefix = prefix
        self._timeout = float(timeout)
        self._connect_timeout = max(float(connect_timeout), self._timeout)
        self._lease = float(lease)
        self._clock = clock
        self._poll = float(poll)
        self._retry_interval = float(retry_interval)
        self.fallbacks = 0
        """Operations this process served from memory because Redis failed or was backing off."""
        self.redis_errors = 0
        """Redis operations that failed (an error or the timeout)."""
        self._fallback = InMemoryStore(clock)
        self._redis, self._scripts = self._connect(url)
        self._connected = False
        self._degraded = False  # serving from memory since the last failure
        self._retry_at = 0.0
        self._slow_in_a_row = 0
        self._owner = secrets.token_hex(6)
        self._leases = itertools.count(1)
        self._tags: dict[str, str] = {}
        self._breakers: dict[str, BreakerState] = {}
        self._budgets: dict[str, _Budget] = {}
        # What this process holds, per identity, in the order it took them:
        # a Redis lease id ('' for a budget without concurrency limit), or
        # None for what the memory fallback gave.
        self._probes: dict[str, deque[str | None]] = {}
        self._slots: dict[str, deque[str | None]] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self._latency: dict[str, float] = {}
        self._samples: dict[str, deque[float]] = {}
        self._pending: dict[str, list[float]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _connect(self, url: str) -> tuple[Redis, dict[str, AsyncScript]]:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "chatkit.RedisState needs the redis package: pip install 'chatkit[redis]'"
            ) from exc
        try:
            client = aioredis.Redis.from_url(
                url,
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=self._connect_timeout,
            )
        except ValueError as exc:
            raise InvalidRequestError(f"url: {self._scrub(str(exc))}", field="url") from None
        names = ("ADMIT", "RECORD", "RESERVE", "RELEASE", "LEARN", "LATENCY")
        return client, {name: client.register_script(getattr(lua, name)) for name in names}

    def __repr__(self) -> str:
        return f"RedisState(url={self._safe_url!r}, prefix={self._prefix!r})"

    async def aclose(self) -> None:
        """Flush the latency samples not yet sent (within connect_timeout), then disconnect."""
        task = self._flusher
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()

    async def __aenter__(self) -> RedisState:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Redis, or memory when it fails ---------------------------------------

    def _keys(self, identity: str, *names: str) -> list[str]:
        tag = self._tags.get(identity)
        if tag is None:
            tag = self._tags[identity] = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return [f"{self._prefix}{{{tag}}}:{name}" for name in names]

    def _lease_id(self) -> str:
        return f"{self._owner}:{next(self._leases)}"

    async def _run(self, script: str, keys: list[str], args: Sequence[Any]) -> list[str] | None:
        """The script's reply, or None when memory must serve (Redis failed or backing off)."""
        from redis.exceptions import RedisError

        if self._degraded and time.monotonic() < self._retry_at:
            self.fallbacks += 1
            return None
        try:
            async with asyncio.timeout(self._timeout if self._connected else self._connect_timeout):
                reply = await self._scripts[script](keys=keys, args=args)
        except TimeoutError as exc:
            self._slow_in_a_row += 1
            if self._connected and self._slow_in_a_row < self.SLOW_REPLIES_TO_BACK_OFF:
                self.redis_errors += 1  # slow once: memory serves this operation only
                self.fallbacks += 1
                return None
            self._failed(exc)
            return None
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._connected = True
        self._slow_in_a_row = 0
        if self._degraded:
            self._degraded = False
            logger.info(
                "chatkit: Redis at %s is back; provider health is shared again", self._safe_url
            )
        return [str(item) for item in reply]

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self.fallbacks += 1
        self._connected = False
        self._retry_at = time.monotonic() + self._retry_interval
        if not self._degraded:
            self._degraded = True
            reason = self._scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
            logger.warning(
                "chatkit: Redis at %s failed (%s); provider health is kept in this process's "
                "memory until Redis answers again",
                self._safe_url,
                reason,
            )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- the circuit breaker ------------------------------------------------

    @staticmethod
    def _breaker_ttl(breaker: CircuitBreaker) -> int:
        return math.ceil(max(breaker.window, breaker.max_cooldown * 4, _DAY) * 1000)

    def _remember_breaker(self, identity: str, reply: list[str]) -> BreakerState:
        entry = BreakerState(
            state=_STATES.get(reply[2], "closed"),
            failures=deque(float(moment) for moment in reply[6:]),
            open_until=float(reply[3]) if reply[3] else None,
            cooldown=float(reply[4]) if reply[4] else None,
            probes=int(reply[5]),
        )
        self._breakers[identity] = entry
        return entry

    async def admit(self, identity: str, breaker: CircuitBreaker, now: float) -> Admission:
        lease = self._lease_id()
        keys = self._keys(identity, "breaker", "failures", "probes")
        args = (_n(now), breaker.half_open_probes, lease, _n(now + self._lease))
        reply = await self._run("ADMIT", keys, (*args, self._breaker_ttl(breaker)))
        if reply is None:
            admission = await self._fallback.admit(identity, breaker, now)
            if admission.probe:
                self._probes.setdefault(identity, deque()).append(None)
            return admission
        entry = self._remember_breaker(identity, reply)
        if reply[1] == "1":
            self._probes.setdefault(identity, deque()).append(lease)
            return Admission(True, probe=True)
        if reply[0] == "1":
            return Admission(True)
        return Admission(False, open_until=entry.open_until if entry.state == "open" else None)

    async def record(
        self,
        identity: str,
        breaker: CircuitBreaker,
        *,
        failed: bool | None,
        probe: bool,
        now: float,
        retry_after: float | None = None,
    ) -> None:
        held: str | None = ""
        if probe:
            taken = self._probes.get(identity)
            held = taken.popleft() if taken else ""
            if taken is not None and not taken:
                del self._probes[identity]
        if held is None:  # the memory fallback gave this probe its slot
            await self._fallback.record(identity, breaker, failed=None, probe=True, now=now)
        verdict = "" if failed is None else "1" if failed else "0"
        keys = self._keys(identity, "breaker", "failures", "probes")
        args = (
            *(_n(now), verdict, held or ""),
            *(breaker.failure_threshold, _n(breaker.window), _n(breaker.cooldown)),
            *(_n(breaker.max_cooldown), "" if retry_after is None else _n(retry_after)),
        )
        reply = await self._run("RECORD", keys, (*args, self._breaker_ttl(breaker)))
        if reply is None:
            await self._fallback.record(
                identity, breaker, failed=failed, probe=False, now=now, retry_after=retry_after
            )
            return
        self._remember_breaker(identity, reply)

    def peek(self, identity: str) -> BreakerState | None:
        """The state the last script of this process returned (other processes'
        changes show after this process's next ``admit`` or ``record``)."""
        if self._degraded:
            return self._fallback.peek(identity)
        return self._breakers.get(identity)

    def calls_in_flight(self, identity: str) -> int:
        """Calls of this process only."""
        return self._fallback.calls_in_flight(identity)

    def call_started(self, identity: str) -> None:
        self._fallback.call_started(identity)

    def call_ended(self, identity: str) -> None:
        self._fallback.call_ended(identity)

    # -- rate budgets --------------------------------------------------------

    def _budget_args(self, limit: RateLimit, now: float) -> tuple[Any, ...]:
        dims = (limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrency)
        signature = "|".join("" if d is None else repr(d) for d in dims)
        ttl = math.ceil(max(_BUDGET_TTL, self._lease + 120.0) * 1000)
        return (_n(now), signature, *("" if d is None else _n(d) for d in dims), ttl)

    def _remember_budget(self, identity: str, limit: RateLimit, reply: list[str]) -> None:
        self._budgets[identity] = _Budget(
            limit, float(reply[1]), float(reply[2]), float(reply[3]), float(reply[4]), int(reply[5])
        )

    async def reserve(self, identity: str, limit: RateLimit, tokens: float) -> float:
        now = self._clock()
        lease = self._lease_id() if limit.max_concurrency is not None else ""
        keys = self._keys(identity, "budget", "slots")
        args = (*self._budget_args(limit, now), _n(tokens), lease, _n(now + self._lease))
        reply = await self._run("RESERVE", keys, args)
        if reply is None:
            wait = await self._fallback.reserve(identity, limit, tokens)
            if wait == 0:
                self._slots.setdefault(identity, deque()).append(None)
            return wait
        self._remember_budget(identity, limit, reply)
        if reply[0] != "0":
            return max(float(reply[0]), 1e-3)
        self._slots.setdefault(identity, deque()).append(lease)
        return 0.0

    async def release(
        self,
        identity: str,
        limit: RateLimit,
        reserved: float,
        used: float | None,
        *,
        sent: bool = True,
    ) -> None:
        taken = self._slots.get(identity)
        held = taken.popleft() if taken else ""
        if taken is not None and not taken:
            del self._slots[identity]
        try:
            if held is None:  # reserved from memory: settled there
                await self._fallback.release(identity, limit, reserved, used, sent=sent)
                return
            keys = self._keys(identity, "budget", "slots")
            args = (*self._budget_args(limit, self._clock()), _n(reserved))
            tail = ("" if used is None else _n(used), "1" if sent else "0", held)
            reply = await self._run("RELEASE", keys, (*args, *tail))
            if reply is not None:
                self._remember_budget(identity, limit, reply)
            # else: the slot's lease runs out in Redis; nothing was taken from memory
        finally:
            event = self._freed.pop(identity, None)
            if event is not None:
                event.set()  # wake this process's calls waiting for a slot

    async def learn(self, identity: str, limit: RateLimit, signal: RateSignal) -> None:
        keys = self._keys(identity, "budget", "slots")
        said = (signal.requests, signal.tokens)
        tail = (*("" if v is None else _n(v) for v in said), _n(signal.blocked_for))
        reply = await self._run("LEARN", keys, (*self._budget_args(limit, self._clock()), *tail))
        if reply is None:
            await self._fallback.learn(identity, limit, signal)
            return
        self._remember_budget(identity, limit, reply)

    def budget_left(self, identity: str, limit: RateLimit) -> BudgetLeft:
        """The budget the last script of this process saw, refilled to now."""
        if self._degraded:
            return self._fallback.budget_left(identity, limit)
        rpm, tpm, slots = limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrency
        cached = self._budgets.get(identity)
        if cached is None or cached.limit != limit:
            return BudgetLeft(
                None if rpm is None else float(rpm), None if tpm is None else float(tpm), slots
            )
        now = self._clock()
        return BudgetLeft(
            _refilled(cached.requests, cached.requests_at, rpm, now),
            _refilled(cached.tokens, cached.tokens_at, tpm, now),
            None if slots is None else slots - cached.in_flight,
        )

    async def budget_freed(self, identity: str) -> None:
        """Return when a call of this process freed a slot, or after ``poll``
        seconds (a slot another process freed, or a lease ran out): the caller
        then reserves again."""
        event = self._freed.get(identity)
        if event is None:
            event = self._freed[identity] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll):
                await event.wait()

    # -- latency ---------------------------------------------------------------

    def latency(self, identity: str) -> float | None:
        return self._latency.get(identity)

    def latency_quantile(self, identity: str, quantile: float) -> float | None:
        samples = self._samples.get(identity)
        if samples is None or len(samples) < self.MIN_QUANTILE_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]

    def record_latency(self, identity: str, seconds: float) -> None:
        """Counted here at once; sent to Redis by a background task, whose
        reply (every process's samples) replaces this process's copy."""
        self._add_sample(identity, seconds)
        pending = self._pending.setdefault(identity, [])
        pending.append(seconds)
        del pending[: -self.LATENCY_SAMPLES]
        if self._flusher is None or self._flusher.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: the next sample recorded in one sends these too
            self._flusher = loop.create_task(self._flush())

    def _add_sample(self, identity: str, seconds: float) -> None:
        old = self._latency.get(identity)
        weight = self.LATENCY_WEIGHT
        self._latency[identity] = seconds if old is None else old + weight * (seconds - old)
        samples = self._samples.get(identity)
        if samples is None:
            samples = self._samples[identity] = deque(maxlen=self.LATENCY_SAMPLES)
        samples.append(seconds)

    async def _flush(self) -> None:
        while self._pending:
            identity = next(iter(self._pending))
            batch = self._pending.pop(identity)
            keys = self._keys(identity, "latency", "samples")
            head = (_n(self.LATENCY_WEIGHT), self.LATENCY_SAMPLES, math.ceil(_DAY * 1000))
            reply = await self._run("LATENCY", keys, (*head, *(_n(s) for s in batch)))
            if reply is None:
                continue  # this process's own samples stand
            self._latency[identity] = float(reply[0])
            self._samples[identity] = deque(
                (float(s) for s in reply[1:]), maxlen=self.LATENCY_SAMPLES
            )
            for seconds in self._pending.get(identity, ()):
                self._add_sample(identity, seconds)  # recorded while this batch was out


def _n(value: float) -> str:
    """A number as the scripts read it (exactly, for a double)."""
    return repr(float(value))


def _refilled(level: float, at: float, capacity: float | None, now: float) -> float | None:
    if capacity is None:
        return None
    return min(capacity, level + max(now - at, 0.0) * capacity / 60.0)


def _check_url(url: object) -> tuple[str, list[str]]:
    """The URL as it may be shown (password replaced by ``***``), and the secrets in it."""
    if not isinstance(url, str):
        raise InvalidRequestError(f"url must be a string, got {type(url).__name__}", field="url")
    try:
        parts = urlsplit(url)
        password = parts.password
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise InvalidRequestError("url is not a valid URL", field="url") from None
    found = [password] if password else []
    found += [value for key, value in query if key.lower() == "password" and value]
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    shown_query = urlencode(
        [(key, "***" if key.lower() == "password" else value) for key, value in query], safe="*"
    )
    safe = urlunsplit((parts.scheme, netloc, parts.path, shown_query, parts.fragment))
    hidden = sorted({*found, *(unquote(s) for s in found)}, key=len, reverse=True)
    if parts.scheme not in _SCHEMES:
        raise InvalidRequestError(
            f"url must start with redis://, rediss:// or unix://, got {safe!r}", field="url"
        )
    return safe, hidden
