"""``parse(..., stream=True)``: partial objects as the JSON arrives.

Each text delta of choice 0 extends the answer; ``chatkit._partial_json``
turns the text so far into the certain part of the JSON document, and that
is validated against a *partial view* of the model: the same fields, each
optional (nested models too), without the model's validators and
constraints. A field whose partial value does not validate yet (a partial
string for a ``Literal``) is left out until it does. The result is handed
out as an instance of the caller's model built with ``model_construct``:
fields that have not arrived are None (or their default), and
``model_fields_set`` names those that have. Strings grow, arrays and objects
gain items; numbers, booleans and null appear only once complete. The last
object of a stream is the fully validated one.

With ``max_validation_retries``, an answer that does not validate is
retried as a new try: its partial objects start over (``stream.tries``
tells which try is streaming).
"""

from __future__ import annotations

import types
import typing
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from chatkit._attempt import Attempt
from chatkit._parsed import ParsedChatCompletion, strip_fence
from chatkit._partial_json import MISSING, PartialJSONError, parse_partial
from chatkit._streaming import AsyncChatStream
from chatkit._structured import ParseCall
from chatkit._types import CompletionUsage

__all__ = ["AsyncParsedChatStream", "ParsedChatStream", "PartialBuilder", "partial_model"]

T = TypeVar("T", bound=BaseModel)

_PARTIAL: weakref.WeakKeyDictionary[type[BaseModel], type[BaseModel]] = weakref.WeakKeyDictionary()
_REAL: weakref.WeakKeyDictionary[type[BaseModel], type[BaseModel]] = weakref.WeakKeyDictionary()
_BUILDING: set[type[BaseModel]] = set()
_MAX_DROPS = 50


# -- the partial view ----------------------------------------------------------


