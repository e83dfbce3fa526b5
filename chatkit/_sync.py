"""``Client`` and ``ChatStream``: the sync facade, a bridge over ``AsyncClient``.

Nothing here talks HTTP or retries: every call runs the async client's own
coroutine or stream on the shared loop thread (``_portal``). Non-streamed
calls wait for their coroutine there. A stream is owned by one pump task
(``_portal.StreamPump``) that runs the whole ``async for`` over the
``AsyncChatStream`` on the loop and hands chunks to the caller's thread
through a bounded list: the caller takes everything received so far in one
wake-up, and the pump waits once the list holds ``BATCH_LIMIT`` chunks.

Leaving a stream early (``break``, ``close()``, ``with``, an exception in the
loop body, garbage collection) cancels the pump; its ``finally`` closes the
upstream response on the loop. Errors are raised in the caller's thread as
the very exception object the async side raised, traceback included.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from chatkit import _portal
from chatkit._aliases import ProviderSpec, TimeoutTypes
from chatkit._assemble import CompletionBuilder
from chatkit._attempt import Attempt
from chatkit._client import AsyncClient
from chatkit._config import DEFAULT_LIMITS, Limits, Timeout
from chatkit._counting import TokenCount
from chatkit._errors import StreamInterrupted
from chatkit._health import CircuitBreaker, ProviderHealth, StateStore
from chatkit._parsed import ParsedChatCompletion
from chatkit._parsed_stream import ParsedChatStream
from chatkit._prices import Price
from chatkit._resume import Resume
from chatkit._streaming import PumpedStream, StreamResults
from chatkit._types import ChatCompletion, ChatCompletionChunk, Model
from chatkit.providers._base import Provider

if TYPE_CHECKING:
    from pydantic import BaseModel

    from chatkit._streaming import AsyncChatStream

__all__ = ["ChatStream", "Client"]

T = TypeVar("T")
BaseModelT = TypeVar("BaseModelT", bound="BaseModel")
PumpedStreamT = TypeVar("PumpedStreamT", bound="PumpedStream[Any]")

BATCH_LIMIT = 64
"""The most chunks the pump holds for a caller that has not taken them yet."""


class ChatStream(StreamResults, PumpedStream[ChatCompletionChunk]):
    """A streamed answer for sync code: iterate it once, or use it as a context manager.

    ``for chunk in stream`` closes the stream when the loop ends, by
    ``break`` or an exception included; ``next(stream)`` reads piece by
    piece. ``text``, ``usage``, ``finish_reason``, ``provider`` and
    ``get_final_completion()`` reflect the chunks handed to the caller so far.
    """

    _pump: _portal.StreamPump

    def __init__(self, pump: _portal.StreamPump, *, attempts: list[Attempt], owner: Client) -> None:
        self._open_pump(pump)
        # The stream keeps its client, and so its connections, alive.
        self._owner = owner
        self._builder = CompletionBuilder()
        self.attempts: list[Attempt] = attempts

    # -- iteration -----------------------------------------------------------

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        # A generator of its own, so that leaving the ``for`` loop in any way
        # (break, exception) finalizes it and closes the stream right away.
        return self._iterate()

    def _iterate(self) -> Iterator[ChatCompletionChunk]:
        buffer = self._buffer
        add = self._builder.add
        try:
            while buffer or self._refill():
                while buffer:
                    chunk = buffer.popleft()
                    add(chunk)
                    yield chunk
        finally:
            self.close()

    def __next__(self) -> ChatCompletionChunk:
        if not self._buffer and not self._refill():
            raise StopIteration
        chunk = self._buffer.popleft()
        self._builder.add(chunk)
        return chunk

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, StreamInterrupted):
            # Every chunk before the failure has been handed over by now:
            # this stream's text is exactly what reached the caller.
            exc.partial_text = self._builder.text

    # -- results (and those of StreamResults) --------------------------------

    @property
    def provider(self) -> str | None:
        """Which provider answered (known once ``create()`` returned)."""
        # create() waits for the first chunk: known before it is handed over.
        if self._builder.provider is None and self._buffer:
            return self._buffer[0].provider
        return self._builder.provider

    @property
    def done(self) -> bool:
        """True once the stream ended or was closed and every chunk was handed over."""
        return self._done and not self._buffer

    def until_done(self) -> ChatCompletion:
        """Read the rest of the stream and return the final completion."""
        for _ in self:
            pass
        return self.get_final_completion()

    # Closing (``close()``, ``with``, garbage collection) and the pump
    # handoff (``_refill``) are PumpedStream's, shared with ParsedChatStream.


class Client:
    """A sync chat client: ``AsyncClient``'s arguments and surface, for plain code.

    Calls run on one event loop thread shared by every ``Client`` in the
    process, so it works the same in scripts, threads, Jupyter and inside
    running event loops. ``with Client(...)`` or ``close()`` releases its
    connections (a client nobody holds is closed too, and at exit).
    """

    def __init__(
        self,
        provider: ProviderSpec | None = None,
        *,
        api_key: str | Mapping[str, str] | None = None,
        base_url: str | None = None,
        proxies: Mapping[str, str | None] | str | None = None,
        proxy: str | None = None,
        timeout: TimeoutTypes = None,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        trust_env: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        breaker: CircuitBreaker | bool | None = None,
        state: StateStore | None = None,
        hooks: Sequence[object] | None = None,
        prices: Mapping[str, Price] | None = None,
        resume: Resume | bool | None = None,
    ) -> None:
        self._async = AsyncClient(
            provider,
            api_key=api_key,
            base_url=base_url,
            proxies=proxies,
            proxy=proxy,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            trust_env=trust_env,
            limits=limits,
            breaker=breaker,
            state=state,
            hooks=hooks,
            prices=prices,
            resume=resume,
        )
        self._streams: weakref.WeakSet[PumpedStream[Any]] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        _live_clients.add(self)

    def count_tokens(
        self,
        messages: Any,
        model: str | None = "",
        *,
        provider: ProviderSpec | None = None,
        tools: list[dict[str, Any]] | None = None,
        timeout: TimeoutTypes = None,
    ) -> TokenCount:
        """As ``AsyncClient.count_tokens``."""
        return self._run(
            self._async.count_tokens(
                messages, model, provider=provider, tools=tools, timeout=timeout
            )
        )

    def health(self) -> list[ProviderHealth]:
        """As ``AsyncClient.health``: per provider, its breaker and calls in flight."""
        return self._async.health()

    # ``chat`` and ``models`` are fresh views holding the client, never held
    # by it: no reference cycle, so a dropped client is closed at once.
    @property
    def chat(self) -> _Chat:
        return _Chat(self)

    @property
    def models(self) -> _Models:
        return _Models(self)

    @property
    def provider(self) -> Provider | None:
        """The configured provider, or None when it is resolved per call."""
        return self._async.provider

    @property
    def max_retries(self) -> int:
        return self._async.max_retries

    @property
    def timeout(self) -> Timeout:
        return self._async.timeout

    @property
    def is_closed(self) -> bool:
        return self._async.is_closed

    def __repr__(self) -> str:
        return "Client" + repr(self._async).removeprefix("AsyncClient")

    # -- bridging ------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return _portal.current().run(coro)

    def _open_stream(self, astream: AsyncChatStream) -> ChatStream:
        pump = _portal.StreamPump(_portal.current(), astream, BATCH_LIMIT)
        # One copy of the text: the sync stream assembles what it hands over.
        astream._hand_over()
        stream = ChatStream(pump, attempts=astream.attempts, owner=self)
        stream._prices = astream._prices
        stream._resumes = astream._resumes
        return self._track(stream)

    def _track(self, stream: PumpedStreamT) -> PumpedStreamT:
        """Register ``stream`` (``close()`` closes it), start its pump and wait for
        its first item, as ``await create(..., stream=True)`` does: a failed call
        raises here, not in the middle of the caller's loop."""
        with self._streams_lock:
            self._streams.add(stream)
        stream._pump.start()
        stream._refill()
        return stream

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the client's open streams and its connections. Idempotent."""
        self._close(None)

    def _close(self, timeout: float | None) -> None:
        if self._async.is_closed:
            return
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        _portal.current().run(self._async.aclose(), timeout)
        _live_clients.discard(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            inner = self._async
        except AttributeError:  # __init__ failed before the async client existed
            return
        if inner.is_closed:
            return
        runner = _portal.existing()
        if runner is not None:
            runner.spawn(inner.aclose())


class _Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    # As AsyncClient's: every named argument spelled out, **params are the
    # OpenAI parameters.
    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: Literal[False] = False,
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: Literal[True],
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatStream: ...

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: bool,
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatCompletion | ChatStream: ...

    def create(
        self,
        messages: Any = None,
        model: str | None = "",
        *,
        stream: bool = False,
        provider: ProviderSpec | None = None,
        proxy: str | None = None,
        timeout: TimeoutTypes = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatCompletion | ChatStream:
        """Create a chat completion: a ``ChatCompletion``, or with ``stream=True`` a ``ChatStream``.

        Arguments are ``AsyncClient``'s and are validated, in this thread,
        before any I/O. A streamed call returns once its first chunk arrived.
        """
        client = self._client
        create = client._async.chat.completions.create
        options: dict[str, Any] = {
            "provider": provider,
            "proxy": proxy,
            "timeout": timeout,
            "extra_headers": extra_headers,
            "extra_query": extra_query,
            "extra_body": extra_body,
            **params,
        }
        if stream:
            return client._open_stream(create(messages, model, stream=True, **options))
        completion: ChatCompletion = client._run(create(messages, model, stream=False, **options))
        return completion

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: type[BaseModelT],
        stream: Literal[False] = False,
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> ParsedChatCompletion[BaseModelT]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: type[BaseModelT],
        stream: Literal[True],
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> ParsedChatStream[BaseModelT]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: None = None,
        stream: Literal[False] = False,
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> ParsedChatCompletion[None]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: None = None,
        stream: Literal[True],
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> ParsedChatStream[Any]: ...

    def parse(
        self,
        messages: Any = None,
        model: str | None = "",
        *,
        response_format: type[BaseModel] | None = None,
        stream: bool = False,
        max_validation_retries: int = 0,
        **kwargs: Any,
    ) -> ParsedChatCompletion[Any] | ParsedChatStream[Any]:
        """As ``AsyncClient``'s: a ``ParsedChatCompletion``, or with
        ``stream=True`` a ``ParsedChatStream`` of partial objects (returned
        once the first one arrived). Arguments are checked here, before any I/O."""
        client = self._client
        completions = client._async.chat.completions
        options: dict[str, Any] = {
            "response_format": response_format,
            "max_validation_retries": max_validation_retries,
            **kwargs,
        }
        if not isinstance(stream, bool):
            # Refused by the async side (naming the field), before any I/O.
            completions.parse(messages, model, stream=cast(Any, stream), **options)
        if stream:
            astream = completions.parse(messages, model, stream=True, **options)
            # The pump runs any async stream; it is typed for the chunk streams.
            chunks = cast("AsyncChatStream", astream)
            pump = _portal.StreamPump(_portal.current(), chunks, BATCH_LIMIT)
            return client._track(ParsedChatStream(pump, astream, owner=client))
        completion: ParsedChatCompletion[Any] = client._run(
            completions.parse(messages, model, stream=False, **options)
        )
        return completion


class _Chat:
    def __init__(self, client: Client) -> None:
        self.completions = _Completions(client)


class _Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, provider: ProviderSpec | None = None) -> list[Model]:
        """The models the provider offers, from its list endpoint."""
        return self._client._run(self._client._async.models.list(provider))


# -- interpreter exit ----------------------------------------------------------

_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _close_clients_at_exit() -> None:
    # Scripts rarely close their client: close them all here, while the loop
    # thread still runs, so exit is quiet (no unclosed-session warnings).
    if _portal.existing() is None:
        return
    for client in list(_live_clients):
        with contextlib.suppress(Exception):
            client._close(_portal.STOP_WAIT)
    _portal.shutdown()


atexit.register(_close_clients_at_exit)
