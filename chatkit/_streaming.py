"""``AsyncChatStream``: what ``create(..., stream=True)`` returns.

It is both an async iterator (g4f style: ``async for c in create(...)``) and
an awaitable (openai style: ``stream = await create(...)``). Awaiting runs the
call up to its first chunk, so an error status surfaces at the ``await``.
Leaving it early closes the upstream response: ``aclose()``, ``async with``,
and, for a stream nobody holds any more, garbage collection.

``StreamResults`` holds what both stream kinds (this one and the sync
``ChatStream``) report about the answer so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

from chatkit._assemble import CompletionBuilder
from chatkit._attempt import Attempt
from chatkit._errors import StreamInterrupted
from chatkit._prices import PriceTable
from chatkit._resume import ResumeRecord
from chatkit._types import ChatCompletion, ChatCompletionChunk, CompletionUsage

__all__ = ["AsyncChatStream", "StreamResults"]


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


class AsyncChatStream(StreamResults):
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

    # -- iteration -----------------------------------------------------------

    def __aiter__(self) -> AsyncChatStream:
        return self

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

    def __await__(self) -> Generator[Any, None, AsyncChatStream]:
        return self._start().__await__()

    async def _start(self) -> AsyncChatStream:
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

    close = aclose

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A stream abandoned mid-way (``break`` out of ``async for create(...)``)
        # must not keep its connection: drop it synchronously, here and now.
        if not self._closed and self._abort is not None:
            self._abort()


def _ignore(chunk: ChatCompletionChunk) -> None:
    pass
