"""``RetryPolicy``: whether an error is worth retrying, and how long to wait.

Pure: no I/O, no state. ``RetryingCall`` (``_retry``) applies it to each
attempt, and the breaker (``_health``) uses its verdict to tell a failing
provider from one that answered.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from chatkit._config import is_number
from chatkit._errors import (
    APIConnectionError,
    APIStatusError,
    InvalidRequestError,
    PoolTimeoutError,
)

__all__ = ["Decision", "RetryPolicy"]

Decision = Literal["retry", "next"]
_RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry on the same provider, and how long to wait first.

    max_retries: retries per provider after its first attempt (so at most
        ``max_retries + 1`` attempts of one provider).
    backoff_base / backoff_max: exponential backoff ``base * 2**n`` capped at
        ``backoff_max``, with full jitter (a uniform draw from 0 to that).
    retry_after_max: the longest ``Retry-After`` / ``retry-after-ms`` honoured;
        a longer hint moves on to the next provider instead of sleeping.
    retry_statuses: statuses retried besides every 5xx.
    retry_on: an optional classifier consulted first: it returns True (retry
        on the same provider), False (move on to the next) or None (use the
        rules above).
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    retry_statuses: frozenset[int] = _RETRY_STATUSES
    retry_on: Callable[[BaseException], bool | None] | None = None

    def __post_init__(self) -> None:
        if not is_number(self.max_retries, integer=True) or self.max_retries < 0:
            raise InvalidRequestError(
                f"max_retries must be an integer >= 0, got {self.max_retries!r}",
                field="max_retries",
            )
        for name, value in (
            ("backoff_base", self.backoff_base),
            ("backoff_max", self.backoff_max),
            ("retry_after_max", self.retry_after_max),
        ):
            if not is_number(value) or value < 0:
                raise InvalidRequestError(f"{name} must be a number >= 0", field=name)
        if self.retry_on is not None and not callable(self.retry_on):
            raise InvalidRequestError("retry_on must be a callable or None", field="retry_on")

    def decide(self, error: BaseException) -> Decision:
        """``"retry"`` if the same provider may succeed later, else ``"next"``."""
        if self.retry_on is not None:
            verdict = self.retry_on(error)
            if verdict is not None:
                return "retry" if verdict else "next"
        if isinstance(error, APIStatusError):
            hint = _header(error, "x-should-retry")
            if hint in ("true", "false"):
                return "retry" if hint == "true" else "next"
            status = error.status_code
            return "retry" if status in self.retry_statuses or status >= 500 else "next"
        if isinstance(error, PoolTimeoutError):
            # Every connection to this host is busy: waiting again for the same
            # pool would only starve the fallback to another host.
            return "next"
        # Third-party providers may raise the builtin kinds rather than chatkit's.
        if isinstance(error, APIConnectionError | TimeoutError | ConnectionError):
            return "retry"
        return "next"

    def backoff(self, retry: int) -> float:
        """Full-jitter exponential backoff before retry number ``retry`` (0-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**retry))
        return random.uniform(0.0, ceiling)

    def retry_after(self, error: BaseException) -> float | None:
        """The server's wait hint in seconds, if it sent a usable one.

        ``nan`` and ``inf`` are no hint at all: the backoff applies.
        """
        millis = _finite(_header(error, "retry-after-ms"))
        if millis is not None:
            return max(millis / 1000.0, 0.0)
        value = _header(error, "retry-after")
        if value is None:
            return None
        seconds = _finite(value)
        if seconds is not None:
            return max(seconds, 0.0)
        if _is_number(value):
            return None
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)

    def delay(self, error: BaseException, retry: int, remaining: float | None) -> float | None:
        """Seconds to sleep before retrying, or None to move on to the next provider."""
        hint = self.retry_after(error)
        if hint is not None:
            if hint > self.retry_after_max:
                return None
            wait = hint
        else:
            wait = self.backoff(retry)
        if remaining is not None and wait >= remaining:
            return None
        return wait


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _finite(text: str | None) -> float | None:
    if text is None or not _is_number(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@runtime_checkable
class _WithHeaders(Protocol):
    # chatkit's status errors, and a third-party provider's own errors alike.
    headers: Mapping[str, object] | None


def _header(error: BaseException, name: str) -> str | None:
    if not isinstance(error, _WithHeaders) or not error.headers:
        return None
    for key, value in error.headers.items():
        if key.lower() == name:
            return str(value).strip().lower()
    return None
