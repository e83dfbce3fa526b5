"""Retries and fallback, with a commit point.

``RetryPolicy`` decides (pure, no I/O): is this error worth retrying on the
same provider, how long to wait. ``RetryingCall`` drives one call through a
list of providers with that policy. The client uses it for its single
provider's ``max_retries``; ``RetryProvider`` uses it for many.

The commit point: a stream is retried or falls back only until the first
content (text, reasoning, tool call) is handed to the caller. Chunks before
it (the role-only opener) are held back, so a failed attempt leaves no trace.
After it, any failure raises ``StreamInterrupted`` with the text so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio

from chatkit._assemble import CompletionBuilder
from chatkit._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatkitError,
    InvalidRequestError,
    MissingAuthError,
    RetryNoProviderError,
    RetryProviderError,
    StreamInterrupted,
    UnsupportedCapabilityError,
)
from chatkit._request import ChatRequest
from chatkit._transport import HTTPClient
from chatkit._types import ChatCompletion, ChatCompletionChunk, set_provider
from chatkit.providers._base import provider_name

__all__ = ["Attempt", "RetryPolicy", "RetryingCall"]

logger = logging.getLogger("chatkit")

Decision = Literal["retry", "next"]
T = TypeVar("T")

_RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry on the same provider, and how long to wait first.

    max_retries: retries per provider after its first attempt.
    backoff_base / backoff_max: exponential backoff ``base * 2**n`` capped at
        ``backoff_max``, with full jitter (a uniform draw from 0 to that).
    retry_after_max: the longest ``Retry-After`` / ``retry-after-ms`` honoured;
        a longer hint moves on to the next provider instead of sleeping.
    retry_statuses: statuses retried besides every 5xx.
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    retry_statuses: frozenset[int] = _RETRY_STATUSES

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise InvalidRequestError(
                f"max_retries must be an integer >= 0, got {self.max_retries!r}",
                field="max_retries",
            )
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidRequestError(f"{name} must be a number >= 0", field=name)

    def decide(self, error: BaseException) -> Decision:
        """``"retry"`` if the same provider may succeed later, else ``"next"``."""
        if isinstance(error, APIStatusError):
            hint = _header(error, "x-should-retry")
            if hint in ("true", "false"):
                return "retry" if hint == "true" else "next"
            status = error.status_code
            return "retry" if status in self.retry_statuses or status >= 500 else "next"
        if isinstance(error, APIConnectionError):
            return "retry"
        return "next"

    def backoff(self, retry: int) -> float:
        """Full-jitter exponential backoff before retry number ``retry`` (0-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**retry))
        return random.uniform(0.0, ceiling)

    def retry_after(self, error: BaseException) -> float | None:
        """The server's wait hint in seconds, if it sent one."""
        millis = _header(error, "retry-after-ms")
        if millis is not None:
            with contextlib.suppress(ValueError):
                return max(float(millis) / 1000.0, 0.0)
        value = _header(error, "retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            pass
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


def _header(error: BaseException, name: str) -> str | None:
    headers = getattr(error, "headers", None)
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return str(value).strip().lower()
    return None


@dataclass
class Attempt:
    """One try of one provider, or a provider skipped before trying."""

    provider: str
    number: int
    retry: int = 0
    error: BaseException | None = None
    delay: float | None = None
    skipped: bool = False
    duration: float = 0.0

    @property
    def status_code(self) -> int | None:
        return getattr(self.error, "status_code", None)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    def describe(self) -> str:
        if self.skipped:
            return f"{self.provider}: skipped: {self.error}"
        if self.error is None:
            return f"{self.provider} (attempt {self.number}): ok"
        status = f" {self.status_code}" if self.status_code is not None else ""
        wait = f", retrying in {self.delay:.2f}s" if self.delay is not None else ""
        return (
            f"{self.provider} (attempt {self.number}):{status}"
            f" {type(self.error).__name__}: {self.error}{wait}"
        )


_SKIP_ERRORS = (MissingAuthError, UnsupportedCapabilityError)


@dataclass
class RetryingCall:
    """One chat call driven through ``candidates`` under ``policy``.

    candidates: provider instances, or classes instantiated on the spot (a
        class that raises ``MissingAuthError`` is skipped, its reason recorded).
    retry_same: whether a retryable error is retried on the same provider
        (up to ``policy.max_retries`` times) before moving on.
    aggregate: raise ``RetryProviderError`` listing every attempt when all fail;
        otherwise re-raise the last error, with the attempts as a note.
    """

    candidates: Sequence[Any]
    request: ChatRequest
    http: HTTPClient
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    retry_same: bool = True
    aggregate: bool = False
    on_attempt: Callable[[Attempt], object] | None = None
    label: str = "chatkit"
    attempts: list[Attempt] = field(default_factory=list)
    provider: str | None = None

    def _record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        logger.debug("%s: %s", self.label, attempt.describe())
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def _resolve(self, candidate: Any) -> Any:
        provider = candidate() if isinstance(candidate, type) else candidate
        check = getattr(provider, "check_request", None)
        if check is not None:
            check(self.request)
        return provider

    async def _run(self, try_once: Callable[[Any, str], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        self.http.start()
        number = 0
        for candidate in self.candidates:
            try:
                provider = self._resolve(candidate)
            except _SKIP_ERRORS as exc:
                number += 1
                skipped = Attempt(provider_name(candidate), number, error=exc, skipped=True)
                self._record(skipped)
                continue
            name = provider_name(provider)
            retry = 0
            while True:
                number += 1
                attempt = Attempt(name, number, retry)
                started = loop.time()
                try:
                    result = await try_once(provider, name)
                except Exception as exc:
                    error: Exception = exc
                    attempt.error = error
                    attempt.duration = loop.time() - started
                else:
                    attempt.duration = loop.time() - started
                    self._record(attempt)
                    return result
                remaining = self.http.remaining()
                out_of_time = remaining is not None and remaining <= 0
                can_retry = self.retry_same and retry < self.policy.max_retries
                if not out_of_time and can_retry and self.policy.decide(error) == "retry":
                    attempt.delay = self.policy.delay(error, retry, remaining)
                self._record(attempt)
                if out_of_time:
                    raise self._failure()
                if attempt.delay is None:
                    break
                await anyio.sleep(attempt.delay)
                retry += 1
        raise self._failure()

    def _failure(self) -> BaseException:
        tried = [a for a in self.attempts if not a.skipped]
        lines = "\n".join(f"  {a.describe()}" for a in self.attempts)
        if not self.aggregate and tried and tried[-1].error is not None:
            error = tried[-1].error
            if len(self.attempts) > 1:
                error.add_note(f"chatkit made {len(self.attempts)} attempts:\n{lines}")
            return error
        if not tried:
            if not self.aggregate and self.attempts and self.attempts[-1].error is not None:
                return self.attempts[-1].error
            reason = f":\n{lines}" if lines else ": the provider list is empty"
            return RetryNoProviderError(
                f"{self.label}: no provider could be tried{reason}", attempts=self.attempts
            )
        return RetryProviderError(
            f"{self.label}: all {len(tried)} attempts failed:\n{lines}", attempts=self.attempts
        )

    # -- non-streamed --------------------------------------------------------

    async def complete(self) -> ChatCompletion:
        completion = await self._run(self._complete_once)
        completion._attempts = self.attempts
        return completion

    async def _complete_once(self, provider: Any, name: str) -> ChatCompletion:
        complete = getattr(provider, "complete", None)
        if complete is not None:
            completion: ChatCompletion = await complete(self.request, self.http)
        else:
            builder = CompletionBuilder()
            agen = provider.stream(self.request, self.http)
            try:
                async for chunk in agen:
                    builder.add(chunk)
            finally:
                await _close_quietly(agen)
            completion = builder.build()
        if completion.provider is None:
            set_provider(completion, name)
        self.provider = completion.provider
        return completion

    # -- streamed ------------------------------------------------------------

    async def stream(self) -> AsyncIterator[ChatCompletionChunk]:
        """The chunks of the first attempt that reaches content, then the rest of it."""
        agen, held, name = await self._run(self._open_stream)
        parts: list[str] = []
        try:
            for chunk in held:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                yield chunk
            if agen is not None:
                async for chunk in agen:
                    if chunk.choices:
                        content = chunk.choices[0].delta.content
                        if content:
                            parts.append(content)
                    yield chunk
        except Exception as exc:
            cause = exc.cause if isinstance(exc, StreamInterrupted) and exc.cause else exc
            raise StreamInterrupted(
                f"{name}: the stream broke off after content had been delivered: {cause}",
                partial_text="".join(parts),
                provider=name,
                cause=cause,
            ) from exc
        finally:
            if agen is not None:
                await _close_quietly(agen)

    async def _open_stream(
        self, provider: Any, name: str
    ) -> tuple[AsyncIterator[ChatCompletionChunk] | None, list[ChatCompletionChunk], str]:
        """Run one attempt up to its first content; hold back what came before."""
        agen = provider.stream(self.request, self.http)
        held: list[ChatCompletionChunk] = []
        limit = _min_seconds(self.http.timeout.first_token, self.http.remaining())
        try:
            # asyncio.timeout, not an anyio scope: the provider may hold scopes of
            # its own across yields, and an anyio scope must exit innermost-first.
            async with asyncio.timeout(limit):
                async for chunk in agen:
                    held.append(chunk)
                    if chunk.has_content:
                        self.provider = chunk.provider or name
                        return agen, held, self.provider
        except TimeoutError as exc:
            await _close_quietly(agen)
            if isinstance(exc, ChatkitError):
                raise
            waited = f"within {limit:.3g}s " if limit is not None else ""
            raise APITimeoutError(
                f"{name}: no content {waited}(first_token/total timeout)", provider=name
            ) from exc
        except BaseException:
            await _close_quietly(agen)
            raise
        # The stream ended without content: a complete, empty answer.
        self.provider = name
        return None, held, name


def _min_seconds(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return max(min(present), 0.0) if present else None


async def _close_quietly(agen: Any) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await aclose()
