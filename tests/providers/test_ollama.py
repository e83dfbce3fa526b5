"""The Ollama provider: the exact requests it sends and how it reads the answers.

Requests are checked as the fake Ollama server recorded them (path, headers
and JSON body) against Ollama's ``/api/chat`` format. Answers come from that
server, or from a small raw aiohttp server for byte sequences the fake does
not produce (lines split across reads, CRLF, ids on tool calls, junk).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from _vendor_support import ANSWER, HELLO, PNG, VendorCalls, fake_server_fixture, raw_server
from _vendor_support import WEATHER_CALL as CALL
from aiohttp import web

import chatkit
from chatkit import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    StreamInterrupted,
    UnsupportedCapabilityError,
)
from chatkit.providers import DEFAULT_ORDER, PROVIDERS, Ollama, default_provider_class
from chatkit.providers.ollama import ollama_base_url
from chatkit.testing import Behavior, FakeOllamaServer

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(autouse=True)
def _no_ollama_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)


server = fake_server_fixture(FakeOllamaServer)
OLLAMA = VendorCalls(Ollama, model="llama3.2")
client_for = OLLAMA.client_for
sent = OLLAMA.sent
sent_body = OLLAMA.sent_body
refused = OLLAMA.refused
stream = OLLAMA.stream


def ndjson(*pieces: bytes, pause: bool = False) -> Callable[[web.Request], Awaitable[Any]]:
    """A handler writing ``pieces`` as separate body chunks (each one flushed)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            if pause:
                await asyncio.sleep(0.005)  # let each piece arrive as its own read
        return response

    return handler


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def part(content: str = "", **fields: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, **fields}
    return {"model": "llama3.2", "message": message, "done": False}


DONE = {
    "model": "llama3.2",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 3,
    "eval_count": 2,
}


# -- configuration -------------------------------------------------------------


def test_picked_by_default_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing earlier in the default order may be configured in this environment.
    for earlier in DEFAULT_ORDER[: DEFAULT_ORDER.index("ollama")]:
        for variable in getattr(PROVIDERS.get(earlier), "api_key_env", ()):
            monkeypatch.delenv(variable, raising=False)
    assert default_provider_class() is not Ollama
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:1")
    assert default_provider_class() is Ollama


def test_registered_under_its_name() -> None:
    assert PROVIDERS["ollama"] is Ollama


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        (":5000", "http://127.0.0.1:5000"),
        ("10.0.0.2:8080", "http://10.0.0.2:8080"),
        ("[::]:11434", "http://[::1]:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
        ("http://gpu-box:1234/ollama/", "http://gpu-box:1234/ollama"),
        ("  http://localhost:11434  ", "http://localhost:11434"),
    ],
)
def test_ollama_host_addresses(address: str, url: str) -> None:
    assert ollama_base_url(address) == url


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ollama_base_url("gpu-box:port")
    assert caught.value.field == "base_url"
    with pytest.raises(InvalidRequestError):
        Ollama(base_url=123)  # type: ignore[arg-type]


def test_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Ollama().base_url == "http://localhost:11434"
    assert not Ollama.is_configured()
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box")
    assert Ollama.is_configured()
    assert Ollama().base_url == "http://gpu-box:11434"
    assert Ollama(base_url="http://other:1").base_url == "http://other:1"  # explicit wins


def test_optional_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert repr(Ollama()) == "Ollama(base_url='http://localhost:11434', api_key=none)"
    monkeypatch.setenv("OLLAMA_API_KEY", "ollama-env-secret")
    provider = Ollama()
    assert provider._api_key == "ollama-env-secret"
    assert "secret" not in repr(provider)


async def test_streamed_request(server: FakeOllamaServer) -> None:
    await stream(server)
    request = server.requests[-1]
    assert (request.method, request.path, request.query) == ("POST", "/api/chat", {})
    assert request.headers["Accept"] == "application/x-ndjson"
    assert request.headers["Content-Type"] == "application/json"
    assert "authorization" not in request.headers
    assert request.json == {"model": "llama3.2", "messages": HELLO, "stream": True}


async def test_non_streamed_request(server: FakeOllamaServer) -> None:
    request = await sent(server, model="")
    assert request.headers["Accept"] == "application/json"
    assert request.json == {"model": "llama3.2", "messages": HELLO, "stream": False}


