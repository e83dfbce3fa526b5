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
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model
from pydantic.fields import FieldInfo

from chatkit._attempt import Attempt
from chatkit._parsed import ParsedChatCompletion, strip_fence
from chatkit._partial_json import MISSING, PartialJSONError, parse_partial
from chatkit._streaming import AsyncChatStream, AsyncStreamBase, Pump, PumpedStream
from chatkit._structured import ParseCall
from chatkit._types import CompletionUsage

__all__ = ["AsyncParsedChatStream", "ParsedChatStream", "PartialBuilder", "partial_model"]

T = TypeVar("T", bound=BaseModel)

# Top-level partial views, made once per model. Building needs no shared
# state: the models being built travel down the recursion as an argument, so
# views built in several threads at once never see each other's.
_PARTIAL: weakref.WeakKeyDictionary[type[BaseModel], type[BaseModel]] = weakref.WeakKeyDictionary()
_REAL: weakref.WeakKeyDictionary[type[BaseModel], type[BaseModel]] = weakref.WeakKeyDictionary()
_MAX_DROPS = 50

SHORT = 1024
"""Up to this many characters, the answer is re-parsed after every delta."""
GROWTH = 16
"""Beyond ``SHORT``, it is re-parsed once it grew by 1/GROWTH since the last parse."""


# -- the partial view ----------------------------------------------------------


