"""``AsyncChatStream``: what ``create(..., stream=True)`` returns.

It is both an async iterator (g4f style: ``async for c in create(...)``) and
an awaitable (openai style: ``stream = await create(...)``). Awaiting runs the
call up to its first chunk, so an error status surfaces at the ``await``.
Leaving it early closes the upstream response: ``aclose()``, ``async with``,
and, for a stream nobody holds any more, garbage collection.

``StreamResults`` holds what both stream kinds (this one and the sync
``ChatStream``) report about the answer so far. ``AsyncStreamBase`` and
``PumpedStream`` hold the plumbing every async / sync stream shares (the
chunk streams and the parsed streams of ``chatkit._parsed_stream``): iterate
or await, close, context managers, and for sync streams the pump handoff.
"""

from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from chatkit._assemble import CompletionBuilder
from chatkit._attempt import Attempt
from chatkit._errors import StreamInterrupted
from chatkit._prices import PriceTable
from chatkit._resume import ResumeRecord
from chatkit._types import ChatCompletion, ChatCompletionChunk, CompletionUsage

__all__ = [
    "CLOSE_WAIT",
    "AsyncChatStream",
    "AsyncStreamBase",
    "Pump",
    "PumpedStream",
    "StreamResults",
]

ItemT = TypeVar("ItemT")

CLOSE_WAIT = 5.0
"""Seconds a sync stream's ``close()`` waits for its pump to have closed the upstream response."""


class AsyncStreamBase:
    """What every async stream offers around its own ``__anext__``: ``async for``
    on it directly, ``await`` (runs ``_start()``: up to the first item), and
    ``close()`` / ``async with`` closing it through ``aclose()``."""

    def __aiter__(self) -> Self:
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self._start().__await__()

    @abstractmethod
    async def _start(self) -> Self:
        """Open the stream up to its first item (kept for the first ``__anext__``)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Idempotent."""

    async def close(self) -> None:
        """The same as ``aclose()``."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Pump(Protocol):
    """The sync facade's stream pump (``chatkit._portal.StreamPump``), as sync streams use it."""

    def start(self) -> None: ...

    def take(self) -> list[Any]: ...

    def cancel(self) -> None: ...

    def wait_finished(self, timeout: float) -> bool: ...