async def test_key_headers_query_and_extra_body() -> None:
    async with FakeOllamaServer(api_key="ollama-secret") as server:
        provider = Ollama(
            base_url=server.base_url,
            api_key="ollama-secret",
            default_model="qwen3",
            default_headers={"x-team": "a"},
            keep_alive="10m",
        )
        async with chatkit.AsyncClient(provider=provider) as client:
            await client.chat.completions.create(
                messages=HELLO,
                temperature=0.1,
                extra_headers={"x-trace": "t1"},
                extra_query={"trace": "1"},
                extra_body={"options": {"num_ctx": 8192}, "think": True},
            )
            models = await client.models.list()
    chat, tags = server.requests
    assert chat.headers["Authorization"] == "Bearer ollama-secret"
    assert chat.headers["x-team"] == "a" and chat.headers["x-trace"] == "t1"
    assert chat.query == {"trace": "1"}
    assert chat.json == {
        "model": "qwen3",
        "messages": HELLO,
        "stream": False,
        "options": {"temperature": 0.1, "num_ctx": 8192},
        "keep_alive": "10m",
        "think": True,
    }
    assert tags.path == "/api/tags"
    assert tags.headers["Authorization"] == "Bearer ollama-secret"
    assert [m.id for m in models] == ["llama3.2:latest"]


# -- request translation ---------------------------------------------------------


async def test_messages(server: FakeOllamaServer) -> None:
    second = {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG}"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "They want weather.",
            "tool_calls": [CALL, second],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "?"},
        {"role": "function", "name": "legacy", "content": "old"},
    ]
    body = await sent_body(server, messages=messages)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Metric units."},
        {"role": "user", "content": "Look:\nweather?", "images": [PNG, PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "now", "arguments": {}}},
            ],
            "thinking": "They want weather.",
        },
        {"role": "tool", "content": "18C", "tool_name": "get_weather"},
        {"role": "tool", "content": "noon", "tool_name": "now"},
        {"role": "tool", "content": "?"},
        {"role": "tool", "content": "old", "tool_name": "legacy"},
    ]


async def test_plain_turns(server: FakeOllamaServer) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello."},
        *HELLO,
    ]
    body = await sent_body(server, messages=messages)
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        *HELLO,
    ]


async def test_options_and_format(server: FakeOllamaServer) -> None:
    body = await sent_body(
        server,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        max_tokens=64,
        stop="END",
        n=1,
        user="u-1",
        response_format={"type": "json_object"},
    )
    assert body["options"] == {
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "num_predict": 64,
        "stop": ["END"],
    }
    assert body["format"] == "json"
    assert "user" not in body and "n" not in body
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    body = await sent_body(
        server,
        max_completion_tokens=5,
        stop=["a", "b"],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    assert body["options"] == {"num_predict": 5, "stop": ["a", "b"]}
    assert body["format"] == schema
    assert "format" not in await sent_body(server, response_format={"type": "text"})
    await refused(server, InvalidRequestError, response_format={"type": "json_schema"})
    await refused(server, InvalidRequestError, response_format={"type": "yaml"})


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high")],
)
async def test_reasoning_effort(server: FakeOllamaServer, effort: str, think: Any) -> None:
    assert (await sent_body(server, reasoning_effort=effort))["think"] == think


async def test_tools(server: FakeOllamaServer) -> None:
    body = await sent_body(server, tools=[WEATHER], tool_choice="auto")
    assert body["tools"] == [WEATHER]
    assert "tools" not in await sent_body(server, tools=[WEATHER], tool_choice="none")


@pytest.mark.parametrize(
    ("create", "error", "field"),
    [
        (
            {"tools": [WEATHER], "tool_choice": "required"},
            UnsupportedCapabilityError,
            "tool_choice",
        ),
        ({"tools": [{"type": "web_search"}]}, UnsupportedCapabilityError, "tools[0]"),
        ({"n": 2}, UnsupportedCapabilityError, "n"),
        ({"logprobs": True}, UnsupportedCapabilityError, "logprobs"),
        ({"reasoning_effort": "max"}, InvalidRequestError, "reasoning_effort"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": "https://x/a.png"}],
                    }
                ]
            },
            UnsupportedCapabilityError,
            "messages[0].content[0].image_url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                        ],
                    }
                ]
            },
            UnsupportedCapabilityError,
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    *HELLO,
                    {
                        "role": "assistant",
                        "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{no"}}],
                    },
                ]
            },
            InvalidRequestError,
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
async def test_refused_before_io(
    server: FakeOllamaServer, create: dict[str, Any], error: type[Exception], field: str
) -> None:
    caught = await refused(server, error, **create)
    assert getattr(caught, "field", None) == field


