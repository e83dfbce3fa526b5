"""Provider health: the circuit breaker and the state store behind it.

``CircuitBreaker`` is configuration; the state lives in a ``StateStore``,
keyed by a provider's identity (its class, base URL and a hash of its key:
two keys of one vendor are two breakers). Every operation that changes state
is one async call, atomic for its identity, so a store shared between
processes (Redis, with a script per operation) can implement the protocol
without any caller changing. ``InMemoryStore`` is the default: one per
client, or per ``RetryProvider``, unless one is passed as ``state=``.

The breaker, per identity::

    closed --(failure_threshold retryable failures within window)--> open
    open --(cooldown, or a longer Retry-After, has passed)--> half_open
    half_open: at most half_open_probes calls at once go through
        a success closes; a failure re-opens with the cooldown doubled,
        up to max_cooldown

Retryable failures are what ``RetryPolicy`` would retry (connection errors,
timeouts, 408/409/429, 5xx, error events before content); a 400, 401 or 404
shows the provider is up, so it counts as an answer. Failures after the first
content are not counted: the provider was answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from chatkit._config import is_number
from chatkit._errors import APIError, InvalidRequestError
from chatkit._public import public
from chatkit._ratelimit import RateBudget, RateLimit, RateSignal
from chatkit.providers._http import HTTPProvider

__all__ = [
    "BudgetLeft",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "InMemoryStore",
    "ProviderHealth",
    "RateBudgetError",
    "StateStore",
    "check_state",
    "health_of",
    "provider_identity",
]

Clock = Callable[[], float]
State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class CircuitBreaker:
    """When a provider is skipped for a while instead of tried.

    clock: seconds, monotonic (default ``time.monotonic``); tests pass their
        own to move time without sleeping.
    """

    failure_threshold: int = 5
    window: float = 30.0
    cooldown: float = 30.0
    half_open_probes: int = 1
    max_cooldown: float = 300.0
    clock: Clock | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_probes"):
            value = getattr(self, name)
            if not is_number(value, integer=True) or value < 1:
                raise InvalidRequestError(
                    f"{name} must be an integer >= 1, got {value!r}", field=name
                )
        for name in ("window", "cooldown", "max_cooldown"):
            value = getattr(self, name)
            if not is_number(value) or not 0 < value < math.inf:
                raise InvalidRequestError(
                    f"{name} must be a finite number of seconds > 0, got {value!r}", field=name
                )
        if self.max_cooldown < self.cooldown:
            raise InvalidRequestError("max_cooldown must be >= cooldown", field="max_cooldown")
        if self.clock is not None and not callable(self.clock):
            raise InvalidRequestError("clock must be a callable or None", field="clock")

    def now(self) -> float:
        return (self.clock or time.monotonic)()

    @classmethod
    def coerce(
        cls, value: CircuitBreaker | bool | None, field_name: str = "breaker"
    ) -> CircuitBreaker | None:
        """``True``: the defaults; ``None`` / ``False``: off."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise InvalidRequestError(
            f"{field_name} must be a CircuitBreaker, True or None, got {type(value).__name__}",
            field=field_name,
        )


class CircuitOpenError(APIError):
    """Recorded on an attempt skipped because its provider's circuit is open."""


class RateBudgetError(APIError):
    """Recorded on an attempt skipped because its provider's rate budget is spent."""


@dataclass
class BreakerState:
    """One provider's breaker, as a store holds it."""

    state: State = "closed"
    failures: deque[float] = field(default_factory=deque)
    open_until: float | None = None
    cooldown: float | None = None  # the current one (doubles while probes fail)
    probes: int = 0  # half-open probes in flight


class Admission(NamedTuple):
    allowed: bool
    probe: bool = False
    open_until: float | None = None  # when not allowed: when it half-opens (None: a probe runs)