class PumpedStream(Generic[ItemT]):
    """What every sync stream shares: the items a pump task hands over from
    chatkit's loop thread (``_refill``), closing (``close()``, ``with``,
    garbage collection) and the fork check: a child process never touches
    the parent's streams. Subclasses iterate ``_buffer`` their own way."""

    _pump: Pump
    _buffer: deque[ItemT]
    _done: bool
    _closed: bool
    _pid: int

    def _open_pump(self, pump: Pump) -> None:
        self._pump = pump
        self._pid = os.getpid()
        self._buffer = deque()
        self._done = False
        self._closed = False

    def _refill(self) -> bool:
        """Wait for the next items (True), or the end (False); raise the stream's error."""
        if self._done:
            return False
        if self._pid != os.getpid():
            raise RuntimeError("this stream was opened in the parent process; open a new one")
        try:
            batch = self._pump.take()
        except BaseException as exc:
            self._failed(exc)
            self.close()
            raise
        if not batch:
            self._done = True
            return False
        self._buffer.extend(batch)
        return True

    def _failed(self, exc: BaseException) -> None:
        """The stream raised ``exc`` (before it is closed and re-raised): nothing by default."""

    def close(self) -> None:
        """Stop the stream and wait (briefly) until the upstream response is closed. Idempotent."""
        if self._closed or self._pid != os.getpid():
            # A forked child never touches the parent's streams.
            return
        self._closed = True
        self._done = True
        self._buffer.clear()
        self._pump.cancel()
        self._pump.wait_finished(CLOSE_WAIT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # May run in any thread, the loop's included: schedule, never wait.
        if not getattr(self, "_closed", True) and self._pid == os.getpid():
            self._pump.cancel()


class StreamResults:
    """The answer so far, as both stream kinds report it.

    "So far" is every chunk the stream has assembled: for ``AsyncChatStream``
    every chunk received from the provider, for ``ChatStream`` every chunk
    handed to the caller.
    """

    _builder: CompletionBuilder
    _done: bool
    _prices: PriceTable | None = None
    _resumes: list[ResumeRecord] | None = None
    attempts: list[Attempt]

    @property
    def resumes(self) -> list[ResumeRecord]:
        """The continuations this answer needed (``resume=``), in order: each with
        its ``offset``, ``cause``, ``provider``, ``overlap`` and ``attempts``.
        ``len(stream.resumes)`` is how many; empty when the stream never broke."""
        return self._resumes if self._resumes is not None else []

    @property
    def cost(self) -> float | None:
        """US dollars the answer so far cost (see ``ChatCompletion.cost``);
        None until the usage is known, or when a price is unknown."""
        return self.get_final_completion().cost

    @property
    def text(self) -> str:
        """The first choice's content so far."""
        return self._builder.text

    @property
    def usage(self) -> CompletionUsage | None:
        return self._builder.usage

    @property
    def finish_reason(self) -> str | None:
        return self._builder.finish_reason

    @property
    def provider(self) -> str | None:
        """Which provider answered (known from the first chunk on)."""
        return self._builder.provider

    def get_final_completion(self) -> ChatCompletion:
        """The completion assembled from every chunk so far."""
        completion = self._builder.build()
        completion._attempts = self.attempts
        if self._prices is not None:
            completion._cost = self._prices.completion_cost(completion)
        return completion

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        name = type(self).__name__
        return f"<{name} provider={self.provider!r} {state} text={self.text[:40]!r}>"


class AsyncChatStream(StreamResults, AsyncStreamBase):
    """A streamed answer. Iterate it once; read ``text`` and the rest any time."""

    def __init__(
        self,
        chunks: AsyncIterator[ChatCompletionChunk],
        *,
        abort: Callable[[], None] | None = None,
        attempts: list[Attempt] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        prices: PriceTable | None = None,
        resumes: list[ResumeRecord] | None = None,
    ) -> None:
        self._chunks = chunks
        self._prices = prices
        self._resumes = resumes
        # Bound once: __anext__ runs per chunk.
        self._next_chunk = chunks.__anext__
        self._abort = abort
        self._on_close = on_close
        self._builder = CompletionBuilder()
        self._add = self._builder.add
        self._first: ChatCompletionChunk | None = None
        self._started = False
        self._done = False
        self._closed = False
        self.attempts: list[Attempt] = attempts if attempts is not None else []

    # -- iteration (``async for`` and ``await``: AsyncStreamBase) ---------------

    async def __anext__(self) -> ChatCompletionChunk:
        first = self._first
        if first is not None:
            self._first = None
            return first
        if self._done:
            raise StopAsyncIteration
        self._started = True
        try:
            chunk = await self._next_chunk()
        except BaseException as exc:  # the end (StopAsyncIteration) or a failure
            if isinstance(exc, StreamInterrupted):
                # The stream holds the only copy of the text; the retry layer
                # below raises without it.
                exc.partial_text = self._builder.text
            await self._finish()
            raise
        self._add(chunk)
        return chunk

    async def _start(self) -> Self:
        if not self._started:
            with contextlib.suppress(StopAsyncIteration):
                self._first = await self.__anext__()
        return self

    def _hand_over(self) -> None:
        """Stop assembling: a consumer that keeps its own (the sync ``ChatStream``) does."""
        self._add = _ignore

    # -- results (and those of StreamResults) --------------------------------

    @property
    def done(self) -> bool:
        return self._done

    async def until_done(self) -> ChatCompletion:
        """Read the rest of the stream and return the final completion."""
        async for _ in self:
            pass
        return self.get_final_completion()

    # -- closing -------------------------------------------------------------

    async def _finish(self) -> None:
        self._done = True
        if self._closed:
            return
        self._closed = True
        chunks = self._chunks
        try:
            # By attribute: a protocol check costs 7 us (see close_quietly).
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._on_close is not None:
                await self._on_close()

    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Idempotent."""
        self._first = None
        await self._finish()

    def __del__(self) -> None:
        # A stream abandoned mid-way (``break`` out of ``async for create(...)``)
        # must not keep its connection: drop it synchronously, here and now.
        if not self._closed and self._abort is not None:
            self._abort()


def _ignore(chunk: ChatCompletionChunk) -> None:
    pass