# -- answers ---------------------------------------------------------------------


async def test_streamed_answer(server: FakeOllamaServer) -> None:
    server.default = Behavior(reasoning=["Let me think."])
    result = await stream(server, model="qwen3")
    chunks = result.chunks  # type: ignore[attr-defined]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.reasoning_content == "Let me think."
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert result.text == ANSWER
    assert len([c for c in chunks if c.text]) == 7
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {"qwen3"}
    assert {c.provider for c in chunks} == {"Ollama"}
    final = result.get_final_completion()
    assert final.choices[0].message.reasoning_content == "Let me think."
    assert final.choices[0].finish_reason == "stop"
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert final.usage is not None
    assert final.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 1,
        "completion_tokens": 8,
        "total_tokens": 9,
    }


async def test_non_streamed_answer(server: FakeOllamaServer) -> None:
    server.default = Behavior(reasoning=["Hmm."])
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="llama3.2", messages=HELLO)
    assert reply.text == ANSWER
    assert reply.choices[0].message.reasoning_content == "Hmm."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.provider == "Ollama"
    assert reply.model == "llama3.2"
    assert reply.usage is not None and reply.usage.total_tokens == 9


async def test_tool_calls_in_answers(server: FakeOllamaServer) -> None:
    calls = [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"name": "now", "arguments": "{oops"},
    ]
    server.default = Behavior(text="", tool_calls=calls)
    result = await stream(server, tools=[WEATHER])
    deltas = [
        call
        for chunk in result.chunks  # type: ignore[attr-defined]
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    # Ollama's arguments are objects on the wire; callers get OpenAI's JSON text.
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "now", "{}"),
    ]
    assert all(d.id and d.id.startswith("call_") for d in deltas)
    assert deltas[0].id != deltas[1].id
    final = result.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in reply.choices[0].message.tool_calls or []] == [
        "get_weather",
        "now",
    ]


@pytest.mark.parametrize(("done_reason", "finish"), [("length", "length"), ("load", "load")])
async def test_done_reasons(server: FakeOllamaServer, done_reason: str, finish: str) -> None:
    server.default = Behavior(finish_reason=done_reason)
    assert (await stream(server)).finish_reason == finish


async def test_lines_split_across_reads() -> None:
    body = line(part("Hel")) + line(part("lo", thinking="")) + line(DONE)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    async with raw_server(ndjson(*pieces, pause=True)) as url:
        result = await stream(url)
    assert result.text == "Hello"
    assert result.usage is not None and result.usage.total_tokens == 5


async def test_crlf_blank_lines_and_a_last_line_without_newline() -> None:
    empty = {"message": {"role": "assistant", "content": ""}, "done": False}  # no model either
    body = b"\r\n" + line(part("Hi")).replace(b"\n", b"\r\n") + b"\n" + line(empty)
    body += json.dumps(DONE).encode()
    async with raw_server(ndjson(body)) as url:
        result = await stream(url)
    assert [c.text for c in result.chunks] == ["Hi", ""]  # type: ignore[attr-defined]
    assert result.finish_reason == "stop"


async def test_tool_call_ids_and_string_arguments_from_the_wire() -> None:
    call = {"id": "call_wire", "function": {"name": "f", "arguments": '{"a": 1}'}}
    done = {**DONE, "prompt_eval_count": None}
    async with raw_server(ndjson(line(part(tool_calls=[call])), line(done))) as url:
        result = await stream(url)
    message = result.get_final_completion().choices[0].message
    assert message.tool_calls is not None
    assert (message.tool_calls[0].id, message.tool_calls[0].function.arguments) == (
        "call_wire",
        '{"a": 1}',
    )
    assert result.usage is not None and result.usage.prompt_tokens == 0


async def test_what_follows_the_done_line_is_not_read() -> None:
    async with raw_server(ndjson(line(part("Hi")), line(DONE), b"{junk\n")) as url:
        result = await stream(url)
    assert result.text == "Hi"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (line(part("Hi")) + b"{not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (line(part(tool_calls=["junk"])), "a tool call without a function"),
    ],
)
async def test_malformed_lines(body: bytes, match: str) -> None:
    async with raw_server(ndjson(body + line(DONE))) as url:
        with pytest.raises((ResponseDecodeError, StreamInterrupted)) as caught:
            await stream(url)
    error = caught.value
    if isinstance(error, StreamInterrupted):
        error = error.cause  # type: ignore[assignment]
    assert isinstance(error, ResponseDecodeError)
    assert match in str(error)


