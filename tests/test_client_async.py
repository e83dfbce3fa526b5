"""AsyncClient end to end against the fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest

import chatkit
from chatkit import (
    APIConnectionError,
    AsyncChatStream,
    ChatCompletion,
    ResponseDecodeError,
    StreamInterrupted,
)
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"


@pytest.fixture
async def server() -> Any:
    async with FakeOpenAIServer(api_key="sk-test") as running:
        yield running


@pytest.fixture
async def client(server: FakeOpenAIServer) -> Any:
    provider = OpenAI(base_url=server.base_url, api_key="sk-test")
    async with chatkit.AsyncClient(provider=provider, max_retries=0) as made:
        yield made


async def test_non_streamed_completion(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.provider == "OpenAI"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.json["stream"] is False
    assert sent.json["model"] == "gpt-4o-mini"


async def test_stream_without_await(client: chatkit.AsyncClient, server: FakeOpenAIServer) -> None:
    pieces = []
    async for chunk in client.chat.completions.create(model="m", messages=HELLO, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == ANSWER
    assert server.requests[-1].json["stream"] is True


async def test_stream_awaited_openai_style(client: chatkit.AsyncClient) -> None:
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    assert isinstance(stream, AsyncChatStream)
    assert stream.provider == "OpenAI"  # known once the first chunk arrived
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"
    assert stream.done
    final = stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].finish_reason == "stop"
    assert final.provider == "OpenAI"
    assert [a.ok for a in final.attempts] == [True]
    assert "AsyncChatStream" in repr(stream)


async def test_awaiting_a_stream_raises_an_error_status_at_the_await(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.fail(1, 401)
    with pytest.raises(chatkit.AuthenticationError):
        await client.chat.completions.create(model="m", messages=HELLO, stream=True)


async def test_usage_only_final_chunk(client: chatkit.AsyncClient) -> None:
    stream = client.chat.completions.create(
        messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.text == ""
    assert last.has_content is False
    assert last.usage is not None
    assert stream.usage == last.usage
    assert stream.get_final_completion().usage == last.usage
    assert "".join(c.text for c in chunks) == ANSWER


async def test_tool_call_deltas_accumulate_by_index(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    calls = [
        {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_b", "name": "get_time", "arguments": '{"tz": "CET"}'},
    ]
    server.script(Behavior(tool_calls=calls, chunks=[]))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    stream = client.chat.completions.create(messages=HELLO, stream=True, tools=tools)
    deltas = [chunk async for chunk in stream]
    assert sum(bool(c.choices and c.choices[0].delta.tool_calls) for c in deltas) > 2
    final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    got = [(t.id, t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls]
    assert got == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {"tz": "CET"}),
    ]
    assert server.requests[-1].json["tools"] == tools


async def test_reasoning_content_is_carried(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(reasoning=["Let me ", "think."], chunks=["42"]))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    async for _ in stream:
        pass
    message = stream.get_final_completion().choices[0].message
    assert message.reasoning_content == "Let me think."
    assert message.content == "42"


async def test_all_parameters_pass_through(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    params: dict[str, Any] = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "stop": ["\n\n"],
        "n": 1,
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u-1",
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "reasoning_effort": "low",
        "metadata": {"k": "v"},
    }
    await client.chat.completions.create(
        model="m",
        messages=HELLO,
        extra_body={"vendor_flag": True},
        extra_headers={"X-Trace": "abc"},
        extra_query={"api-version": "2024-10-01"},
        timeout=30,
        **params,
    )
    sent = server.requests[-1]
    for name, value in params.items():
        assert sent.json[name] == value, name
    assert sent.json["vendor_flag"] is True
    assert sent.headers["X-Trace"] == "abc"
    assert sent.query["api-version"] == "2024-10-01"


async def test_unknown_wire_fields_are_kept(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(headers={"x-request-id": "req_custom"}))
    reply = await client.chat.completions.create(messages=HELLO)
    assert reply.model_extra is not None
    chunk = chatkit.ChatCompletionChunk.model_validate_json(
        b'{"id":"c","choices":[{"index":0,"delta":{"content":"x","shiny":1}}],"new_top":true}'
    )
    assert chunk.model_extra == {"new_top": True}
    assert chunk.choices[0].delta.model_extra == {"shiny": 1}


async def test_error_event_inside_a_200_stream_raises_its_typed_error(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="rate_limit_error"))
    with pytest.raises(chatkit.RateLimitError) as caught:
        async for _ in client.chat.completions.create(messages=HELLO, stream=True):
            pass
    assert caught.value.status_code == 429
    assert caught.value.provider == "OpenAI"


async def test_error_event_after_content_is_a_stream_interruption(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(error_event_after=2, error_event_type="server_error"))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    with pytest.raises(StreamInterrupted) as caught:
        async for _ in stream:
            pass
    assert caught.value.partial_text == "Hello! How"
    assert isinstance(caught.value.cause, chatkit.InternalServerError)
    assert isinstance(caught.value, chatkit.APIError)
    assert stream.text == "Hello! How"


async def test_non_json_data_line_raises_response_decode_error(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(malformed_after=0))
    with pytest.raises(ResponseDecodeError, match="OpenAI") as caught:
        async for _ in client.chat.completions.create(messages=HELLO, stream=True):
            pass
    assert not isinstance(caught.value, json.JSONDecodeError)
    assert caught.value.provider == "OpenAI"


async def test_eof_without_finish_or_done_raises_stream_interrupted() -> None:
    from aiohttp import web

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ("a", "b", "c"):
            chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write_eof()  # a clean end of body: no finish_reason, no [DONE]
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", truncated)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pieces = []
    try:
        async with chatkit.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
        ) as client:
            with pytest.raises(StreamInterrupted) as caught:
                async for chunk in client.chat.completions.create(messages=HELLO, stream=True):
                    pieces.append(chunk.text)
    finally:
        await runner.cleanup()
    assert caught.value.partial_text == "abc" == "".join(pieces)


async def test_dropped_connection_after_content(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(drop_after=3))
    with pytest.raises(StreamInterrupted) as caught:
        async for _ in client.chat.completions.create(messages=HELLO, stream=True):
            pass
    assert caught.value.partial_text == "Hello! How can"
    assert isinstance(caught.value.cause, APIConnectionError)
    assert isinstance(caught.value.__cause__, APIConnectionError)


async def test_huge_line_is_read_without_line_too_long(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(huge_line=300_000))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    async for _ in stream:
        pass
    assert len(stream.text) > 250_000


async def test_break_closes_the_upstream_response(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(stall_after=2))
    async for chunk in client.chat.completions.create(messages=HELLO, stream=True):
        if chunk.text:
            break
    gc.collect()
    assert await server.wait_for_disconnects(1, timeout=5)


async def test_aclose_closes_the_upstream_response(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(stall_after=2))
    stream = await client.chat.completions.create(messages=HELLO, stream=True)
    await stream.aclose()
    await stream.aclose()  # idempotent
    assert await server.wait_for_disconnects(1, timeout=5)
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_leaving_async_with_closes_the_upstream_response(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(stall_after=1))
    async with client.chat.completions.create(messages=HELLO, stream=True) as stream:
        await stream.__anext__()
    assert await server.wait_for_disconnects(1, timeout=5)


async def test_base_url_shortcut_and_provider_class(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test") as client:
        assert isinstance(client.provider, OpenAI)
        reply = await client.chat.completions.create(messages=HELLO)
        assert reply.text == ANSWER
    async with chatkit.AsyncClient(
        provider=OpenAI, base_url=server.base_url, api_key="sk-test"
    ) as client:
        reply = await client.chat.completions.create(messages=HELLO)
        assert reply.text == ANSWER
    assert "sk-test" not in repr(client)


async def test_provider_by_name_and_env(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    async with chatkit.AsyncClient(provider="openai") as client:
        assert (await client.chat.completions.create(messages=HELLO)).text == ANSWER
    async with chatkit.AsyncClient() as client:
        assert client.provider is None
        reply = await client.chat.completions.create(model="openai:gpt-4o", messages=HELLO)
        assert reply.text == ANSWER
    assert server.requests[-1].json["model"] == "gpt-4o"


async def test_default_model_when_model_is_empty(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    await client.chat.completions.create(messages=HELLO)
    assert server.requests[-1].json["model"] == "gpt-4o-mini"


async def test_per_call_provider_override(server: FakeOpenAIServer) -> None:
    other = OpenAI(base_url=server.base_url, api_key="sk-test", default_model="other-model")
    async with chatkit.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="x") as client:
        await client.chat.completions.create(messages=HELLO, provider=other)
    assert server.requests[-1].json["model"] == "other-model"


async def test_default_headers_and_extra_headers(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk-test", default_headers={"X-App": "a", "X-B": "1"}
    ) as client:
        await client.chat.completions.create(messages=HELLO, extra_headers={"X-B": "2"})
    headers = server.requests[-1].headers
    assert headers["X-App"] == "a"
    assert headers["X-B"] == "2"


async def test_models_list(client: chatkit.AsyncClient, server: FakeOpenAIServer) -> None:
    models = await client.models.list()
    assert models and all(m.provider == "OpenAI" for m in models)
    assert server.requests[-1].path == "/v1/models"


async def test_connection_refused_is_an_api_connection_error() -> None:
    async with chatkit.AsyncClient(base_url="http://127.0.0.1:9/v1", max_retries=0) as client:
        with pytest.raises(APIConnectionError, match="OpenAI"):
            await client.chat.completions.create(messages=HELLO)


async def test_closed_client_refuses_new_calls(server: FakeOpenAIServer) -> None:
    client = chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test")
    await client.chat.completions.create(messages=HELLO)
    await client.aclose()
    assert client.is_closed
    with pytest.raises(chatkit.ClientClosedError, match="closed"):
        await client.chat.completions.create(messages=HELLO)


async def test_many_concurrent_streams(client: chatkit.AsyncClient) -> None:
    async def one() -> str:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        async for _ in stream:
            pass
        return stream.text

    texts = await asyncio.gather(*(one() for _ in range(20)))
    assert texts == [ANSWER] * 20
