"""What one attempt produced, as the retry loop sees it, and the helpers
that bound and close it.

``Opened``: a stream's attempt that reached content (or ended without any);
``empty_answer``: whether an answer had no content at all, for
``RetryProvider(fallback_on_empty=True)``; ``time_limit``, ``next_chunk``,
``close_quietly``: one attempt's stream under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NamedTuple

import anyio

from chatkit._errors import APITimeoutError, ChatkitError, EmptyAnswerError
from chatkit._types import ChatCompletion, ChatCompletionChunk, CompletionUsage

__all__ = [
    "Opened",
    "billed",
    "close_quietly",
    "empty_answer",
    "min_seconds",
    "next_chunk",
    "time_limit",
]


class Opened(NamedTuple):
    """A stream's attempt that reached content (``agen`` None: ended without)."""

    agen: AsyncIterator[ChatCompletionChunk] | None
    held: list[ChatCompletionChunk]
    name: str


def billed(result: object) -> tuple[CompletionUsage | None, str | None]:
    """The usage and model of an answer that is not delivered (for its cost)."""
    if isinstance(result, ChatCompletion):
        return result.usage, result.model or None
    if isinstance(result, Opened):
        usage = next((chunk.usage for chunk in result.held if chunk.usage is not None), None)
        return usage, result.held[0].model if result.held else None
    return None, None


def empty_answer(result: object, name: str) -> EmptyAnswerError | None:
    """The error for an answer with no content at all (no text, reasoning,
    refusal or tool call), or None."""
    if isinstance(result, Opened):
        if result.agen is not None:
            return None  # it reached content
        endings = [c.finish_reason for chunk in result.held for c in chunk.choices]
        finish = next((reason for reason in endings if reason), None)
    elif isinstance(result, ChatCompletion):
        for choice in result.choices:
            message = choice.message
            if message.content or message.tool_calls or message.refusal:
                return None
            if message.reasoning_content:
                return None
        finish = result.choices[0].finish_reason if result.choices else None
    else:
        return None
    return EmptyAnswerError(
        f"{name}: the answer had no content (finish_reason={finish})",
        provider=name,
        finish_reason=finish,
    )


@contextlib.asynccontextmanager
async def time_limit(limit: float | None, name: str, message: str) -> AsyncIterator[None]:
    """Bound the body by ``limit`` seconds (None: unbounded); its expiry raises
    ``APITimeoutError`` with ``"{name}: " + message`` (``{limit}`` filled in).

    A ``TimeoutError`` the body raised itself (a chatkit timeout, or one
    while the limit still held) passes through unchanged. asyncio.timeout,
    not an anyio scope: the provider may hold scopes of its own across
    yields, and an anyio scope must exit innermost-first.
    """
    try:
        async with asyncio.timeout(max(limit, 0.0) if limit is not None else None) as scope:
            yield
    except TimeoutError as exc:
        if not scope.expired() or isinstance(exc, ChatkitError):
            raise
        # Formatted only now: ``limit`` is a number whenever the scope expired.
        raise APITimeoutError(f"{name}: {message.format(limit=limit)}", provider=name) from exc


async def next_chunk(agen: AsyncIterator[ChatCompletionChunk]) -> ChatCompletionChunk | None:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


def min_seconds(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return max(min(present), 0.0) if present else None


async def close_quietly(agen: AsyncIterator[ChatCompletionChunk]) -> None:
    # A provider's stream is usually an async generator, but any async
    # iterator will do; one without aclose() has nothing to release.
    # By attribute, not isinstance(agen, SupportsAclose): once per call, and
    # a protocol check costs 7 us on Python 3.11.
    aclose = getattr(agen, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await aclose()