async def test_a_line_over_the_cap_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Ollama, "max_line_size", 64)
    long = line(part("x" * 100))
    async with raw_server(ndjson(long[:40], long[40:80], long[80:], pause=True)) as url:
        with pytest.raises(ResponseDecodeError, match="exceeds 64 bytes"):
            await stream(url)
    async with raw_server(ndjson(long + line(DONE))) as url:
        with pytest.raises(ResponseDecodeError, match="exceeds 64 bytes"):
            await stream(url)


async def test_models_list() -> None:
    tags = {
        "models": [
            {"name": "llama3.2:latest", "modified_at": "2025-10-26T17:21:21.196249123-07:00"},
            {"name": "qwen3:8b", "modified_at": "2025-01-01T00:00:00Z", "size": 5},
            {"name": "odd", "modified_at": "yesterday"},
            {"name": "undated"},
            {"model": "no-name"},
            "junk",
        ]
    }

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(tags)

    async with raw_server(handler) as url, client_for(url) as client:
        models = await client.models.list()
    assert [(m.id, m.created) for m in models] == [
        ("llama3.2:latest", 1761524481),
        ("qwen3:8b", 1735689600),
        ("odd", 0),
        ("undated", 0),
    ]
    assert {(m.owned_by, m.provider) for m in models} == {("ollama", "Ollama")}
    assert models[1].model_extra is not None and models[1].model_extra["size"] == 5


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_error_statuses(
    server: FakeOllamaServer, status: int, error: type[Exception], streamed: bool
) -> None:
    server.fail(1, status)
    with pytest.raises(error) as caught:
        if streamed:
            await stream(server)
        else:
            await sent(server)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.provider == "Ollama"  # type: ignore[attr-defined]
    # Ollama's {"error": "..."} text becomes the message.
    expected = (
        'model "llama3.2" not found, try pulling it first'
        if status == 404
        else f"fake error: HTTP {status}"
    )
    assert str(caught.value) == f"Ollama: {status} {expected}"
    assert caught.value.body == {"error": expected}  # type: ignore[attr-defined]


async def test_retry_after_is_honoured(server: FakeOllamaServer) -> None:
    server.fail(1, 429, retry_after_ms=10)
    async with client_for(server, max_retries=1) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert reply.text == ANSWER
    assert reply.attempts[0].delay == pytest.approx(0.01)


async def test_error_bodies_in_other_shapes_pass_through() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="upstream down")

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(InternalServerError, match="upstream down"):
            await client.chat.completions.create(model="m", messages=HELLO)


async def test_wrong_key_behind_an_authenticating_proxy() -> None:
    async with FakeOllamaServer(api_key="ollama-secret") as server:
        provider = Ollama(base_url=server.base_url, api_key="ollama-wrong-secret")
        async with chatkit.AsyncClient(provider=provider, max_retries=2) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.chat.completions.create(model="m", messages=HELLO)
    assert caught.value.status_code == 401
    assert "wrong-secret" not in str(caught.value)
    assert len(server.requests) == 1


async def test_error_line_mid_stream(server: FakeOllamaServer) -> None:
    server.script(Behavior(error_event_after=2))
    with pytest.raises(StreamInterrupted) as caught:
        await stream(server, max_retries=2)
    assert caught.value.partial_text == "Hello! How"
    cause = caught.value.cause
    assert isinstance(cause, InternalServerError)
    assert "fake error event" in str(cause)
    assert len(server.requests) == 1


async def test_stream_ending_without_its_done_line(server: FakeOllamaServer) -> None:
    server.script(Behavior(done=False))
    with pytest.raises(StreamInterrupted) as caught:
        await stream(server, max_retries=2)
    assert caught.value.partial_text == ANSWER
    assert "done line" in str(caught.value)
    assert len(server.requests) == 1


async def test_fake_malformed_line_and_stall(server: FakeOllamaServer) -> None:
    server.script(Behavior(stall_after=1, stall_seconds=0.01, malformed_after=1))
    with pytest.raises(StreamInterrupted) as caught:
        await stream(server)
    assert caught.value.partial_text == "Hello!"
    assert isinstance(caught.value.cause, ResponseDecodeError)


async def test_empty_stream_is_retried(server: FakeOllamaServer) -> None:
    server.script(Behavior(text="", done=False))
    result = await stream(server, max_retries=1)
    assert result.text == ANSWER
    # A stream that ends early is a plain connection failure from the provider.
    error = result.attempts[0].error
    assert isinstance(error, APIConnectionError)
    assert not isinstance(error, StreamInterrupted)
    assert "ended early" in str(error)


