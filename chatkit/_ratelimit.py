"""Per-provider rate and concurrency budgets (``RateLimit``), with no I/O.

A budget is two token buckets (requests and tokens per minute, refilled
continuously) and a count of calls in flight. A call reserves what it is
expected to cost before it is sent and settles the difference once its usage
is known; the server's own rate-limit headers replace chatkit's estimate, so
chatkit stops before the 429 instead of after it.

Written here rather than taken from aiolimiter: a reservation must be
corrected afterwards (usage is only known at the end), the server may reset
the remaining budget at any time, tests drive time through an injected clock,
and the same operations must later run atomically in a shared store.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chatkit._config import is_number
from chatkit._errors import InvalidRequestError

__all__ = [
    "RateBudget",
    "RateLimit",
    "RateSignal",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "read_rate_headers",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimit:
    """A provider's budget; ``None`` leaves that dimension unlimited.

    requests_per_minute / tokens_per_minute: refilled continuously, so a full
        minute's budget is never spent in one burst twice in a row.
    max_concurrency: calls in flight at once.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not 0 < value < math.inf):
                raise InvalidRequestError(
                    f"{name} must be a finite number > 0 or None, got {value!r}", field=name
                )
        limit = self.max_concurrency
        if limit is not None and (not is_number(limit, integer=True) or limit < 1):
            raise InvalidRequestError(
                f"max_concurrency must be an integer >= 1 or None, got {limit!r}",
                field="max_concurrency",
            )


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = max(now - self.updated, 0.0)
        self.level = min(self.capacity, self.level + elapsed * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        missing = min(amount, self.capacity) - self.level
        return max(missing, 0.0) * 60.0 / self.capacity


@dataclass
class RateBudget:
    """The live budget of one provider under ``limit``."""

    limit: RateLimit
    clock: Clock = time.monotonic
    in_flight: int = 0
    _requests: _Bucket | None = field(default=None, init=False)
    _tokens: _Bucket | None = field(default=None, init=False)
    _blocked_until: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        now = self.clock()
        if self.limit.requests_per_minute is not None:
            rpm = float(self.limit.requests_per_minute)
            self._requests = _Bucket(rpm, rpm, now)
        if self.limit.tokens_per_minute is not None:
            tpm = float(self.limit.tokens_per_minute)
            self._tokens = _Bucket(tpm, tpm, now)

    def wait_time(self, tokens: float) -> float:
        """Seconds until a call expected to cost ``tokens`` may start (0: now).

        ``math.inf`` while every concurrency slot is taken: only a finishing
        call frees one, not the passing of time.
        """
        now = self.clock()
        waits = [max(self._blocked_until - now, 0.0)]
        for bucket, amount in ((self._requests, 1.0), (self._tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                waits.append(bucket.wait_for(amount))
        limit = self.limit.max_concurrency
        if limit is not None and self.in_flight >= limit:
            waits.append(math.inf)
        return max(waits)

    def try_reserve(self, tokens: float) -> bool:
        """Take one request, ``tokens`` and a slot if all are there now."""
        if self.wait_time(tokens) > 0:
            return False
        if self._requests is not None:
            self._requests.level -= 1.0
        if self._tokens is not None:
            self._tokens.level -= min(tokens, self._tokens.capacity)
        self.in_flight += 1
        return True

    def settle(self, reserved: float, used: float | None) -> None:
        """The call ended: free its slot and correct its token estimate.

        ``used`` is the reported usage (None when unknown: the estimate stands).
        Over-estimates are given back and under-estimates taken, so the bucket
        may go below zero and the next call waits for it to refill.
        """
        self.in_flight = max(self.in_flight - 1, 0)
        if self._tokens is not None and used is not None:
            self._tokens.refill(self.clock())
            self._tokens.level = min(
                self._tokens.capacity,
                self._tokens.level + min(reserved, self._tokens.capacity) - used,
            )

    def refund(self, reserved: float) -> None:
        """A reservation whose call was never sent: its request, tokens and slot go back."""
        self.in_flight = max(self.in_flight - 1, 0)
        for bucket, amount in ((self._requests, 1.0), (self._tokens, reserved)):
            if bucket is not None:
                bucket.level = min(bucket.capacity, bucket.level + min(amount, bucket.capacity))

    def learn(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's view of the budget from its response headers."""
        signal = read_rate_headers(headers)
        if signal is not None:
            self.apply(signal)

    def apply(self, signal: RateSignal) -> None:
        """Lower the buckets to what the server says is left, and block every
        call until its reset when a dimension is exhausted (our bucket alone
        would refill sooner, at our own rate), or until a ``Retry-After``."""
        now = self.clock()
        for bucket, remaining in ((self._requests, signal.requests), (self._tokens, signal.tokens)):
            if bucket is not None and remaining is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
        if signal.blocked_for > 0:
            self._blocked_until = max(self._blocked_until, now + signal.blocked_for)

    def remaining(self) -> tuple[float | None, float | None]:
        """(requests, tokens) left now; None for an unlimited dimension."""
        now = self.clock()
        left: list[float | None] = []
        for bucket in (self._requests, self._tokens):
            if bucket is None:
                left.append(None)
            else:
                bucket.refill(now)
                left.append(bucket.level)
        return left[0], left[1]


@dataclass(frozen=True)
class RateSignal:
    """What a response's headers say of the budget: requests and tokens left
    (None: not said), and seconds during which nothing may be sent."""

    requests: float | None = None
    tokens: float | None = None
    blocked_for: float = 0.0


def read_rate_headers(headers: Mapping[str, str]) -> RateSignal | None:
    """The rate-limit headers of a response; None when it has none.

    OpenAI: ``x-ratelimit-remaining-requests`` / ``-tokens`` and
    ``x-ratelimit-reset-requests`` / ``-tokens`` (durations like ``6m0s``).
    Anthropic: ``anthropic-ratelimit-requests-remaining`` / ``-tokens-`` and
    their ``-reset`` (RFC 3339 times). A dimension at zero blocks until its
    reset; ``Retry-After`` blocks until it has passed.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    left: dict[str, float | None] = {}
    blocked = 0.0
    for kind in ("requests", "tokens"):
        remaining = _number(
            lowered.get(f"x-ratelimit-remaining-{kind}")
            or lowered.get(f"anthropic-ratelimit-{kind}-remaining")
        )
        left[kind] = remaining
        if remaining is not None and remaining <= 0:
            reset = _reset_seconds(
                lowered.get(f"x-ratelimit-reset-{kind}")
                or lowered.get(f"anthropic-ratelimit-{kind}-reset")
            )
            blocked = max(blocked, reset or 0.0)
    retry_after = _number(lowered.get("retry-after"))
    if retry_after is not None and retry_after > 0:
        blocked = max(blocked, retry_after)
    if left["requests"] is None and left["tokens"] is None and blocked == 0:
        return None
    return RateSignal(left["requests"], left["tokens"], blocked)


def estimate_prompt_tokens(messages: object) -> float:
    """About 4 characters per token: an estimate, not a tokenizer."""
    return len(repr(messages)) / 4.0


def estimate_tokens(messages: object, max_tokens: object) -> float:
    """A call's token cost before it is sent: the prompt's estimate plus the
    most it may answer (``max_tokens``, else 1024)."""
    prompt = estimate_prompt_tokens(messages)
    answer = float(max_tokens) if is_number(max_tokens) and max_tokens > 0 else 1024.0
    return prompt + answer


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$"
)


def _reset_seconds(value: str | None) -> float | None:
    """``6m0s`` / ``1.5s`` / ``20ms`` (OpenAI) or an RFC 3339 time (Anthropic)."""
    if not value:
        return None
    text = value.strip()
    plain = _number(text)
    if plain is not None:
        return max(plain, 0.0)
    match = _DURATION.match(text)
    if match and any(match.groups()):
        hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
        return hours * 3600 + minutes * 60 + seconds + millis / 1000
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - time.time(), 0.0)