def partial_model(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional (None by default), nested models too."""
    return _partial_model(model, frozenset())


def _partial_model(model: type[BaseModel], building: frozenset[type[BaseModel]]) -> type[BaseModel]:
    made = _PARTIAL.get(model)
    if made is not None:
        return made
    inside = building | {model}
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        # A Discriminator in Annotated[...] lands in the metadata, a
        # Field(discriminator=...) in the field's own discriminator.
        tagged = [meta for meta in info.metadata if isinstance(meta, Discriminator)]
        discriminator = info.discriminator or (tagged[0] if tagged else None)
        annotation = _partial_annotation(info.annotation, inside, discriminator)
        fields[name] = (annotation | None, Field(default=None, alias=info.alias))
    made = create_model(
        f"Partial{model.__name__}",
        __config__=ConfigDict(extra="ignore", populate_by_name=True),
        **fields,
    )
    _REAL[made] = model
    if not building:
        # A view made inside another one may stand for a model being built
        # (as Any): only a top-level view is the same in every context.
        _PARTIAL[model] = made
    return made


def _partial_annotation(
    annotation: Any,
    building: frozenset[type[BaseModel]],
    discriminator: str | Discriminator | None = None,
) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A model that contains itself is taken as it comes (not validated).
        return Any if annotation in building else _partial_model(annotation, building)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is None or not args:
        return annotation
    if origin is typing.Annotated:
        # Constraints do not hold for partial values; union tags do.
        kept = [meta for meta in args[1:] if isinstance(meta, Tag | Discriminator)]
        for meta in args[1:]:
            if isinstance(meta, FieldInfo) and meta.discriminator is not None:
                discriminator = meta.discriminator
        inner = _partial_annotation(args[0], building, discriminator)
        return typing.Annotated[(inner, *kept)] if kept else inner
    if origin is typing.Literal:
        return annotation
    if origin is typing.Union or origin is types.UnionType:
        if discriminator is not None:
            tagged = _tagged_union(args, building, discriminator)
            if tagged is not None:
                return tagged
        rebuilt = tuple(_partial_annotation(arg, building) for arg in args)
        return typing.Union[rebuilt]  # noqa: UP007 - built from a tuple
    rebuilt = tuple(arg if arg is Ellipsis else _partial_annotation(arg, building) for arg in args)
    try:
        return origin[rebuilt]
    except TypeError:
        return Any


def _tagged_union(
    args: tuple[Any, ...],
    building: frozenset[type[BaseModel]],
    discriminator: str | Discriminator,
) -> Any:
    """A discriminated union in the partial view: the member is chosen by its
    tag alone, so a member appears only once its tag is complete and never
    changes type as more data arrives. None when the union is not one pydantic
    could discriminate by that field (then it stays a plain union)."""
    optional = type(None) in args
    members = [arg for arg in args if arg is not type(None)]
    if isinstance(discriminator, Discriminator):
        # The caller's own function picks the tag from the (raw) data.
        partial = tuple(_partial_annotation(arg, building) for arg in members)
        union: Any = typing.Annotated[typing.Union[partial], discriminator]  # noqa: UP007
        return typing.Optional[union] if optional else union  # noqa: UP045
    tags: dict[Any, str] = {}
    keys: list[str] = []
    tagged = []
    for member in members:
        field = member.model_fields.get(discriminator) if _is_model(member) else None
        values = _literal_values(field.annotation) if field is not None else ()
        if field is None or not values:
            return None
        tag = f"{member.__module__}.{member.__qualname__}"
        for value in values:
            tags[value] = tag
        for key in (field.alias, discriminator):
            if key is not None and key not in keys:
                keys.append(key)
        tagged.append(typing.Annotated[_partial_annotation(member, building), Tag(tag)])

    def pick(value: Any) -> str | None:
        for key in keys:
            raw = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if raw is not None:
                try:
                    return tags.get(raw)
                except TypeError:  # an unhashable tag value: no member
                    return None
        return None

    union = typing.Annotated[typing.Union[tuple(tagged)], Discriminator(pick)]  # noqa: UP007
    return typing.Optional[union] if optional else union  # noqa: UP045


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    # A model field's annotation: pydantic has moved any Annotated metadata out.
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return ()


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
    """Turns the text of one answer, delta by delta, into growing partial objects.

    Each parse reads the whole text so far (and the object is rebuilt from
    it), so parsing after every delta would cost time quadratic in the
    answer's length. Up to ``SHORT`` characters it does parse after every
    delta; beyond, only once the text grew by a ``GROWTH``-th since the last
    parse, so all the parsing of an answer costs about ``GROWTH`` times its
    length. ``parses`` counts the parses so far.
    """

    def __init__(self, model: type[T]) -> None:
        self._model = model
        self._view = partial_model(model)
        self._pieces: list[str] = []
        self._length = 0
        self._parsed_length = 0
        self._last: Any = MISSING
        self._broken = False
        self.parses = 0

    def feed(self, delta: str) -> T | None:
        """The new partial object after ``delta``; None when nothing new is certain
        (or when the text has not grown enough since the last parse)."""
        if not delta or self._broken:
            return None
        self._pieces.append(delta)
        self._length += len(delta)
        length = self._length
        if length > SHORT and (length - self._parsed_length) * GROWTH < length:
            return None
        self._parsed_length = length
        text = "".join(self._pieces)
        self._pieces = [text]
        text = text.lstrip()
        if text.startswith("```"):
            if "\n" not in text:
                return None
            text = strip_fence(text + "\n```")
        self.parses += 1
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


class AsyncParsedChatStream(AsyncStreamBase, Generic[T]):
    """``parse(..., stream=True)``: iterate for partial objects, then the final one.

    ``async for obj in client.chat.completions.parse(..., stream=True)`` (or
    ``stream = await ...`` first, which opens the first try up to its first
    chunk). Every object but the last is a partial preview; the last one is
    the validated object, always yielded (even when it equals the preview
    before it), and ``stream.done`` is True from then on. Once iterated to
    the end, ``get_final_completion()`` returns the ``ParsedChatCompletion``;
    ``attempts``, ``usage``, ``cost``, ``tries`` and ``provider`` say how it went.
    """

    def __init__(self, call: ParseCall) -> None:
        self._call = call
        self._current: AsyncChatStream | None = None
        self._ready: AsyncChatStream | None = None
        self._final: ParsedChatCompletion[T] | None = None
        self._builder: PartialBuilder[T] | None = None
        self._events = self._run()

    # -- iteration (``async for`` and ``await``: AsyncStreamBase) ---------------

    async def __anext__(self) -> T:
        return await self._events.__anext__()

    async def _start(self) -> Self:
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
            # The call's model is this stream's T (parse()'s overloads say so).
            builder: PartialBuilder[T] | None = (
                PartialBuilder(model) if model is not None else None  # type: ignore[arg-type]
            )
            self._builder = builder
            try:
                async for chunk in stream:
                    if builder is not None:
                        partial = builder.feed(chunk.text)
                        if partial is not None:
                            yield partial
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
        """True once the answer validated (while the last, validated object is handled too)."""
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

    # -- closing (``close()`` and ``async with``: AsyncStreamBase) ---------------

    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Idempotent."""
        ready, self._ready = self._ready, None
        try:
            if ready is not None:
                await ready.aclose()
        finally:
            await self._events.aclose()


# -- the sync stream ---------------------------------------------------------------


class ParsedChatStream(PumpedStream[T]):
    """``Client.chat.completions.parse(..., stream=True)``: the sync iterator.

    A bridge: the ``AsyncParsedChatStream`` runs on chatkit's loop thread in
    one pump task, which hands the objects over. Iterate it once (``for``
    closes it when the loop ends), or use it as a context manager; the
    ``Client`` that opened it closes it in ``close()``.
    """

    def __init__(self, pump: Pump, astream: AsyncParsedChatStream[T], owner: object) -> None:
        self._open_pump(pump)
        self._astream = astream
        # The stream keeps its client, and so its connections, alive.
        self._owner = owner
        self._last: T | None = None

    def __iter__(self) -> Iterator[T]:
        return self._iterate()

    def _iterate(self) -> Iterator[T]:
        buffer = self._buffer
        try:
            while buffer or self._refill():
                while buffer:
                    item = self._last = buffer.popleft()
                    yield item
        finally:
            self.close()

    def __next__(self) -> T:
        if not self._buffer and not self._refill():
            raise StopIteration
        item = self._last = self._buffer.popleft()
        return item

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
        """True once the answer validated and its object (the last) was handed over."""
        astream = self._astream
        if not astream.done or self._buffer:
            return False
        final = astream.get_final_completion().parsed
        return final is None or self._last is final

    def get_final_completion(self) -> ParsedChatCompletion[T]:
        """The ``ParsedChatCompletion``, once the stream has been read to its end."""
        return self._astream.get_final_completion()

    def until_done(self) -> ParsedChatCompletion[T]:
        """Read the rest of the stream and return the ``ParsedChatCompletion``."""
        for _ in self:
            pass
        return self.get_final_completion()