@runtime_checkable
class StateStore(Protocol):
    """Where provider health lives. Each coroutine is atomic for its identity."""

    async def admit(self, identity: str, breaker: CircuitBreaker, now: float) -> Admission:
        """May a call go to this provider now? Takes a probe slot when half-open."""
        ...

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
        """The outcome of an admitted call (releases its probe slot).

        ``failed=None``: the call ended without telling anything about the
        provider's health (cancelled, or skipped before any I/O); only its
        probe slot is released.
        """
        ...

    def peek(self, identity: str) -> BreakerState | None:
        """This process's latest view, for ``health()`` (may lag a shared store)."""
        ...

    def calls_in_flight(self, identity: str) -> int: ...

    async def reserve(self, identity: str, limit: RateLimit, tokens: float) -> float:
        """Take one request, ``tokens`` and a concurrency slot if all are there
        now, and return 0.0; otherwise take nothing and return the seconds
        until they may be (``math.inf`` while every slot is taken: only a
        call that ends frees one)."""
        ...

    async def release(
        self,
        identity: str,
        limit: RateLimit,
        reserved: float,
        used: float | None,
        *,
        sent: bool = True,
    ) -> None:
        """A reserved call ended: free its slot and settle its tokens by ``used``
        (None: the estimate stands). ``sent=False``: it was never sent, so its
        request and tokens go back too."""
        ...

    async def learn(self, identity: str, limit: RateLimit, signal: RateSignal) -> None:
        """Adopt what the provider's rate-limit headers said."""
        ...

    def budget_left(self, identity: str, limit: RateLimit) -> BudgetLeft:
        """This process's view of the budget, for ``health()``."""
        ...

    async def budget_freed(self, identity: str) -> None:
        """Return when a call of this provider freed its slot (the caller bounds the wait)."""
        ...

    def latency(self, identity: str) -> float | None:
        """Recent time to first content (EWMA, seconds); None before any sample."""
        ...

    def record_latency(self, identity: str, seconds: float) -> None: ...

    def latency_quantile(self, identity: str, quantile: float) -> float | None:
        """The ``quantile`` of recent latency samples; None before enough samples."""
        ...

    def call_started(self, identity: str) -> None: ...

    def call_ended(self, identity: str) -> None: ...


class InMemoryStore:
    """The default store: this process only.

    ``clock`` drives the rate budgets (tests pass one they can advance).
    """

    # Weight of the newest sample in the latency average.
    LATENCY_WEIGHT = 0.3
    # Recent samples kept per provider for quantiles (hedge_after="auto"),
    # and how many a quantile needs before it is trusted.
    LATENCY_SAMPLES = 200
    MIN_QUANTILE_SAMPLES = 20

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[str, BreakerState] = {}
        self._in_flight: dict[str, int] = {}
        self._latency: dict[str, float] = {}
        self._samples: dict[str, deque[float]] = {}
        self._budgets: dict[str, RateBudget] = {}
        self._freed: dict[str, asyncio.Event] = {}

    async def admit(self, identity: str, breaker: CircuitBreaker, now: float) -> Admission:
        entry = self._breakers.get(identity)
        if entry is None or entry.state == "closed":
            return Admission(True)
        if entry.state == "open":
            if entry.open_until is not None and now < entry.open_until:
                return Admission(False, open_until=entry.open_until)
            entry.state, entry.probes = "half_open", 0
        if entry.probes < breaker.half_open_probes:
            entry.probes += 1
            return Admission(True, probe=True)
        return Admission(False)

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
        entry = self._breakers.setdefault(identity, BreakerState())
        if probe:
            entry.probes = max(entry.probes - 1, 0)
        if failed is None:
            return
        if not failed:
            if entry.state != "closed":
                entry.state, entry.open_until, entry.cooldown = "closed", None, None
                entry.failures.clear()
            return
        if entry.state == "half_open":
            doubled = 2 * (entry.cooldown or breaker.cooldown)
            self._open(entry, min(doubled, breaker.max_cooldown), now, retry_after)
            return
        if entry.state == "open":
            return  # a call admitted before the circuit opened
        failures = entry.failures
        failures.append(now)
        while failures and failures[0] <= now - breaker.window:
            failures.popleft()
        if len(failures) >= breaker.failure_threshold:
            self._open(entry, breaker.cooldown, now, retry_after)

    @staticmethod
    def _open(entry: BreakerState, cooldown: float, now: float, retry_after: float | None) -> None:
        entry.state, entry.cooldown, entry.probes = "open", cooldown, 0
        entry.open_until = now + max(cooldown, retry_after or 0.0)
        entry.failures.clear()

    def peek(self, identity: str) -> BreakerState | None:
        return self._breakers.get(identity)

    def calls_in_flight(self, identity: str) -> int:
        return self._in_flight.get(identity, 0)

    def latency(self, identity: str) -> float | None:
        return self._latency.get(identity)

    def record_latency(self, identity: str, seconds: float) -> None:
        old = self._latency.get(identity)
        weight = self.LATENCY_WEIGHT
        self._latency[identity] = seconds if old is None else old + weight * (seconds - old)
        samples = self._samples.get(identity)
        if samples is None:
            samples = self._samples[identity] = deque(maxlen=self.LATENCY_SAMPLES)
        samples.append(seconds)

    def latency_quantile(self, identity: str, quantile: float) -> float | None:
        samples = self._samples.get(identity)
        if samples is None or len(samples) < self.MIN_QUANTILE_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]

    def _budget(self, identity: str, limit: RateLimit) -> RateBudget:
        budget = self._budgets.get(identity)
        if budget is None or budget.limit != limit:
            budget = self._budgets[identity] = RateBudget(limit, self._clock)
        return budget

    async def reserve(self, identity: str, limit: RateLimit, tokens: float) -> float:
        budget = self._budget(identity, limit)
        return 0.0 if budget.try_reserve(tokens) else max(budget.wait_time(tokens), 1e-3)

    async def release(
        self,
        identity: str,
        limit: RateLimit,
        reserved: float,
        used: float | None,
        *,
        sent: bool = True,
    ) -> None:
        budget = self._budget(identity, limit)
        if sent:
            budget.settle(reserved, used)
        else:
            budget.refund(reserved)
        event = self._freed.pop(identity, None)
        if event is not None:
            event.set()  # wake the calls waiting for a concurrency slot

    async def learn(self, identity: str, limit: RateLimit, signal: RateSignal) -> None:
        self._budget(identity, limit).apply(signal)

    def budget_left(self, identity: str, limit: RateLimit) -> BudgetLeft:
        budget = self._budget(identity, limit)
        requests, tokens = budget.remaining()
        slots = limit.max_concurrency
        return BudgetLeft(requests, tokens, None if slots is None else slots - budget.in_flight)

    async def budget_freed(self, identity: str) -> None:
        event = self._freed.get(identity)
        if event is None:
            event = self._freed[identity] = asyncio.Event()
        await event.wait()

    def call_started(self, identity: str) -> None:
        self._in_flight[identity] = self._in_flight.get(identity, 0) + 1

    def call_ended(self, identity: str) -> None:
        left = self._in_flight.get(identity, 0) - 1
        if left > 0:
            self._in_flight[identity] = left
        else:
            self._in_flight.pop(identity, None)


