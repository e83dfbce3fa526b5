"""parse(): streamed partial objects under load and at the edges (review fixes):
closing with the client, bounded re-parsing of long answers, discriminated
unions, tool calls beside content, content filters, the last item, threads."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Discriminator, Field, GetCoreSchemaHandler, Tag
from pydantic_core import core_schema
from structured_support import grows

import chatkit
from chatkit import ContentRefusedError, ParsedChatCompletion, pydantic_function_tool
from chatkit._parsed import FILTERED
from chatkit._parsed_stream import PartialBuilder, partial_model
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Tell me about Paris"}]


class City(BaseModel):
    name: str
    population: int
    tags: list[str] = []


PARIS_JSON = json.dumps({"name": "Paris", "population": 2100000, "tags": ["capital"]})


class GetWeather(BaseModel):
    """Get the weather in a city."""

    city: str


def pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def bounded(action: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Run ``action`` in a daemon thread; fail (instead of hanging) if it takes too long."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# -- 1. the sync client closes its parsed streams -----------------------------------


def test_sync_client_close_closes_an_open_parsed_stream() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(chunks=pieces(PARIS_JSON, 3), delay=0.2))
        client = chatkit.Client(base_url=server.base_url)
        stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
        first = next(stream)
        assert first.name
        client.close()
        with pytest.raises(StopIteration):
            bounded(lambda: next(stream))
        assert bounded(lambda: list(stream)) == []
        assert not stream.done  # closed early: the answer never finished


def test_a_sync_parsed_stream_keeps_its_client_alive() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(chunks=pieces(PARIS_JSON, 3), delay=0.01))
        client = chatkit.Client(base_url=server.base_url)
        stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
        del client
        gc.collect()
        final = bounded(stream.until_done)
        assert final.parsed == City.model_validate_json(PARIS_JSON)


# -- 2. long answers are re-parsed a bounded number of times -------------------------


class Item(BaseModel):
    id: int
    title: str
    tags: list[str]
    score: float


class Doc(BaseModel):
    summary: str
    items: list[Item]


DOC = {
    "summary": "s" * 2000,
    "items": [
        {"id": i, "title": f"Item {i} with a title", "tags": ["alpha", "beta"], "score": i / 8}
        for i in range(300)
    ],
}
DOC_JSON = json.dumps(DOC)


def test_a_long_answer_in_small_deltas_is_parsed_a_bounded_number_of_times() -> None:
    assert len(DOC_JSON) > 28_000
    builder = PartialBuilder(Doc)
    seen = [p for p in map(builder.feed, pieces(DOC_JSON)) if p is not None]
    deltas = len(pieces(DOC_JSON))
    # Every delta while the answer is short, then each time it grew by a
    # sixteenth: about 300 + 16 * ln(28000 / 1024) = 350 parses, not 7,300.
    assert builder.parses <= 400 < deltas
    assert len(seen) > 100
    for before, after in itertools.pairwise(seen):
        assert grows(before, after)
    assert seen[-1].items is not None and len(seen[-1].items) >= 280
    # A short answer still gets a partial object for every delta that changes it.
    short = PartialBuilder(City)
    assert sum(short.feed(p) is not None for p in pieces(PARIS_JSON, 1)) > 10
    assert short.parses == len(PARIS_JSON)


async def test_a_long_streamed_answer_still_grows_and_ends_validated(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(chunks=pieces(DOC_JSON)))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = client.chat.completions.parse(HELLO, response_format=Doc, stream=True)
        seen = [obj async for obj in stream]
        parses = stream._builder.parses if stream._builder is not None else None
    assert parses is not None and parses <= 400
    for before, after in itertools.pairwise(seen[:-1]):
        assert grows(before, after)
    assert seen[-1] == Doc.model_validate(DOC)
    assert seen[-1] is stream.get_final_completion().parsed


# -- 3a. discriminated unions keep their type ------------------------------------------


class Cat(BaseModel):
    kind: Literal["cat"]
    name: str
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str


class Owner(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")
    others: list[Annotated[Cat | Dog, Field(discriminator="kind")]] = []
    maybe: Cat | Dog | None = Field(default=None, discriminator="kind")


def test_a_discriminated_union_member_never_changes_type() -> None:
    data = {
        "pet": {"kind": "dog", "name": "Rex"},
        "others": [{"kind": "cat", "name": "Tom"}, {"kind": "dog", "name": "Fido"}],
        "maybe": {"kind": "dog", "name": "Max"},
    }
    builder = PartialBuilder(Owner)
    seen = [p for p in map(builder.feed, json.dumps(data)) if p is not None]
    pets = [p.pet for p in seen if p.pet is not None]
    assert pets and all(type(pet) is Dog for pet in pets)  # never a Cat while "do" arrives
    assert all(pet.kind == "dog" for pet in pets)
    for partial in seen:
        others = partial.others or []
        for index, other in enumerate(others):
            assert type(other) is (Cat if index == 0 else Dog)
        if partial.maybe is not None:
            assert type(partial.maybe) is Dog
    last = seen[-1]
    assert [type(o) for o in last.others] == [Cat, Dog] and type(last.maybe) is Dog
    for before, after in itertools.pairwise(seen):
        assert grows(before, after)


# -- 3b. response_format with a tool-call answer that has text too --------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_with_preamble_text_are_not_validated_as_the_answer(
    server: FakeOpenAIServer, stream: bool
) -> None:
    calls = [{"id": "call_1", "name": "GetWeather", "arguments": '{"city": "Paris"}'}]
    server.script(Behavior(chunks=["Let me ", "check the weather."], tool_calls=calls))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        options: dict[str, Any] = {
            "response_format": City,
            "tools": [pydantic_function_tool(GetWeather)],
        }
        if stream:
            parsed_stream = client.chat.completions.parse(HELLO, stream=True, **options)
            assert [obj async for obj in parsed_stream] == []
            completion = parsed_stream.get_final_completion()
        else:
            completion = await client.chat.completions.parse(HELLO, **options)
    assert completion.parsed is None
    message = completion.choices[0].message
    assert message.content == "Let me check the weather."
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.parsed_arguments == GetWeather(city="Paris")
    assert completion.choices[0].finish_reason == "tool_calls"
    assert len(server.requests) == 1


# -- 3c. a content filter is not a refusal ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_content_filter_raises_without_putting_the_answer_in_refusal(
    server: FakeOpenAIServer, stream: bool
) -> None:
    server.script(Behavior(text='{"name": "Secret plan', finish_reason="content_filter"))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(ContentRefusedError) as caught:
            if stream:
                async for _ in client.chat.completions.parse(
                    HELLO, response_format=City, stream=True
                ):
                    pass
            else:
                await client.chat.completions.parse(HELLO, response_format=City)
    error = caught.value
    assert error.refusal == FILTERED and "Secret" not in error.refusal
    assert error.finish_reason == "content_filter" and error.provider == "OpenAI"
    assert "content filter" in str(error) and "Secret plan" not in str(error)


# -- 3d. the last item is the validated object ------------------------------------------


async def test_the_validated_object_is_the_last_item_even_when_it_equals_a_partial(
    server: FakeOpenAIServer,
) -> None:
    body = PARIS_JSON[:-1]
    server.script(Behavior(chunks=[body, "}"]))  # the last partial already holds everything
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
        seen: list[tuple[City, bool]] = [(obj, stream.done) async for obj in stream]
    objects = [obj for obj, _ in seen]
    assert [done for _, done in seen] == [False] * (len(seen) - 1) + [True]
    assert len(objects) == 2 and objects[0] == objects[1]
    assert objects[0] is not objects[1] and objects[-1] is stream.get_final_completion().parsed


def test_sync_done_is_true_only_for_the_validated_last_item() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(chunks=pieces(PARIS_JSON, 5)))
        with chatkit.Client(base_url=server.base_url) as client:
            stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
            seen = [(obj, stream.done) for obj in stream]
            final = stream.get_final_completion()
    assert len(seen) > 3
    assert [done for _, done in seen] == [False] * (len(seen) - 1) + [True]
    assert seen[-1][0] is final.parsed and isinstance(final, ParsedChatCompletion)


# -- 3e. partial views built in several threads at once -----------------------------------


class _Gate:
    """A field type whose schema hook, in one chosen thread, waits for another thread."""

    hold: threading.Thread | None = None
    reached = threading.Event()
    release = threading.Event()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        if threading.current_thread() is cls.hold:
            cls.reached.set()
            assert cls.release.wait(10)
        return core_schema.str_schema()


class Inner(BaseModel):
    gate: _Gate | None = None
    label: str = ""


class Holder(BaseModel):
    inner: Inner


def test_partial_views_built_in_two_threads_do_not_see_each_other() -> None:
    built: dict[str, type[BaseModel]] = {}

    def build_inner() -> None:
        built["inner"] = partial_model(Inner)  # waits inside, while building Inner

    def build_holder() -> None:
        assert _Gate.reached.wait(10)
        try:
            built["holder"] = partial_model(Holder)
        finally:
            _Gate.release.set()

    first = threading.Thread(target=build_inner, daemon=True)
    second = threading.Thread(target=build_holder, daemon=True)
    _Gate.hold = first
    first.start()
    second.start()
    first.join(20)
    second.join(20)
    assert not first.is_alive() and not second.is_alive()
    # Inner was being built in the other thread: Holder's view still validates it.
    view: Any = built["holder"].model_validate({"inner": {"label": "x"}})
    inner = view.inner
    assert isinstance(inner, BaseModel) and inner.model_dump()["label"] == "x"


class Square(BaseModel):
    kind: Literal["square"]
    side: int


class Circle(BaseModel):
    kind: Literal["circle"]
    radius: int


def _shape_tag(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return {"square": "sq", "circle": "ci"}.get(kind) if isinstance(kind, str) else None


class Drawing(BaseModel):
    shape: Square | Circle = Field(discriminator="kind")
    picked: Annotated[
        Annotated[Square, Tag("sq")] | Annotated[Circle, Tag("ci")], Discriminator(_shape_tag)
    ]


def test_a_callable_discriminator_and_a_tag_that_is_not_a_value() -> None:
    data = {"shape": {"kind": "square", "side": 2}, "picked": {"kind": "circle", "radius": 3}}
    builder = PartialBuilder(Drawing)
    seen = [p for p in map(builder.feed, json.dumps(data)) if p is not None]
    assert all(type(p.shape) is Square for p in seen if p.shape is not None)
    assert all(type(p.picked) is Circle for p in seen if p.picked is not None)
    last: Any = seen[-1]
    assert last.shape.side == 2 and last.picked.radius == 3
    # An unhashable tag matches no member: the field stays out, the rest arrives.
    odd = PartialBuilder(Drawing).feed('{"shape": {"kind": ["x"]}, "picked": {"kind": "circle"')
    assert odd is not None and odd.shape is None and type(odd.picked) is Circle


@dataclasses.dataclass
class Fish:
    kind: Literal["fish"]
    fins: int = 0


class Bird(BaseModel):
    kind: Literal["bird"]
    wings: int = 2


class Zoo(BaseModel):
    animal: Fish | Bird = Field(discriminator="kind")


def test_a_union_of_dataclasses_keeps_to_a_plain_union_in_the_partial_view() -> None:
    builder = PartialBuilder(Zoo)
    seen = [p for p in map(builder.feed, '{"animal": {"kind": "bird", "wings": 4}}') if p]
    assert type(seen[-1].animal) is Bird and seen[-1].animal.wings == 4