@pytest.mark.parametrize(
    ("behavior", "error"),
    [
        (Behavior(malformed_after=0), ResponseDecodeError),
        (Behavior(drop_after=0), APIConnectionError),
        (Behavior(error_event_after=0), InternalServerError),
        (Behavior(reset=True), APIConnectionError),
    ],
)
async def test_non_streamed_faults(
    server: FakeOllamaServer, behavior: Behavior, error: type[Exception]
) -> None:
    server.script(behavior)
    with pytest.raises(error):
        await sent(server)


# -- the fake server on the wire ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"messages": HELLO}, "model is required"),
        ({"model": "m", "messages": {}}, "messages: expected an array"),
        ({"model": "m", "messages": [{"role": "robot", "content": ""}]}, "invalid role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "cannot unmarshal array",
        ),
        ({"model": "m", "messages": [{"role": "user", "images": [1]}]}, "base64 strings"),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}
                ],
            },
            "cannot unmarshal string",
        ),
    ],
)
async def test_fake_server_refuses_what_ollama_refuses(
    server: FakeOllamaServer, body: Any, message: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/api/chat", json=body) as response,
    ):
        assert response.status == 400
        assert message in (await response.json())["error"]


async def test_fake_server_plumbing(server: FakeOllamaServer) -> None:
    async with aiohttp.ClientSession(base_url=server.base_url) as session:
        async with session.post("/api/chat", data=b"{") as response:
            assert response.status == 400
        async with session.get("/") as response:
            assert await response.text() == "Ollama is running"
        async with session.get("/api/version") as response:
            assert "version" in await response.json()
        async with session.post("/api/chat", json={"model": "m", "messages": HELLO}) as response:
            assert response.headers["Content-Type"] == "application/x-ndjson"
            lines = (await response.read()).splitlines()
    objects = [json.loads(raw) for raw in lines]
    assert "".join(o["message"]["content"] for o in objects) == ANSWER
    assert [o["done"] for o in objects] == [False] * 7 + [True]
    assert objects[-1]["eval_count"] == 7 and objects[-1]["done_reason"] == "stop"
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()
    with pytest.raises(OSError):
        await FakeOllamaServer(port=server.port).start()


async def test_fake_server_needs_the_key_for_tags_too() -> None:
    async with (
        FakeOllamaServer(api_key="k") as server,
        aiohttp.ClientSession() as session,
        session.get(f"{server.base_url}/api/tags") as response,
    ):
        assert response.status == 401
        assert await response.json() == {"error": "unauthorized"}


async def test_fake_server_stalls_and_trickles(server: FakeOllamaServer) -> None:
    server.script(Behavior(stall_after=1, stall_seconds=0.2, trickle=0.05, text="a b"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/api/chat", json={"model": "m", "messages": HELLO}) as r,
    ):
        raw = await r.read()
    assert b"\n\n" in raw  # keep-alive blank lines
    assert len([x for x in raw.splitlines() if x]) == 3
    server.script(Behavior(stall_after=0, stall_seconds=0.01))
    assert (await sent(server)).path == "/api/chat"


async def test_fake_server_notices_a_client_that_leaves(server: FakeOllamaServer) -> None:
    server.script(Behavior(stall_after=1, stall_seconds=30))
    async with client_for(server) as client:
        result = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        assert (await result.__anext__()).text == "Hello!"
        await result.aclose()
    assert await server.wait_for_disconnects(1)


# -- the sync client -------------------------------------------------------------


def test_sync_client_streams() -> None:
    client_class = getattr(chatkit, "Client", None)
    if client_class is None:
        pytest.skip("chatkit.Client (chatkit/_sync.py) is not available yet")
    with (
        FakeOllamaServer().run_in_thread() as server,
        client_class(provider=Ollama(base_url=server.base_url), max_retries=0) as client,
    ):
        with client.chat.completions.create(
            model="llama3.2", messages=HELLO, stream=True
        ) as result:
            pieces = [chunk.text for chunk in result]
        reply = client.chat.completions.create(model="llama3.2", messages=HELLO)
    assert "".join(pieces) == ANSWER == reply.text
    assert [r.json["stream"] for r in server.requests] == [True, False]


async def test_a_non_streamed_answer_with_nothing_in_it() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"model": "m", "message": {"role": "assistant"}, "done": False})

    async with raw_server(handler) as url, client_for(url) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert reply.text == ""
    assert reply.choices[0].finish_reason is None
