"""Hedged first tokens: racing the next provider against a slow one.

When the attempt in flight has shown no content ``hedge_after`` seconds after
it started, the next candidate is started alongside it. The first to reach
content wins (for a non-streamed call: the first complete answer); the others
are cancelled and their connections closed, so the commit point holds: one
answer, from one provider. A lane that fails before content lets the next
candidate start at once, as an ordinary fallback.

Hedging is throttled like gRPC's hedging policy: no new hedge while more than
``budget`` of the recent calls were hedged, so an outage does not double the
load.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from chatkit._attempt import Attempt
from chatkit._config import is_number
from chatkit._errors import InvalidRequestError
from chatkit._health import StateStore, provider_identity
from chatkit._request import ChatRequest

__all__ = ["NOTHING", "HedgeAfter", "Hedging", "Lane", "Won", "race"]

NOTHING = object()
"""What a lane or a round returns when no provider answered."""

HedgeAfter = float | Literal["auto"]

C = TypeVar("C")
P = TypeVar("P")
T = TypeVar("T")


@dataclass(eq=False)
class Lane(Generic[P]):
    """One candidate made ready to try, with its retries."""

    provider: P
    request: ChatRequest
    name: str
    last: bool
    hedge: bool = False
    lost: bool = False
    racing: bool = False  # a success is recorded by the race, once it has a winner


@dataclass(eq=False)
class Won:
    """A lane's answer: a completion, or a stream that reached content."""

    result: object
    attempt: Attempt
    gate: object


class Racer(Protocol[C, P]):
    """What ``race`` needs of the call (``RetryingCall``)."""

    @property
    def candidates(self) -> Sequence[C]: ...

    @property
    def state(self) -> StateStore | None: ...

    async def lane(self, candidate: C, last: bool) -> Lane[P] | None: ...

    async def run_lane(
        self, lane: Lane[P], try_once: Callable[[P, str, ChatRequest], Awaitable[T]]
    ) -> Won | object: ...

    async def discard(self, won: Won) -> None: ...

    async def _record(self, attempt: Attempt) -> None: ...

    def _nested(self, provider: object) -> bool: ...


@dataclass(eq=False)
class Hedging:
    """A ``RetryProvider``'s hedging settings, and its recent hedges.

    after: seconds without content before the next provider is started, or
        ``"auto"``: the waited-on provider's recent p95 time to first content
        (``default`` before it has enough samples, never below ``floor``).
    budget: the most of the recent ``window`` calls that may hedge.
    """

    after: HedgeAfter
    budget: float = 0.1
    floor: float = 0.05
    default: float = 1.0
    window: int = 100
    _recent: deque[bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        after = self.after
        if after != "auto" and (not is_number(after) or not 0 <= after < math.inf):
            raise InvalidRequestError(
                f'hedge_after must be seconds >= 0, "auto" or None, got {after!r}',
                field="hedge_after",
            )
        if not is_number(self.budget) or not 0 <= self.budget <= 1:
            raise InvalidRequestError(
                f"hedge_budget must be a fraction from 0 to 1, got {self.budget!r}",
                field="hedge_budget",
            )
        self._recent = deque(maxlen=self.window)

    def delay(self, provider: object, state: StateStore | None) -> float:
        """Seconds to wait for ``provider``'s content before hedging."""
        if self.after != "auto":
            return float(self.after)
        p95 = None
        if state is not None and provider is not None:
            p95 = state.latency_quantile(provider_identity(provider), 0.95)
        return max(self.default if p95 is None else p95, self.floor)

    def may_hedge(self) -> bool:
        return sum(self._recent) < self.budget * self.window

    def note(self, hedged: bool) -> None:
        """Count one call: when it started its first hedge, or ended without any."""
        self._recent.append(hedged)


async def race(
    call: Racer[C, P], try_once: Callable[[P, str, ChatRequest], Awaitable[T]], hedging: Hedging
) -> Won | object:
    """The candidates of ``call`` raced as ``hedging`` says; the winner, or NOTHING."""
    loop = asyncio.get_running_loop()
    waiting = list(enumerate(call.candidates))
    last = len(waiting) - 1
    running: dict[asyncio.Task[Won | object], Lane[P]] = {}
    started: list[Lane[P]] = []
    hedge_at = math.inf
    hedges = 0

    async def start(hedge: bool) -> bool:
        nonlocal hedge_at
        while waiting:
            index, candidate = waiting.pop(0)
            lane = await call.lane(candidate, index == last)
            if lane is None:
                continue
            lane.hedge, lane.racing = hedge, True
            started.append(lane)
            running[asyncio.ensure_future(call.run_lane(lane, try_once))] = lane
            nested = call._nested(lane.provider)
            hedge_at = loop.time() + hedging.delay(None if nested else lane.provider, call.state)
            return True
        return False

    winners: list[tuple[int, Won]] = []
    try:
        await start(hedge=False)
        while running:
            timeout = None
            if waiting and hedging.may_hedge():
                timeout = max(hedge_at - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # no content in time: start the next provider alongside
                # Asked again: concurrent calls may have spent the budget meanwhile.
                if hedging.may_hedge() and await start(hedge=True):
                    hedges += 1
                    if hedges == 1:  # the budget counts calls that hedged
                        hedging.note(True)
                continue
            for task in done:
                lane = running.pop(task)
                won = task.result()  # a ClientClosedError ends the race (finally)
                if isinstance(won, Won):
                    winners.append((started.index(lane), won))
            if winners:
                winners.sort(key=lambda pair: pair[0])  # a tie goes to the earlier provider
                await call._record(winners[0][1].attempt)  # before the losers end
                break
            if not running:  # every lane failed: fall back to the next one
                await start(hedge=False)
    finally:
        for task, lane in running.items():
            lane.lost = True
            task.cancel()
        if running:
            await asyncio.wait(running)
        if hedges == 0:
            hedging.note(False)
    if not winners:
        return NOTHING
    for _, loser in winners[1:]:
        await call.discard(loser)
        await call._record(loser.attempt)
    return winners[0][1]
