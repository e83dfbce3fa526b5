"""parse(): ParsedChatCompletion, validation retries, refusals, streamed partial
objects and tool arguments, against the fake servers of each wire format."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field
from structured_support import grows

import chatkit
from chatkit import ContentRefusedError, ParsedChatCompletion, pydantic_function_tool
from chatkit._parsed_stream import PartialBuilder, partial_model
from chatkit._request import ChatRequest
from chatkit._structured import create_request, prepare_parse
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletionChunk, ChoiceDelta, ChunkChoice
from chatkit.providers import Anthropic, Gemini
from chatkit.testing import Behavior, FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Tell me about Paris"}]


class Address(BaseModel):
    street: str
    zip: str | None = None


class City(BaseModel):
    """A city."""

    name: str
    population: int
    tags: list[str] = []
    address: Address | None = None


PARIS = {
    "name": "Paris",
    "population": 2100000,
    "tags": ["capital", "seine"],
    "address": {"street": "Rue de Rivoli", "zip": "75001"},
}
PARIS_JSON = json.dumps(PARIS)


class GetWeather(BaseModel):
    """Get the weather in a city."""

    city: str
    unit: Literal["c", "f"] = "c"


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- the completion -----------------------------------------------------------


async def test_parse_returns_a_parsed_completion_with_everything(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(text=PARIS_JSON))
    prices = {"openai:fake-model": chatkit.Price(input=1.0, output=2.0)}
    async with chatkit.AsyncClient(base_url=server.base_url, prices=prices) as client:
        completion = await client.chat.completions.parse(HELLO, "fake-model", response_format=City)
    assert isinstance(completion, ParsedChatCompletion)
    assert isinstance(completion, chatkit.ChatCompletion)
    assert completion.parsed == City.model_validate(PARIS)
    message = completion.choices[0].message
    assert isinstance(message, chatkit.ParsedChatCompletionMessage)
    assert isinstance(completion.choices[0], chatkit.ParsedChoice)
    assert message.parsed is completion.parsed and message.content == PARIS_JSON
    assert completion.refusal is None and message.refusal is None
    assert completion.provider == "OpenAI" and completion.model == "fake-model"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert [a.decision for a in completion.attempts] == ["success"]
    usage = completion.usage
    assert completion.cost == pytest.approx(
        (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    )


async def test_the_strict_schema_goes_on_the_wire_to_openai(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text=PARIS_JSON))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        await client.chat.completions.parse(HELLO, response_format=City)
    spec = server.requests[-1].json["response_format"]
    assert spec["type"] == "json_schema"
    assert spec["json_schema"]["strict"] is True and spec["json_schema"]["name"] == "City"
    schema = spec["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name", "population", "tags", "address"]
    assert schema["$defs"]["Address"]["additionalProperties"] is False


async def test_anthropic_gets_its_translated_schema() -> None:
    async with FakeAnthropicServer() as anthropic:
        anthropic.script(Behavior(text=PARIS_JSON))
        provider = Anthropic(base_url=anthropic.base_url, api_key="sk-ant-test")
        async with chatkit.AsyncClient(provider=provider) as client:
            completion = await client.chat.completions.parse(HELLO, response_format=City)
    assert completion.parsed == City.model_validate(PARIS)
    assert completion.provider == "Anthropic" and completion.usage is not None
    body = anthropic.requests[-1].json
    assert "response_format" not in body
    schema = body["output_config"]["format"]["schema"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert schema["properties"]["population"]["type"] == "integer"
    assert schema["additionalProperties"] is False


async def test_gemini_gets_its_translated_schema() -> None:
    async with FakeGeminiServer() as gemini:
        gemini.script(Behavior(text=PARIS_JSON))
        provider = Gemini(base_url=gemini.base_url, api_key="g-key")
        async with chatkit.AsyncClient(provider=provider) as client:
            completion = await client.chat.completions.parse(HELLO, response_format=City)
    assert completion.parsed == City.model_validate(PARIS)
    assert completion.provider == "Gemini" and completion.usage is not None
    config = gemini.requests[-1].json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"]["population"]["type"] == "integer"
    assert "response_format" not in gemini.requests[-1].json


# -- validation retries -------------------------------------------------------


async def test_an_invalid_answer_is_fed_back_and_retried(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text='{"name": "Paris"}'), Behavior(text=PARIS_JSON))
    prices = {"openai:fake-model": chatkit.Price(input=1.0, output=1.0)}
    async with chatkit.AsyncClient(base_url=server.base_url, prices=prices) as client:
        completion = await client.chat.completions.parse(
            HELLO, "fake-model", response_format=City, max_validation_retries=2
        )
    assert completion.parsed == City.model_validate(PARIS)
    assert len(server.requests) == 2
    retried = server.requests[1].json["messages"]
    assert retried[:1] == HELLO
    assert retried[1] == {"role": "assistant", "content": '{"name": "Paris"}'}
    assert retried[2]["role"] == "user"
    assert "population: Field required" in retried[2]["content"]
    assert HELLO == [{"role": "user", "content": "Tell me about Paris"}]  # not mutated
    first, second = completion.attempts
    assert [first.number, second.number] == [1, 2]
    assert isinstance(first.error, chatkit.ResponseDecodeError) and first.decision == "retry"
    assert second.decision == "success"
    # The failed try was billed: its usage is on its attempt, and in the cost.
    assert first.usage is not None and completion.usage is not None
    billed = first.usage.total_tokens + completion.usage.total_tokens
    assert completion.cost == pytest.approx(billed / 1e6)


async def test_retries_exhausted_raise_response_decode_error(server: FakeOpenAIServer) -> None:
    server.default = Behavior(text='{"name": 1}')
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.ResponseDecodeError, match="City") as caught:
            await client.chat.completions.parse(
                HELLO, response_format=City, max_validation_retries=2
            )
    assert len(server.requests) == 3
    assert "after 3 tries" in str(caught.value)
    assert [a.number for a in caught.value.attempts] == [1, 2, 3]
    assert [a.decision for a in caught.value.attempts] == ["retry", "retry", "next"]
    # Each retry carries the whole conversation so far.
    assert len(server.requests[2].json["messages"]) == 5


async def test_without_retries_an_invalid_answer_fails_at_once(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text="not json at all"))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.ResponseDecodeError, match="not a valid City"):
            await client.chat.completions.parse(HELLO, response_format=City)
    assert len(server.requests) == 1


async def test_validation_retries_share_the_calls_deadline(server: FakeOpenAIServer) -> None:
    server.default = Behavior(chunks=['{"name":', ' "x"}'], delay=0.15)
    async with chatkit.AsyncClient(base_url=server.base_url, max_retries=0) as client:
        stream = client.chat.completions.parse(
            HELLO, response_format=City, max_validation_retries=50, timeout=0.5, stream=True
        )
        # The deadline ends the call between two tries (APITimeoutError) or,
        # on a loaded machine, inside a try after its first chunk (a timeout
        # after content: StreamInterrupted caused by it).
        with pytest.raises((chatkit.APITimeoutError, chatkit.StreamInterrupted)) as caught:
            async for _ in stream:
                pass
    error = caught.value
    if isinstance(error, chatkit.StreamInterrupted):
        assert isinstance(error.cause, chatkit.APITimeoutError)
    assert 1 <= len(server.requests) < 10
    assert error.attempts  # the tries that ran are reported


# -- refusals -----------------------------------------------------------------


class Refuser:
    """A provider (no base class needed) whose model refuses, OpenAI style."""

    name = "Refuser"

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        for delta in (
            ChoiceDelta(role="assistant"),
            ChoiceDelta(refusal="I can't help "),
            ChoiceDelta(refusal="with that."),
        ):
            yield ChatCompletionChunk(choices=[ChunkChoice(delta=delta)])
        yield ChatCompletionChunk(choices=[ChunkChoice(finish_reason="stop")])


async def test_a_refusal_raises_a_typed_error_with_its_text() -> None:
    async with chatkit.AsyncClient(provider=Refuser()) as client:
        with pytest.raises(ContentRefusedError) as caught:
            await client.chat.completions.parse(
                HELLO, response_format=City, max_validation_retries=3
            )
    error = caught.value
    assert isinstance(error, chatkit.APIError)
    assert error.refusal == "I can't help with that." and error.provider == "Refuser"
    assert "I can't help with that." in str(error)
    assert len(error.attempts) == 1  # a refusal is not retried
    for clone in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert type(clone) is ContentRefusedError
        assert clone.refusal == error.refusal and clone.provider == "Refuser"
    assert type(error).__module__ == "chatkit"


async def test_anthropic_refusal_stop_reason_raises() -> None:
    async with FakeAnthropicServer() as anthropic:
        anthropic.script(Behavior(text='{"name": "Pa', finish_reason="content_filter"))
        provider = Anthropic(base_url=anthropic.base_url, api_key="sk-ant-test")
        async with chatkit.AsyncClient(provider=provider) as client:
            with pytest.raises(ContentRefusedError, match="content filter") as caught:
                await client.chat.completions.parse(
                    HELLO, response_format=City, max_validation_retries=1
                )
    assert caught.value.finish_reason == "content_filter"
    assert caught.value.provider == "Anthropic"
    assert len(anthropic.requests) == 1


# -- streamed partial objects -------------------------------------------------


@pytest.mark.parametrize("awaited", [False, True])
async def test_stream_yields_growing_partial_objects_then_the_final_one(
    server: FakeOpenAIServer, awaited: bool
) -> None:
    server.script(Behavior(chunks=pieces(PARIS_JSON)))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
        assert isinstance(stream, chatkit.AsyncParsedChatStream)
        if awaited:
            stream = await stream
        seen = [obj async for obj in stream]
    assert len(seen) > 5
    assert all(isinstance(obj, City) for obj in seen)
    for before, after in itertools.pairwise(seen):
        assert grows(before, after), (before, after)
    assert seen[0].model_fields_set == {"name"} and seen[0].population is None
    assert seen[-1] == City.model_validate(PARIS)
    final = stream.get_final_completion()
    assert isinstance(final, ParsedChatCompletion) and final.parsed == seen[-1]
    assert stream.usage is not None and stream.provider == "OpenAI"
    assert len(stream.attempts) == 1 and stream.tries == 1 and stream.done


async def test_a_partial_nested_object_is_a_nested_model(server: FakeOpenAIServer) -> None:
    cut = PARIS_JSON.index("Rivoli") + 3
    server.script(Behavior(chunks=[PARIS_JSON[:cut], PARIS_JSON[cut:]]))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
        first = await stream.__anext__()
        await stream.aclose()
    assert isinstance(first.address, Address) and first.address.street == "Rue de Riv"
    assert first.address.zip is None and first.tags == ["capital", "seine"]
    with pytest.raises(RuntimeError, match="not finished"):
        stream.get_final_completion()


async def test_a_streamed_answer_is_retried_when_it_does_not_validate(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(chunks=pieces('{"name": "Lyon"}')), Behavior(chunks=pieces(PARIS_JSON)))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = client.chat.completions.parse(
            HELLO, response_format=City, stream=True, max_validation_retries=1
        )
        names = [obj.name async for obj in stream]
    assert "Lyon" in names and names[-1] == "Paris"
    assert stream.tries == 2 and [a.decision for a in stream.attempts] == ["retry", "success"]
    assert "population" in server.requests[1].json["messages"][-1]["content"]
    assert stream.cost == stream.get_final_completion().cost


async def test_a_streamed_refusal_raises(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text='{"na', finish_reason="content_filter"))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(ContentRefusedError):
            async for _ in client.chat.completions.parse(HELLO, response_format=City, stream=True):
                pass


# -- tools --------------------------------------------------------------------


def test_pydantic_function_tool_is_strict() -> None:
    tool = pydantic_function_tool(GetWeather)
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == "GetWeather" and function["strict"] is True
    assert function["description"] == "Get the weather in a city."
    assert function["parameters"]["additionalProperties"] is False
    assert function["parameters"]["required"] == ["city", "unit"]
    named = pydantic_function_tool(GetWeather, name="weather", description="Weather.")
    assert named["function"]["name"] == "weather"
    assert named["function"]["description"] == "Weather."
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        pydantic_function_tool(GetWeather, name="no spaces allowed")
    assert caught.value.field == "name"
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        pydantic_function_tool(dict)  # type: ignore[arg-type]
    assert caught.value.field == "model"


async def test_tool_arguments_are_parsed(server: FakeOpenAIServer) -> None:
    calls = [
        {"id": "call_1", "name": "GetWeather", "arguments": '{"city": "Paris", "unit": "f"}'},
        {"id": "call_2", "name": "plain", "arguments": '{"x": 1}'},
    ]
    server.script(Behavior(chunks=[], tool_calls=calls))
    plain = {"type": "function", "function": {"name": "plain", "parameters": {"type": "object"}}}
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        completion = await client.chat.completions.parse(
            HELLO, tools=[pydantic_function_tool(GetWeather), plain]
        )
    sent = server.requests[-1].json["tools"]
    assert sent[0]["function"]["strict"] is True and sent[1] == plain
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None
    assert isinstance(tool_calls[0], chatkit.ParsedFunctionToolCall)
    assert isinstance(tool_calls[0].function, chatkit.ParsedFunction)
    assert tool_calls[0].function.parsed_arguments == GetWeather(city="Paris", unit="f")
    assert tool_calls[1].function.parsed_arguments == {"x": 1}
    assert completion.parsed is None


async def test_invalid_tool_arguments_are_fed_back_and_retried(server: FakeOpenAIServer) -> None:
    bad = [{"id": "call_1", "name": "GetWeather", "arguments": '{"city": "Paris", "unit": "k"}'}]
    good = [{"id": "call_2", "name": "GetWeather", "arguments": '{"city": "Paris", "unit": "c"}'}]
    server.script(Behavior(chunks=[], tool_calls=bad), Behavior(chunks=[], tool_calls=good))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        completion = await client.chat.completions.parse(
            HELLO, tools=[pydantic_function_tool(GetWeather)], max_validation_retries=1
        )
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None
    assert tool_calls[0].function.parsed_arguments == GetWeather(city="Paris", unit="c")
    retried = server.requests[1].json["messages"]
    assert retried[1]["role"] == "assistant" and retried[1]["tool_calls"][0]["id"] == "call_1"
    assert retried[2]["role"] == "tool" and retried[2]["tool_call_id"] == "call_1"
    assert "unit" in retried[2]["content"] and "Invalid arguments" in retried[2]["content"]
    assert len(completion.attempts) == 2


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"response_format": City, "max_validation_retries": -1}, "max_validation_retries"),
        ({"response_format": City, "max_validation_retries": 1.5}, "max_validation_retries"),
        ({"response_format": City, "max_validation_retries": True}, "max_validation_retries"),
        ({"response_format": dict}, "response_format"),
        ({"response_format": Address(street="s")}, "response_format"),
        ({"response_format": City, "stream": "yes"}, "stream"),
        ({"response_format": City, "temperature": "hot"}, "temperature"),
        ({"response_format": City, "messages": [{"role": "robot"}]}, "messages[0].role"),
    ],
)
async def test_bad_input_is_rejected_before_any_io(
    server: FakeOpenAIServer, kwargs: dict[str, Any], field: str
) -> None:
    kwargs = {"messages": HELLO, **kwargs}
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.InvalidRequestError) as caught:
            client.chat.completions.parse(**kwargs)  # raises before anything is awaited
    assert caught.value.field == field
    assert server.requests == []


@pytest.mark.parametrize("stream", [False, True, "yes"])
def test_sync_bad_input_is_rejected_before_any_io(stream: Any) -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        with chatkit.Client(base_url=server.base_url) as sync:
            cases: list[tuple[dict[str, Any], str]] = [
                ({"max_validation_retries": -1}, "max_validation_retries"),
                ({"response_format": dict}, "response_format"),
                ({}, "stream"),
            ]
            for kwargs, field in cases:
                if field == "stream" and isinstance(stream, bool):
                    continue
                options: dict[str, Any] = {"response_format": City, "stream": stream, **kwargs}
                with pytest.raises(chatkit.InvalidRequestError) as caught:
                    sync.chat.completions.parse(HELLO, **options)
                assert caught.value.field == field
        assert server.requests == []


# -- the sync client ------------------------------------------------------------


def test_sync_parse_and_parse_stream() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(
            Behavior(text='{"name": 3}'),
            Behavior(text=PARIS_JSON),
            Behavior(chunks=pieces(PARIS_JSON)),
        )
        with chatkit.Client(base_url=server.base_url) as client:
            completion = client.chat.completions.parse(
                HELLO, response_format=City, max_validation_retries=1
            )
            assert completion.parsed == City.model_validate(PARIS)
            assert len(completion.attempts) == 2
            stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
            assert isinstance(stream, chatkit.ParsedChatStream)
            with stream:
                seen = list(stream)
            assert len(seen) > 5 and seen[-1] == City.model_validate(PARIS)
            for before, after in itertools.pairwise(seen):
                assert grows(before, after)
            final = stream.get_final_completion()
            assert final.parsed == seen[-1] and stream.usage is not None
            assert stream.provider == "OpenAI" and len(stream.attempts) == 1
            assert stream.tries == 1 and stream.done and stream.cost == final.cost


def test_sync_parse_stream_errors_surface_at_the_call() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(text='{"na', finish_reason="content_filter"))
        with chatkit.Client(base_url=server.base_url) as client, pytest.raises(ContentRefusedError):
            client.chat.completions.parse(HELLO, response_format=City, stream=True)


# -- partial objects: the partial view ----------------------------------------


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Rich(BaseModel):
    kind: Literal["city", "country"]
    code: Annotated[str, Field(min_length=5)]
    scores: dict[str, Address] = {}
    pair: tuple[int, ...] = ()
    either: int | Address | None = None
    tree: Node | None = None


def test_the_partial_view_keeps_types_and_leaves_out_what_does_not_validate_yet() -> None:
    builder = PartialBuilder(Rich)
    assert builder.feed("") is None and builder.feed("{") is None  # nothing certain yet
    first = builder.feed('"kind": "cit')
    assert first is None  # a partial Literal does not validate yet: left out
    second = builder.feed('y", "code": "ab')
    assert second is not None and second.kind == "city"
    assert second.code == "ab"  # min_length holds for the final value only
    assert second.model_fields_set == {"kind", "code"}
    third = builder.feed('cde", "scores": {"x": {"street": "Ma')
    assert third is not None and isinstance(third.scores["x"], Address)
    assert third.scores["x"].street == "Ma"
    fourth = builder.feed(
        'in"}}, "pair": [1, 2], "either": {"street": "S"}, "tree": {"label": "r", '
    )
    assert fourth is not None and fourth.pair == (1, 2) and isinstance(fourth.either, Address)
    assert isinstance(fourth.tree, Node) and fourth.tree.label == "r"
    last = builder.feed('"children": [{"label": "c"}]}}')
    assert last is not None and last.tree is not None
    # A model inside itself is not rebuilt in the partial view: its data as it came.
    child: Any = last.tree.children[0]
    assert child == {"label": "c"}
    assert builder.feed("   ") is None  # nothing new


def test_a_fenced_or_broken_answer() -> None:
    fenced = PartialBuilder(City)
    assert fenced.feed("```json") is None
    partial = fenced.feed('\n{"name": "Oslo"')
    assert partial is not None and partial.name == "Oslo"
    broken = PartialBuilder(City)
    assert broken.feed("Sure! Here is") is None
    assert broken.feed(' {"name": "x"}') is None  # not JSON from the start: no partials


def test_partial_models_are_made_once() -> None:
    assert partial_model(City) is partial_model(City)
    assert partial_model(City).model_validate({}).model_dump() == {
        "name": None,
        "population": None,
        "tags": None,
        "address": None,
    }


# -- more of the surface ----------------------------------------------------------


async def test_the_deadline_stops_a_new_try() -> None:
    call = prepare_parse(
        None,  # type: ignore[arg-type]  # never called: the deadline is checked first
        check_request=create_request,
        messages=HELLO,
        model="",
        response_format=City,
        stream=False,
        max_validation_retries=3,
        kwargs={},
        strict=lambda: True,
        default_timeout=chatkit.Timeout(total=5.0),
    )
    first = call.next_try(stream=False)
    assert first["timeout"].total == 5.0 and call.tries == 1
    call._deadline = 0.0  # long gone
    with pytest.raises(chatkit.APITimeoutError, match="validation retry 1"):
        call.next_try(stream=False)


async def test_refusal_and_parsed_without_choices(server: FakeOpenAIServer) -> None:
    empty = ParsedChatCompletion[City]()
    assert empty.parsed is None and empty.refusal is None
    server.script(Behavior(text=PARIS_JSON))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        stream = await client.chat.completions.parse(HELLO, response_format=City, stream=True)
        async with stream:
            assert stream.text.startswith("{") or stream.text == ""
            final = await stream.until_done()
        assert final.parsed == City.model_validate(PARIS) and stream.text == PARIS_JSON
        opened = await client.chat.completions.parse(HELLO, response_format=City, stream=True)
        await opened.aclose()  # opened, never iterated: closed all the same
        assert opened.attempts and opened.provider == "OpenAI" and not opened.done
    assert server.requests[-1].json["stream"] is True


async def test_tool_calls_that_are_not_json_and_a_good_call_beside_a_bad_one(
    server: FakeOpenAIServer,
) -> None:
    bad = [
        {"id": "call_1", "name": "GetWeather", "arguments": '{"city": "Oslo"}'},
        {"id": "call_2", "name": "GetWeather", "arguments": '{"city": 5}'},
        {"id": "call_3", "name": "plain", "arguments": "not json"},
    ]
    server.script(Behavior(chunks=[], tool_calls=bad))
    plain = {"type": "function", "function": {"name": "plain", "parameters": {"type": "object"}}}
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.ResponseDecodeError, match="GetWeather tool call"):
            await client.chat.completions.parse(
                HELLO, tools=[pydantic_function_tool(GetWeather), plain]
            )
    server.script(Behavior(chunks=[], tool_calls=bad), Behavior(chunks=[], tool_calls=bad[2:]))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        completion = await client.chat.completions.parse(
            HELLO, tools=[pydantic_function_tool(GetWeather), plain], max_validation_retries=1
        )
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None and tool_calls[0].function.parsed_arguments is None
    feedback = [m for m in server.requests[-1].json["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in feedback] == ["call_1", "call_2", "call_3"]
    assert feedback[0]["content"].startswith("Not run") and "city" in feedback[1]["content"]


def test_pydantic_function_tool_descriptions() -> None:
    class Bare(BaseModel):
        x: int

    assert "description" not in pydantic_function_tool(Bare)["function"]
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        pydantic_function_tool(Bare, description=3)  # type: ignore[arg-type]
    assert caught.value.field == "description"


def test_sync_parse_stream_read_piece_by_piece() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(chunks=pieces(PARIS_JSON)), Behavior(chunks=pieces(PARIS_JSON)))
        with chatkit.Client(base_url=server.base_url) as client:
            stream = client.chat.completions.parse(HELLO, response_format=City, stream=True)
            first = next(stream)
            assert first.name == "P" or first.name.startswith("P")
            final = stream.until_done()
            assert final.parsed == City.model_validate(PARIS)
            with pytest.raises(StopIteration):
                next(stream)
            other = client.chat.completions.parse(HELLO, response_format=City, stream=True)
            other.close()
            other.close()
            assert list(other) == []
