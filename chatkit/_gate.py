"""The health checks of one call: rate budgets and circuit breakers, per attempt.

A mixin of ``RetryingCall``: before an attempt, ``_admit`` asks the provider's
rate budget and breaker (a provider without budget is passed over unless it is
the last choice; an open circuit is skipped without I/O); after it,
``_release`` reports the outcome, the latency and the tokens used, and lets the
budget learn from the response's rate-limit headers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from chatkit._attempt import Attempt
from chatkit._errors import APIStatusError, ClientClosedError
from chatkit._health import (
    CircuitBreaker,
    CircuitOpenError,
    RateBudgetError,
    StateStore,
    provider_identity,
)
from chatkit._policy import RetryPolicy
from chatkit._ratelimit import RateLimit, estimate_tokens, read_rate_headers
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletion
from chatkit.providers._base import rate_limit_of

__all__ = ["CLOSED_GATE", "Gate", "HealthChecks", "breaker_state", "tokens_used"]

CLOSED_GATE = object()
"""What ``_admit`` returns when the provider is skipped."""


class HealthChecks:
    """What a call needs for its health checks; ``RetryingCall`` provides it."""

    state: StateStore | None
    breaker: CircuitBreaker | None
    policy: RetryPolicy
    http: HTTPCall
    attempts: list[Attempt]
    _first: int
    _half_opens: float | None

    if TYPE_CHECKING:  # RetryingCall defines them

        def _nested(self, provider: object) -> bool: ...

        async def _skip(self, name: str, error: BaseException) -> None: ...

        async def _breaker_changed(self, name: str, old: str, new: str) -> None: ...

        def _remaining(self) -> float | None: ...

    async def _admit(
        self, provider: object, name: str, request: ChatRequest, last: bool
    ) -> Gate | object | None:
        """Ask the rate budget and the breaker whether ``provider`` may be tried now.

        Returns None (no health tracking), a gate to release once the attempt
        ended, or ``CLOSED_GATE`` when the provider is skipped (recorded here).
        A provider without budget is passed over, unless it is the ``last``
        choice: then the call waits for budget, within its deadline.
        """
        state = self.state
        if state is None or self._nested(provider):
            return None
        identity = provider_identity(provider)
        limit = rate_limit_of(provider)
        reserved = 0.0
        if limit is not None:
            params = request.params
            reserved = estimate_tokens(
                request.messages, params.get("max_completion_tokens", params.get("max_tokens"))
            )
            if not await self._reserve(limit, reserved, identity, last):
                await self._skip(name, RateBudgetError(f"{name}: rate limit: no budget left"))
                return CLOSED_GATE
        probe = False
        breaker = self.breaker
        if breaker is not None:
            now = breaker.now()
            admission = await state.admit(identity, breaker, now)
            if not admission.allowed:
                if limit is not None:
                    await state.release(identity, limit, reserved, None, sent=False)
                await self._skip(name, _circuit_open(name, admission.open_until, now))
                until = admission.open_until
                if until is not None:
                    earliest = self._half_opens
                    self._half_opens = until if earliest is None else min(earliest, until)
                return CLOSED_GATE
            probe = admission.probe
        state.call_started(identity)
        return Gate(identity, name, probe, limit, reserved, tracked=breaker is not None)

    async def _reserve(self, limit: RateLimit, tokens: float, identity: str, last: bool) -> bool:
        """Take budget for one call; the last choice waits for it, within the deadline."""
        assert self.state is not None
        while (wait := await self.state.reserve(identity, limit, tokens)) > 0:
            if not last:
                return False
            remaining = self._remaining()
            if wait == math.inf:  # every slot taken: wait for a call to end
                try:
                    async with asyncio.timeout(remaining):
                        await self.state.budget_freed(identity)
                except TimeoutError:
                    return False
                continue
            if remaining is not None and wait >= remaining:
                return False
            await anyio.sleep(wait)
        return True

    async def _release(
        self,
        gate: Gate | object | None,
        error: Exception | None,
        latency: float | None = None,
        used: float | None = None,
        still_streaming: bool = False,
    ) -> None:
        """The attempt behind ``gate`` ended, or committed: ``latency`` (to its
        first content, or to its whole answer when not streamed) and the tokens
        ``used`` (when reported) come with a success. A committed stream
        (``still_streaming``) keeps its concurrency slot until ``_end``."""
        if not isinstance(gate, Gate) or self.state is None:
            return
        if gate.limit is not None:
            headers: Mapping[str, str] | None = None
            if isinstance(error, APIStatusError):
                headers = error.headers
            if error is None:
                headers = self.http.response_headers.get(gate.name)
            signal = read_rate_headers(headers) if headers else None
            if signal is not None:
                await self.state.learn(gate.identity, gate.limit, signal)
        if not still_streaming:
            await self._end(gate, used)
        if latency is not None:
            self.state.record_latency(gate.identity, latency)
        breaker = self.breaker
        if breaker is None:
            return
        failed = error is not None and not isinstance(error, ClientClosedError)
        failed = failed and self.policy.decide(error) == "retry"  # type: ignore[arg-type]
        retry_after = self.policy.retry_after(error) if failed and error is not None else None
        before = self.state.peek(gate.identity)
        old = before.state if before is not None else "closed"
        await self.state.record(
            gate.identity,
            breaker,
            failed=failed,
            probe=gate.probe,
            now=breaker.now(),
            retry_after=retry_after,
        )
        after = self.state.peek(gate.identity)
        new = after.state if after is not None else "closed"
        if new != old:
            await self._breaker_changed(gate.name, old, new)

    async def _abandon(self, gate: Gate | object | None) -> None:
        """The attempt behind ``gate`` ended telling nothing of the provider's
        health (skipped, cancelled, or the client closed): free what it held."""
        if not isinstance(gate, Gate) or self.state is None:
            return
        await self._end(gate)
        breaker = self.breaker
        if breaker is not None and gate.probe:
            now = breaker.now()
            await self.state.record(gate.identity, breaker, failed=None, probe=True, now=now)

    async def _end(self, gate: Gate | object | None, used: float | None = None) -> None:
        """The call behind ``gate`` is over: free its slot, settle its tokens."""
        if not isinstance(gate, Gate) or self.state is None:
            return
        self.state.call_ended(gate.identity)
        if gate.limit is not None:
            await self.state.release(gate.identity, gate.limit, gate.reserved, used)

    def _wait_for_half_open(self) -> float | None:
        """Seconds to wait for the earliest circuit to half-open, when every
        provider was skipped as open and the call's deadline allows it."""
        earliest, breaker = self._half_opens, self.breaker
        if earliest is None or breaker is None:
            return None
        mine = self.attempts[self._first :]
        if not mine or not all(isinstance(a.error, CircuitOpenError) for a in mine):
            return None
        wait = max(earliest - breaker.now(), 0.0)
        remaining = self._remaining()
        if remaining is not None and wait >= remaining:
            return None
        return wait


@dataclass(frozen=True)
class Gate:
    """What an admitted attempt holds: its provider's identity and name,
    whether it is a half-open probe, its reserved budget."""

    identity: str
    name: str
    probe: bool
    limit: RateLimit | None = None
    reserved: float = 0.0
    tracked: bool = False  # a breaker admitted it


def breaker_state(gate: object) -> str | None:
    """The circuit an attempt was admitted through, for ``Attempt.breaker``."""
    if not isinstance(gate, Gate) or not gate.tracked:
        return None
    return "half_open" if gate.probe else "closed"


def tokens_used(result: object) -> float | None:
    """A non-streamed answer's reported tokens (a stream's come too late)."""
    if isinstance(result, ChatCompletion) and result.usage is not None:
        return float(result.usage.total_tokens)
    return None


def _circuit_open(name: str, open_until: float | None, now: float) -> CircuitOpenError:
    if open_until is None:
        return CircuitOpenError(f"{name}: circuit half-open, its probe is in flight", provider=name)
    when = time.strftime("%H:%M:%S", time.localtime(time.time() + open_until - now))
    return CircuitOpenError(f"{name}: circuit open until {when}", provider=name)
