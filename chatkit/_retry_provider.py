"""``RetryProvider`` and ``IterListProvider``: many providers behind one.

g4f's names, with the semantics of ``RetryingCall``: retry only what can
succeed, honour Retry-After, one deadline, and never repeat or splice tokens
(the commit point). Each is itself a provider, so they nest; the client
drives them through ``retrying_call`` and adds no retry layer of its own.
See docs/retries.md for the exact rules.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar, Literal

from chatkit._aliases import ProviderSpec
from chatkit._attempt import Attempt
from chatkit._config import is_number
from chatkit._errors import InvalidRequestError
from chatkit._health import (
    CircuitBreaker,
    ProviderHealth,
    StateStore,
    check_state,
    health_of,
    provider_identity,
)
from chatkit._hedge import HedgeAfter, Hedging
from chatkit._ratelimit import RateLimit
from chatkit._request import ChatRequest
from chatkit._resume import Resume
from chatkit._retry import RetryingCall, RetryPolicy
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletion, ChatCompletionChunk
from chatkit.providers._base import Provider, provider_name, rate_limit_of

__all__ = ["IterListProvider", "RetryProvider"]

AttemptHook = Callable[[Attempt], object]


def _check_providers(providers: object) -> tuple[Provider | type[Provider], ...]:
    if isinstance(providers, str | bytes) or not isinstance(providers, Sequence):
        raise InvalidRequestError(
            "providers must be a list of provider classes, instances or registered names",
            field="providers",
        )
    checked: list[Provider | type[Provider]] = []
    for index, provider in enumerate(providers):
        if isinstance(provider, str):
            # Late import: the registry imports this module lazily, the other way round.
            from chatkit.providers import get_provider_class

            provider = get_provider_class(provider)
        # A class counts as a provider when its instances will be one.
        if not isinstance(provider, Provider):
            raise InvalidRequestError(
                f"providers[{index}] is not a provider (it has no stream method):"
                f" {type(provider).__name__}",
                field=f"providers[{index}]",
            )
        checked.append(provider)
    return tuple(checked)


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not is_number(timeout) or math.isnan(timeout) or timeout <= 0:
        raise InvalidRequestError(f"timeout must be > 0 seconds, got {timeout!r}", field="timeout")
    return float(timeout)


def _instance(spec: object) -> object | None:
    """A member as an instance (health of a class member needs its key): None
    when it cannot be built here (no key in the environment)."""
    if not isinstance(spec, type):
        return spec
    try:
        built: object = spec()
    except Exception:  # a member that cannot be built has no health yet
        return None
    return built


Strategy = Literal["ordered", "shuffle", "least_busy", "latency"]
STRATEGIES: tuple[Strategy, ...] = ("ordered", "shuffle", "least_busy", "latency")


class IterListProvider:
    """Try each provider once, in order, until one answers (a fallback chain).

    providers: provider classes (instantiated per call with no arguments, so
        credentials come from the environment), instances, or registered names.
    shuffle: randomise the order on every call (g4f's default). Pass
        ``shuffle=False`` for a strict priority order.
    timeout: seconds for the whole call through this provider, from its
        start: every attempt and the streamed answer to its end. The client's
        ``Timeout.total`` still applies; whichever ends first wins.
    on_attempt: called with an ``Attempt`` after each attempt (and each
        skipped provider), for logging and metrics.
    name: shown in errors and logs.
    breaker: a ``CircuitBreaker`` per member (``True``: the defaults; ``None``,
        the default: off). A member whose circuit is open is skipped without I/O.
    strategy: the order members are tried in, per call: ``"ordered"`` (as
        listed), ``"shuffle"`` (random), ``"least_busy"`` (fewest calls in
        flight first) or ``"latency"`` (lowest recent time to first content
        first; members without a sample yet come first, to get one). Members
        with an open circuit go last. Default: ``"shuffle"`` if ``shuffle``
        else ``"ordered"``. The caller's list is never reordered in place.
    state: where health lives (``InMemoryStore`` of this provider by default).
    hedge_after: seconds without first content (without the whole answer,
        when not streamed) before the next member is started alongside; the
        first to reach content wins and the others are disconnected.
        ``"auto"``: the member's recent p95 time to first content. ``None``
        (the default): off.
    hedge_budget: the most of the recent 100 calls that may hedge (0.1).
    hedge_floor, hedge_default: for ``"auto"``, the shortest delay (0.05 s),
        and the delay before a member has 20 samples (1 s).
    fallback_on_empty: an answer with no content at all (empty, a content
        filter before any content, ``length`` with no tokens) moves on to the
        next member as a failure before content would (``EmptyAnswerError``
        on its attempt). Never after content. Default False.
    resume: ``True`` or a ``chatkit.Resume``: continue a stream that broke off
        after content, on the member that was answering (or, with
        ``same_provider_only=False``, the members after it that can
        continue). Used when this provider is the client's; the client's
        ``resume``, when given (``True``, ``False`` or a ``Resume``), wins.
        Default None: off (docs/resilience.md).
    """

    name: str = "IterListProvider"
    handles_retries: ClassVar[bool] = True

    def __init__(
        self,
        providers: Sequence[ProviderSpec],
        shuffle: bool = True,
        *,
        timeout: float | None = None,
        on_attempt: AttemptHook | None = None,
        name: str | None = None,
        breaker: CircuitBreaker | bool | None = None,
        state: StateStore | None = None,
        strategy: Strategy | None = None,
        hedge_after: HedgeAfter | None = None,
        hedge_budget: float = 0.1,
        hedge_floor: float = 0.05,
        hedge_default: float = 1.0,
        fallback_on_empty: bool = False,
        resume: Resume | bool | None = None,
    ) -> None:
        self.providers = _check_providers(providers)
        self.resume = Resume.coerce(resume)
        self.fallback_on_empty = bool(fallback_on_empty)
        # Once, not per call: a runtime-checkable isinstance costs ~20 us.
        self._rate_limited = any(_rate_limit(member) is not None for member in self.providers)
        self.hedging = (
            None
            if hedge_after is None
            else Hedging(
                hedge_after,
                hedge_budget,
                _seconds("hedge_floor", hedge_floor),
                _seconds("hedge_default", hedge_default),
            )
        )
        self.breaker = CircuitBreaker.coerce(breaker)
        self.state = check_state(state)
        if strategy is not None and strategy not in STRATEGIES:
            raise InvalidRequestError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}",
                field="strategy",
            )
        self.strategy: Strategy = strategy or ("shuffle" if shuffle else "ordered")
        self.shuffle = self.strategy == "shuffle"
        self.timeout = _check_timeout(timeout)
        if on_attempt is not None and not callable(on_attempt):
            raise InvalidRequestError("on_attempt must be callable", field="on_attempt")
        self.on_attempt = on_attempt
        if name is not None:
            self.name = name
        self.policy = RetryPolicy(max_retries=0)

    @property
    def single_provider_retry(self) -> bool:
        return False

    def __repr__(self) -> str:
        names = ", ".join(provider_name(p) for p in self.providers)
        return f"{type(self).__name__}([{names}], shuffle={self.shuffle}{self._repr_extra()})"

    def _repr_extra(self) -> str:
        return ""

    def _order(self) -> list[Provider | type[Provider]]:
        order = list(self.providers)
        if self.strategy == "shuffle":
            random.shuffle(order)
        elif self.strategy in ("least_busy", "latency"):
            order.sort(key=self._load)  # stable: ties keep the listed order
        if self.breaker is not None:
            order.sort(key=self._is_open)
        return order

    def _tracking(self) -> bool:
        return (
            self.breaker is not None
            or self.strategy in ("least_busy", "latency")
            or self.hedging is not None
            or self._rate_limited
        )

    def _load(self, member: Provider | type[Provider]) -> float:
        built = _instance(member)
        if built is None:
            return math.inf
        identity = provider_identity(built)
        if self.strategy == "least_busy":
            return self.state.calls_in_flight(identity)
        latency = self.state.latency(identity)
        return -1.0 if latency is None else latency

    def _is_open(self, member: Provider | type[Provider]) -> bool:
        built = _instance(member)
        if built is None:
            return False
        entry = self.state.peek(provider_identity(built))
        if entry is None or entry.state != "open" or self.breaker is None:
            return False
        # Past its cooldown it is due a probe: not "open" for the order.
        return entry.open_until is None or self.breaker.now() < entry.open_until

    def retrying_call(self, request: ChatRequest, http: HTTPCall) -> RetryingCall:
        """A fresh call over the providers (shuffled now, if asked)."""
        return RetryingCall(
            self._order(),
            request,
            http,
            self.policy,
            retry_same=self.single_provider_retry,
            aggregate=True,
            on_attempt=self.on_attempt,
            label=self.name,
            timeout=self.timeout,
            route_models=True,
            breaker=self.breaker,
            state=self.state if self._tracking() else None,
            hedging=self.hedging,
            fallback_on_empty=self.fallback_on_empty,
            resume=self.resume,
        )

    def health(self) -> list[ProviderHealth]:
        """Each member's health: breaker state, failures in the window, in flight."""
        return [
            health_of(
                provider_name(member),
                provider_identity(member),
                self.state,
                self.breaker,
                _rate_limit(member),
            )
            for member in (_instance(p) for p in self.providers)
            if member is not None
        ]

    def stream(self, request: ChatRequest, http: HTTPCall) -> AsyncIterator[ChatCompletionChunk]:
        """The provider protocol: the answer's chunks, retried up to the commit point."""
        return self.retrying_call(request, http).stream()

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        """The provider protocol: a whole answer, retried and fallen back as needed."""
        return await self.retrying_call(request, http).complete()


class RetryProvider(IterListProvider):
    """Retry and fall back across providers; never repeats or splices tokens.

    single_provider_retry: True: each provider gets up to ``max_retries``
        retries on retryable errors (with backoff) before the next is tried.
        False (g4f's default): each provider is tried once, then the next.
    max_retries: retries of one provider after its first attempt, so at most
        ``max_retries + 1`` attempts per provider and
        ``len(providers) * (max_retries + 1)`` in all. Only used when
        ``single_provider_retry`` is True. Default 2.
    backoff_base, backoff_max: full-jitter exponential backoff between
        retries of one provider: a uniform draw from 0 to
        ``min(backoff_max, backoff_base * 2**n)`` seconds before retry n.
    retry_after_max: the longest Retry-After / retry-after-ms hint honoured;
        a longer one (or one past the deadline) moves on to the next
        provider at once.
    retry_on: ``f(error) -> True | False | None``: retry on the same
        provider, move on, or apply the default rules.
    policy: a whole ``RetryPolicy``; the arguments above override its fields.
    breaker, strategy, state, hedge_*, fallback_on_empty, resume: as for
        ``IterListProvider``.
    """

    name: str = "RetryProvider"

    def __init__(
        self,
        providers: Sequence[ProviderSpec],
        shuffle: bool = True,
        single_provider_retry: bool = False,
        max_retries: int | None = None,
        *,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        retry_after_max: float | None = None,
        retry_on: Callable[[BaseException], bool | None] | None = None,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
        on_attempt: AttemptHook | None = None,
        name: str | None = None,
        breaker: CircuitBreaker | bool | None = None,
        state: StateStore | None = None,
        strategy: Strategy | None = None,
        hedge_after: HedgeAfter | None = None,
        hedge_budget: float = 0.1,
        hedge_floor: float = 0.05,
        hedge_default: float = 1.0,
        fallback_on_empty: bool = False,
        resume: Resume | bool | None = None,
    ) -> None:
        super().__init__(
            providers,
            shuffle,
            timeout=timeout,
            on_attempt=on_attempt,
            name=name,
            breaker=breaker,
            state=state,
            strategy=strategy,
            hedge_after=hedge_after,
            hedge_budget=hedge_budget,
            hedge_floor=hedge_floor,
            hedge_default=hedge_default,
            fallback_on_empty=fallback_on_empty,
            resume=resume,
        )
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise InvalidRequestError("policy must be a RetryPolicy", field="policy")
        base = policy or RetryPolicy()
        # Each argument given overrides the policy's field; None keeps it.
        self.policy = dataclasses.replace(
            base,
            max_retries=base.max_retries if max_retries is None else max_retries,
            backoff_base=base.backoff_base if backoff_base is None else backoff_base,
            backoff_max=base.backoff_max if backoff_max is None else backoff_max,
            retry_after_max=base.retry_after_max if retry_after_max is None else retry_after_max,
            retry_on=base.retry_on if retry_on is None else retry_on,
        )
        self._single_provider_retry = bool(single_provider_retry)

    @property
    def single_provider_retry(self) -> bool:
        return self._single_provider_retry

    @property
    def max_retries(self) -> int:
        return self.policy.max_retries

    def _repr_extra(self) -> str:
        return (
            f", single_provider_retry={self.single_provider_retry}, max_retries={self.max_retries}"
        )


def _rate_limit(member: object) -> RateLimit | None:
    return rate_limit_of(member)


def _seconds(name: str, value: object) -> float:
    if not is_number(value) or not 0 <= value < math.inf:
        raise InvalidRequestError(f"{name} must be seconds >= 0, got {value!r}", field=name)
    return float(value)