def partial_model(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional (None by default), nested models too."""
    made = _PARTIAL.get(model)
    if made is not None:
        return made
    _BUILDING.add(model)
    try:
        fields: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            annotation = _partial_annotation(info.annotation)
            fields[name] = (annotation | None, Field(default=None, alias=info.alias))
        made = create_model(
            f"Partial{model.__name__}",
            __config__=ConfigDict(extra="ignore", populate_by_name=True),
            **fields,
        )
    finally:
        _BUILDING.discard(model)
    _PARTIAL[model] = made
    _REAL[made] = model
    return made


def _partial_annotation(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A model that contains itself is taken as it comes (not validated).
        return Any if annotation in _BUILDING else partial_model(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is None or not args:
        return annotation
    if origin is typing.Annotated:
        return _partial_annotation(args[0])  # constraints do not hold for partial values
    if origin is typing.Literal:
        return annotation
    rebuilt = tuple(arg if arg is Ellipsis else _partial_annotation(arg) for arg in args)
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[rebuilt]  # noqa: UP007 - built from a tuple
    try:
        return origin[rebuilt]
    except TypeError:
        return Any


def _real_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        real = _REAL.get(type(value))
        if real is not None:
            return _construct(real, value)
        return value
    if isinstance(value, list):
        return [_real_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_real_value(item) for item in value)
    if isinstance(value, dict):
        return {key: _real_value(item) for key, item in value.items()}
    return value


def _construct(real: type[BaseModel], partial: BaseModel) -> BaseModel:
    arrived = partial.model_fields_set
    data: dict[str, Any] = {}
    for name, info in real.model_fields.items():
        if name in arrived:
            data[name] = _real_value(getattr(partial, name))
        elif info.is_required():
            data[name] = None
    return real.model_construct(_fields_set=set(arrived), **data)


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Remove the deepest part of ``data`` that ``loc`` reaches; False if none."""
    parent: Any = None
    key: Any = None
    node = data
    for step in loc:
        listed = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if listed or (isinstance(node, dict) and step in node):
            parent, key, node = node, step, node[step]
        elif parent is None:
            return False
        else:
            continue  # a union member's tag: the value is one level up
    if parent is None:
        return False
    if isinstance(parent, list):
        del parent[key:]  # items after it have not arrived anyway
    else:
        del parent[key]
    return True


class PartialBuilder(Generic[T]):
    """Turns the text of one answer, delta by delta, into growing partial objects."""

    def __init__(self, model: type[T]) -> None:
        self._model = model
        self._view = partial_model(model)
        self._text = ""
        self._last: Any = MISSING
        self._broken = False

    def feed(self, delta: str) -> T | None:
        """The new partial object after ``delta``; None when nothing new is certain."""
        if not delta or self._broken:
            return None
        self._text += delta
        text = self._text.lstrip()
        if text.startswith("```"):
            if "\n" not in text:
                return None
            text = strip_fence(text + "\n```")
        try:
            value = parse_partial(text)
        except PartialJSONError:
            self._broken = True  # the final validation will say what is wrong
            return None
        if not isinstance(value, dict) or not value or value == self._last:
            return None
        self._last = value
        return self._build(value)

    def _build(self, value: dict[str, Any]) -> T | None:
        data = _copy(value)
        for _ in range(_MAX_DROPS):
            try:
                partial = self._view.model_validate(data)
            except ValidationError as exc:
                if not any(_drop(data, tuple(error["loc"])) for error in exc.errors()):
                    return None
                continue
            if not partial.model_fields_set:
                return None  # every field left out: nothing to show yet
            built: T = _construct(self._model, partial)  # type: ignore[assignment]
            return built
        return None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


# -- the async stream ------------------------------------------------------------


class AsyncParsedChatStream(Generic[T]):
    """``parse(..., stream=True)``: iterate for partial objects, then the final one.

    ``async for obj in client.chat.completions.parse(..., stream=True)`` (or
    ``stream = await ...`` first, which opens the first try up to its first
    chunk). Once iterated to the end, ``get_final_completion()`` returns the
    ``ParsedChatCompletion``; ``attempts``, ``usage``, ``cost``, ``tries``
    and ``provider`` say how it went.
    """

    def __init__(self, call: ParseCall) -> None:
        self._call = call
        self._current: AsyncChatStream | None = None
        self._ready: AsyncChatStream | None = None
        self._final: ParsedChatCompletion[T] | None = None
        self._events = self._run()

    # -- iteration -----------------------------------------------------------

    def __aiter__(self) -> AsyncParsedChatStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._events.__anext__()

    def __await__(self) -> Generator[Any, None, AsyncParsedChatStream[T]]:
        return self._start().__await__()

    async def _start(self) -> AsyncParsedChatStream[T]:
        if self._current is None and self._final is None:
            self._ready = await self._open_try()
        return self

    async def _open_try(self) -> AsyncChatStream:
        call = self._call
        kwargs = call.next_try(stream=True)
        try:
            stream: AsyncChatStream = call.create(call.messages, call.model, **kwargs)
            self._current = stream
            return await stream
        except BaseException as exc:
            self._current = None
            call.failed(exc)
            raise

    async def _run(self) -> AsyncGenerator[T, None]:
        call = self._call
        model = call.response_format
        while True:
            stream = self._ready if self._ready is not None else await self._open_try()
            self._ready = None
            builder = PartialBuilder(model) if model is not None else None
            try:
                async for chunk in stream:
                    if builder is not None:
                        partial = builder.feed(chunk.text)
                        if partial is not None:
                            yield partial  # type: ignore[misc]
            except BaseException as exc:
                self._current = None
                call.failed(exc)
                raise
            finally:
                await stream.aclose()
            completion = stream.get_final_completion()
            self._current = None
            parsed = call.outcome(completion)
            if parsed is not None:
                self._final = parsed
                if parsed.parsed is not None:
                    yield parsed.parsed
                return

    # -- results -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._final is not None

    @property
    def tries(self) -> int:
        """Tries started so far: 1, plus one per validation retry."""
        return self._call.tries

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt of every try so far (see ``ParsedChatCompletion.attempts``)."""
        current = self._current.attempts if self._current is not None else []
        return [*self._call.attempts, *current]

    @property
    def text(self) -> str:
        """The current try's raw answer text so far (the final one's once done)."""
        if self._current is not None:
            return self._current.text
        return self._final.text if self._final is not None else ""

    @property
    def usage(self) -> CompletionUsage | None:
        if self._final is not None:
            return self._final.usage
        return self._current.usage if self._current is not None else None

    @property
    def provider(self) -> str | None:
        if self._final is not None:
            return self._final.provider
        return self._current.provider if self._current is not None else None

    @property
    def cost(self) -> float | None:
        """The call's cost once done (every try's billed attempts included); None before."""
        return self._final.cost if self._final is not None else None

    def get_final_completion(self) -> ParsedChatCompletion[T]:
        """The ``ParsedChatCompletion``, once the stream has been read to its end."""
        if self._final is None:
            raise RuntimeError(
                "the parsed stream has not finished: iterate it to its end (or until_done())"
            )
        return self._final

    async def until_done(self) -> ParsedChatCompletion[T]:
        """Read the rest of the stream and return the ``ParsedChatCompletion``."""
        async for _ in self:
            pass
        return self.get_final_completion()

    # -- closing -------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Idempotent."""
        ready, self._ready = self._ready, None
        try:
            if ready is not None:
                await ready.aclose()
        finally:
            await self._events.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncParsedChatStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- the sync stream ---------------------------------------------------------------