@dataclass(frozen=True)
class ProviderHealth:
    """What ``client.health()`` reports for one provider.

    in_flight and latency (recent time to first content, seconds) are tracked
    while a breaker, a rate limit or a "least_busy" / "latency" strategy is
    on; rate_budget_left is None unless the provider has a ``RateLimit``.
    """

    provider: str
    state: State
    failures_in_window: int
    open_until: float | None  # wall-clock seconds (time.time()), when open
    in_flight: int
    latency: float | None = None
    rate_budget_left: BudgetLeft | None = None


@dataclass(frozen=True)
class BudgetLeft:
    """A rate-limited provider's budget now; None for an unlimited dimension."""

    requests: float | None
    tokens: float | None
    concurrency: int | None


def health_of(
    name: str,
    identity: str,
    store: StateStore,
    breaker: CircuitBreaker | None,
    limit: RateLimit | None = None,
) -> ProviderHealth:
    entry = store.peek(identity)
    state: State = "closed"
    failures = 0
    open_until = None
    if entry is not None:
        state = entry.state
        now = breaker.now() if breaker is not None else time.monotonic()
        window = breaker.window if breaker is not None else math.inf
        failures = sum(1 for moment in entry.failures if moment > now - window)
        if entry.open_until is not None and state == "open":
            open_until = time.time() + (entry.open_until - now)
    left = store.budget_left(identity, limit) if limit is not None else None
    return ProviderHealth(
        name,
        state,
        failures,
        open_until,
        store.calls_in_flight(identity),
        latency=store.latency(identity),
        rate_budget_left=left,
    )


def check_state(state: StateStore | None) -> StateStore:
    """A caller's ``state=``, or a fresh ``InMemoryStore``."""
    if state is None:
        return InMemoryStore()
    if not isinstance(state, StateStore):
        raise InvalidRequestError(
            f"state must be a chatkit StateStore, got {type(state).__name__}", field="state"
        )
    return state


def provider_identity(provider: object) -> str:
    """Class, base URL and a short hash of the key; never the key itself."""
    cls = type(provider)
    if not isinstance(provider, HTTPProvider):
        # A third-party provider: nothing says where it sends its calls.
        return f"{cls.__module__}.{cls.__qualname__}@{id(provider):x}"
    key = provider._api_key
    digest = hashlib.sha256(key.encode()).hexdigest()[:12] if key else "-"
    return f"{cls.__module__}.{cls.__qualname__}|{provider.base_url}|{digest}"


public(CircuitOpenError, RateBudgetError)