class Pump(Protocol):
    """The sync facade's stream pump (``chatkit._portal.StreamPump``), as used here."""

    def start(self) -> None: ...

    def take(self) -> list[Any]: ...

    def cancel(self) -> None: ...

    def wait_finished(self, timeout: float) -> bool: ...


class ParsedChatStream(Generic[T]):
    """``Client.chat.completions.parse(..., stream=True)``: the sync iterator.

    A bridge: the ``AsyncParsedChatStream`` runs on chatkit's loop thread in
    one pump task, which hands the objects over. Iterate it once (``for``
    closes it when the loop ends), or use it as a context manager.
    """

    def __init__(self, pump: Pump, astream: AsyncParsedChatStream[T], close_wait: float) -> None:
        self._pump = pump
        self._astream = astream
        self._close_wait = close_wait
        self._buffer: list[T] = []
        self._done = False
        self._closed = False
        pump.start()
        # As create(stream=True): wait for the first object, so a failed call
        # (or a refusal) raises here rather than in the caller's loop.
        self._refill()

    def __iter__(self) -> Iterator[T]:
        return self._iterate()

    def _iterate(self) -> Iterator[T]:
        try:
            while self._buffer or self._refill():
                items, self._buffer = self._buffer, []
                yield from items
        finally:
            self.close()

    def __next__(self) -> T:
        if not self._buffer and not self._refill():
            raise StopIteration
        return self._buffer.pop(0)

    def _refill(self) -> bool:
        if self._done:
            return False
        try:
            batch = self._pump.take()
        except BaseException:
            self.close()
            raise
        if not batch:
            self._done = True
            return False
        self._buffer.extend(batch)
        return True

    @property
    def tries(self) -> int:
        return self._astream.tries

    @property
    def attempts(self) -> list[Attempt]:
        return self._astream.attempts

    @property
    def usage(self) -> CompletionUsage | None:
        return self._astream.usage

    @property
    def provider(self) -> str | None:
        return self._astream.provider

    @property
    def cost(self) -> float | None:
        return self._astream.cost

    @property
    def done(self) -> bool:
        return self._astream.done

    def get_final_completion(self) -> ParsedChatCompletion[T]:
        """The ``ParsedChatCompletion``, once the stream has been read to its end."""
        return self._astream.get_final_completion()

    def until_done(self) -> ParsedChatCompletion[T]:
        """Read the rest of the stream and return the ``ParsedChatCompletion``."""
        for _ in self:
            pass
        return self.get_final_completion()

    def close(self) -> None:
        """Stop the stream and wait (briefly) until the upstream response is closed."""
        if self._closed:
            return
        self._closed = True
        self._done = True
        self._buffer = []
        self._pump.cancel()
        self._pump.wait_finished(self._close_wait)

    def __enter__(self) -> ParsedChatStream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._pump.cancel()
