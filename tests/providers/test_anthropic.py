"""The Anthropic provider: the exact requests it sends and how it reads the answers.

Requests are checked as the fake Anthropic server recorded them (headers and
JSON body), against the Messages API format. Answers come from that server, or
from a small raw aiohttp server for byte sequences the fake does not produce.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import _vendor_support
import pytest
from _vendor_support import (
    ANSWER,
    HELLO,
    PNG,
    WEATHER_TOOL,
    VendorCalls,
    collect,
    fake_server_fixture,
)
from aiohttp import web

import chatkit
from chatkit import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    MissingAuthError,
    OverloadedError,
    RateLimitError,
    ResponseDecodeError,
    StreamInterrupted,
    Timeout,
    UnsupportedCapabilityError,
)
from chatkit._request import OPENAI_PARAMS
from chatkit.providers import PROVIDERS, Anthropic
from chatkit.providers._anthropic_request import IGNORED_PARAMS, MAPPED_PARAMS, UNSUPPORTED_PARAMS
from chatkit.providers._common import resolve_endpoint
from chatkit.providers.anthropic import _model, _usage, finish_reason
from chatkit.testing import Behavior, FakeAnthropicServer

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test"


server = fake_server_fixture(FakeAnthropicServer, api_key=KEY)
ANTHROPIC = VendorCalls(Anthropic, model="claude-test", api_key=KEY)
client_for = ANTHROPIC.client_for
sent = ANTHROPIC.sent
sent_body = ANTHROPIC.sent_body
refused = ANTHROPIC.refused


# -- configuration ------------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert PROVIDERS["anthropic"] is Anthropic


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(MissingAuthError) as caught:
        Anthropic()
    assert caught.value.env_var == "ANTHROPIC_API_KEY"
    assert "ANTHROPIC_API_KEY" in str(caught.value)


def test_key_and_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env-secret")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/")
    provider = Anthropic()
    assert provider.base_url == "http://127.0.0.1:9"
    assert "sk-ant-env-secret" not in repr(provider)
    assert repr(provider) == "Anthropic(base_url='http://127.0.0.1:9', api_key=set)"


def test_default_base_url() -> None:
    assert Anthropic(api_key=KEY).base_url == "https://api.anthropic.com"


@pytest.mark.parametrize("bad", [0, -5, True, "100"])
def test_max_tokens_must_be_a_positive_integer(bad: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Anthropic(api_key=KEY, max_tokens=bad)
    assert caught.value.field == "max_tokens"


def test_api_key_must_be_a_string() -> None:
    with pytest.raises(InvalidRequestError):
        Anthropic(api_key=123)  # type: ignore[arg-type]


def test_proxy_settings_are_kept_without_the_password() -> None:
    provider = Anthropic(api_key=KEY, proxy="socks5://user:hunter2@127.0.0.1:1080")
    assert provider.proxy_settings is not None
    assert "hunter2" not in repr(provider.proxy_settings)
    assert Anthropic(api_key=KEY).proxy_settings is None


async def test_a_model_prefix_routes_to_anthropic(
    server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    async with chatkit.AsyncClient(max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="anthropic:claude-sonnet-4-5", messages=HELLO
        )
    assert reply.provider == "Anthropic"
    assert server.requests[-1].json["model"] == "claude-sonnet-4-5"


# -- the request on the wire --------------------------------------------------


async def test_headers_and_path(server: FakeAnthropicServer) -> None:
    async with client_for(server, default_headers={"anthropic-beta": "beta-1"}) as client:
        await client.chat.completions.create(
            model="claude-test",
            messages=HELLO,
            extra_headers={"x-trace": "abc"},
            extra_query={"beta": "true"},
        )
    request = server.requests[-1]
    assert (request.method, request.path, request.query) == (
        "POST",
        "/v1/messages",
        {"beta": "true"},
    )
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["anthropic-beta"] == "beta-1"
    assert request.headers["x-trace"] == "abc"
    assert "authorization" not in request.headers


async def test_minimal_body(server: FakeAnthropicServer) -> None:
    assert await sent_body(server) == {
        "model": "claude-test",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": False,
    }


async def test_streamed_request_sets_stream_and_accept(server: FakeAnthropicServer) -> None:
    async with client_for(server) as client:
        await collect(client.chat.completions.create(model="m", messages=HELLO, stream=True))
    request = server.requests[-1]
    assert request.json["stream"] is True
    assert request.headers["accept"] == "text/event-stream"


async def test_empty_model_uses_the_default(server: FakeAnthropicServer) -> None:
    async with client_for(server, default_model="claude-custom") as client:
        await client.chat.completions.create(messages=HELLO)
    assert server.requests[-1].json["model"] == "claude-custom"
    assert Anthropic(api_key=KEY).default_model == "claude-sonnet-4-5"


async def test_system_and_developer_messages_move_to_system(server: FakeAnthropicServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Again"},
    ]
    body = await sent_body(server, messages=messages)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Again"}],
        }
    ]


async def test_system_parts_with_cache_control_stay_blocks(server: FakeAnthropicServer) -> None:
    cached = {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "system", "content": [cached]}, *HELLO]
    body = await sent_body(server, messages=messages)
    assert body["system"] == [cached]


async def test_consecutive_roles_are_merged(server: FakeAnthropicServer) -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"},
    ]
    body = await sent_body(server, messages=messages)
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": "five"},
    ]


async def test_images_become_image_blocks(server: FakeAnthropicServer) -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
        },
        {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
    ]
    body = await sent_body(server, messages=[{"role": "user", "content": content}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_pdf_files_become_document_blocks(server: FakeAnthropicServer) -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
    }
    body = await sent_body(server, messages=[{"role": "user", "content": [part]}])
    assert body["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        }
    ]


@pytest.mark.parametrize(
    ("part", "error", "field"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
            InvalidRequestError,
            "messages[0].content[0].image_url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
            InvalidRequestError,
            "messages[0].content[0].image_url",
        ),
        (
            {"type": "file", "file": {"file_id": "file-123"}},
            UnsupportedCapabilityError,
            "messages[0].content[0]",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}},
            UnsupportedCapabilityError,
            "messages[0].content[0]",
        ),
    ],
)
async def test_content_anthropic_cannot_take_fails_before_io(
    server: FakeAnthropicServer, part: dict[str, Any], error: type[Exception], field: str
) -> None:
    caught = await refused(server, error, messages=[{"role": "user", "content": [part]}])
    assert getattr(caught, "field", None) == field


async def test_images_in_system_or_assistant_messages_are_refused(
    server: FakeAnthropicServer,
) -> None:
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    messages = [{"role": "system", "content": [image]}, *HELLO]
    await refused(server, UnsupportedCapabilityError, messages=messages)


async def test_legacy_function_messages_are_refused(server: FakeAnthropicServer) -> None:
    messages = [*HELLO, {"role": "function", "name": "f", "content": "{}"}]
    caught = await refused(server, UnsupportedCapabilityError, messages=messages)
    assert getattr(caught, "field", None) == "messages[1].role"


async def test_tools_and_tool_choice(server: FakeAnthropicServer) -> None:
    bare = {"type": "function", "function": {"name": "now", "strict": True}}
    native = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    body = await sent_body(
        server,
        tools=[WEATHER_TOOL, bare, native],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}, "strict": True},
        native,
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
        ({"type": "any"}, {"type": "any"}),
        (None, None),
    ],
)
async def test_tool_choice_translation(
    server: FakeAnthropicServer, choice: Any, expected: Any
) -> None:
    body = await sent_body(server, tools=[WEATHER_TOOL], tool_choice=choice)
    assert body.get("tool_choice") == expected


async def test_parallel_tool_calls_off_without_a_choice(server: FakeAnthropicServer) -> None:
    body = await sent_body(server, tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_tool_choice_without_tools_is_left_out(server: FakeAnthropicServer) -> None:
    body = await sent_body(server, tool_choice="auto")
    assert "tool_choice" not in body and "tools" not in body


async def test_unknown_tool_choice_string_fails(server: FakeAnthropicServer) -> None:
    caught = await refused(
        server, InvalidRequestError, tools=[WEATHER_TOOL], tool_choice="sometimes"
    )
    assert getattr(caught, "field", None) == "tool_choice"


async def test_tool_calls_and_results_round_trip(server: FakeAnthropicServer) -> None:
    call = {
        "id": "toolu_01",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    other = {"id": "toolu_02", "type": "function", "function": {"name": "now", "arguments": ""}}
    messages = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [call, other]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "noon"}]},
        {"role": "user", "content": "Thanks"},
    ]
    body = await sent_body(server, messages=messages, tools=[WEATHER_TOOL])
    assert body["messages"] == [
        {"role": "user", "content": "Weather and time?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": [{"type": "text", "text": "noon"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
async def test_tool_call_arguments_must_be_a_json_object(
    server: FakeAnthropicServer, arguments: str
) -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]
    caught = await refused(server, InvalidRequestError, messages=messages)
    assert getattr(caught, "field", None) == "messages[1].tool_calls[0].function.arguments"


async def test_messages_left_without_content_are_dropped(server: FakeAnthropicServer) -> None:
    messages = [*HELLO, {"role": "assistant", "content": ""}, {"role": "user", "content": "More"}]
    body = await sent_body(server, messages=messages)
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "More"}],
        }
    ]


async def test_assistant_refusal_parts_and_empty_text(server: FakeAnthropicServer) -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "No."}, {"type": "text", "text": ""}],
        },
        {"role": "user", "content": "Why?"},
    ]
    body = await sent_body(server, messages=messages)
    assert body["messages"][1] == {"role": "assistant", "content": "No."}


async def test_sampling_and_stop_parameters(server: FakeAnthropicServer) -> None:
    body = await sent_body(
        server, temperature=0.2, top_p=0.9, max_tokens=50, stop="END", user="user-42", seed=7
    )
    assert body == {
        "model": "claude-test",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": False,
    }


async def test_stop_list_and_max_completion_tokens(server: FakeAnthropicServer) -> None:
    body = await sent_body(server, stop=["a", "b"], max_completion_tokens=77)
    assert body["stop_sequences"] == ["a", "b"]
    assert body["max_tokens"] == 77


async def test_provider_max_tokens_default(server: FakeAnthropicServer) -> None:
    async with client_for(server, max_tokens=123) as client:
        await client.chat.completions.create(messages=HELLO)
    assert server.requests[-1].json["max_tokens"] == 123


@pytest.mark.parametrize(
    ("create", "max_tokens", "thinking"),
    [
        ({"reasoning_effort": "medium"}, 4096 + 8192, {"type": "enabled", "budget_tokens": 8192}),
        (
            {"reasoning_effort": "high", "max_tokens": 3000},
            3000,
            {"type": "enabled", "budget_tokens": 2999},
        ),
        ({"reasoning_effort": "minimal"}, 4096 + 1024, {"type": "enabled", "budget_tokens": 1024}),
        ({"reasoning_effort": "none"}, 4096, {"type": "disabled"}),
    ],
)
async def test_reasoning_effort_becomes_a_thinking_budget(
    server: FakeAnthropicServer, create: dict[str, Any], max_tokens: int, thinking: Any
) -> None:
    body = await sent_body(server, **create)
    assert body["max_tokens"] == max_tokens
    assert body["thinking"] == thinking


async def test_reasoning_effort_needs_room(server: FakeAnthropicServer) -> None:
    caught = await refused(server, InvalidRequestError, reasoning_effort="low", max_tokens=1000)
    assert getattr(caught, "field", None) == "max_tokens"
    caught = await refused(server, InvalidRequestError, reasoning_effort="extreme")
    assert getattr(caught, "field", None) == "reasoning_effort"


async def test_extra_body_passes_vendor_fields_through(server: FakeAnthropicServer) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2000}
    body = await sent_body(
        server, reasoning_effort="high", extra_body={"thinking": thinking, "top_k": 5}
    )
    assert body["thinking"] == thinking
    assert body["top_k"] == 5


async def test_json_schema_becomes_output_config(server: FakeAnthropicServer) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "N", "schema": schema}}
    body = await sent_body(server, response_format=response_format)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in await sent_body(server, response_format={"type": "text"})


async def test_json_object_is_refused_before_io(server: FakeAnthropicServer) -> None:
    caught = await refused(
        server, UnsupportedCapabilityError, response_format={"type": "json_object"}
    )
    assert getattr(caught, "field", None) == "json_object"


async def test_json_schema_without_a_schema_fails(server: FakeAnthropicServer) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "N"}}
    caught = await refused(server, InvalidRequestError, response_format=response_format)
    assert getattr(caught, "field", None) == "response_format"


def test_unknown_response_format_types_are_refused() -> None:
    provider = Anthropic(api_key=KEY)
    request = chatkit.ChatRequest(
        model="m", messages=HELLO, params={"response_format": {"type": "xml"}}
    )
    with pytest.raises(UnsupportedCapabilityError):
        provider.check_request(request)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("logit_bias", {"50256": -100}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
    ],
)
async def test_parameters_anthropic_cannot_honour_are_refused(
    server: FakeAnthropicServer, param: str, value: Any
) -> None:
    caught = await refused(server, UnsupportedCapabilityError, **{param: value})
    assert getattr(caught, "field", None) == param


async def test_harmless_values_and_ignored_parameters_are_accepted(
    server: FakeAnthropicServer,
) -> None:
    body = await sent_body(
        server,
        n=1,
        logprobs=False,
        presence_penalty=0,
        modalities=["text"],
        store=True,
        metadata={"k": "v"},
        stream_options={"include_usage": True},
        service_tier="auto",
        prompt_cache_key="abc",
        verbosity="low",
    )
    assert set(body) == {"model", "max_tokens", "messages", "stream"}


def test_every_openai_parameter_has_a_decided_fate() -> None:
    decided = MAPPED_PARAMS | IGNORED_PARAMS | set(UNSUPPORTED_PARAMS)
    assert set(OPENAI_PARAMS) <= decided
    assert not (MAPPED_PARAMS & IGNORED_PARAMS) and not (set(UNSUPPORTED_PARAMS) & MAPPED_PARAMS)


async def test_caller_messages_are_not_mutated(server: FakeAnthropicServer) -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    snapshot = json.dumps(messages)
    await sent(server, messages=messages)
    assert json.dumps(messages) == snapshot


# -- streamed answers ---------------------------------------------------------


async def test_streamed_text(server: FakeAnthropicServer) -> None:
    async with client_for(server) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        chunks = await collect(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].id == "msg_fake1"
    assert {c.provider for c in chunks} == {"Anthropic"}
    assert stream.text == ANSWER
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1, 7)
    assert last.usage.total_tokens == 8


async def test_streamed_thinking_and_tool_calls(server: FakeAnthropicServer) -> None:
    calls = [
        {
            "id": "toolu_a",
            "name": "get_weather",
            "arguments": json.dumps({"city": "Paris", "unit": "c"}),
        },
        {"id": "toolu_b", "name": "now", "arguments": ""},
    ]
    server.default = Behavior(text="Let me check.", reasoning=["Need", " tools."], tool_calls=calls)
    async with client_for(server) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        chunks = await collect(stream)
    heads = [
        call
        for chunk in chunks
        for call in chunk.choices[0].delta.tool_calls or []
        if call.id is not None
    ]
    # Block indexes are 2 and 3 (thinking and text come first); tool indexes count tool calls.
    assert [(h.index, h.id, h.function.name if h.function else None) for h in heads] == [
        (0, "toolu_a", "get_weather"),
        (1, "toolu_b", "now"),
    ]
    final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.reasoning_content == "Need tools."
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("toolu_a", "get_weather", calls[0]["arguments"]),
        ("toolu_b", "now", ""),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    server: FakeAnthropicServer, stop_reason: str, expected: str
) -> None:
    assert finish_reason(stop_reason) == expected
    server.default = Behavior(finish_reason=stop_reason)
    async with client_for(server) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True, stop=["zz"])
        await collect(stream)
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert stream.finish_reason == expected
    assert reply.choices[0].finish_reason == expected


def test_no_stop_reason_is_no_finish_reason() -> None:
    assert finish_reason(None) is None


async def test_overloaded_event_before_content_is_retried(server: FakeAnthropicServer) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="overloaded_error"))
    async with client_for(server, max_retries=1) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        await collect(stream)
    assert stream.text == ANSWER
    first = stream.attempts[0].error
    assert isinstance(first, OverloadedError)
    assert first.status_code == 529
    assert first.request_id == "req_1"
    assert first.body == {"type": "overloaded_error", "message": "fake error event"}
    assert len(server.requests) == 2


async def test_rate_limit_event_before_content_is_retried(server: FakeAnthropicServer) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="rate_limit_error"))
    async with client_for(server, max_retries=1) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        await collect(stream)
    assert isinstance(stream.attempts[0].error, RateLimitError)
    assert stream.text == ANSWER


async def test_invalid_request_event_is_not_retried(server: FakeAnthropicServer) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="invalid_request_error"))
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(BadRequestError):
            await collect(client.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert len(server.requests) == 1


async def test_error_event_after_content_interrupts(server: FakeAnthropicServer) -> None:
    server.script(Behavior(error_event_after=2, error_event_type="overloaded_error"))
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(StreamInterrupted) as caught:
            await collect(client.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert caught.value.partial_text == "Hello! How"
    assert isinstance(caught.value.cause, OverloadedError)
    assert len(server.requests) == 1


async def test_stream_without_message_stop_still_completes_after_stop_reason(
    server: FakeAnthropicServer,
) -> None:
    server.default = Behavior(done=False)
    async with client_for(server) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        await collect(stream)
    assert stream.text == ANSWER and stream.finish_reason == "stop"


async def test_malformed_event_after_content(server: FakeAnthropicServer) -> None:
    server.script(Behavior(malformed_after=1))
    async with client_for(server) as client:
        with pytest.raises(StreamInterrupted) as caught:
            await collect(client.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert isinstance(caught.value.cause, ResponseDecodeError)
    assert caught.value.partial_text == "Hello!"


async def test_huge_event_line_is_read_whole(server: FakeAnthropicServer) -> None:
    server.default = Behavior(huge_line=1_000_000)
    async with client_for(server) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        await collect(stream)
    assert stream.text.endswith(ANSWER)
    assert len(stream.text) == 1_000_000 + len(ANSWER)


async def test_stall_after_content_hits_the_read_timeout(server: FakeAnthropicServer) -> None:
    server.default = Behavior(stall_after=1)
    timeout = Timeout(read=0.2)
    async with client_for(server, timeout=timeout) as client:
        with pytest.raises(StreamInterrupted) as caught:
            await collect(client.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert isinstance(caught.value.cause, APITimeoutError)
    assert caught.value.partial_text == "Hello!"


# -- raw servers for what the fake never sends --------------------------------


@asynccontextmanager
async def raw_server(body: bytes, content_type: str = "text/event-stream") -> AsyncIterator[str]:
    """A one-route server answering every POST /v1/messages with ``body``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers={"request-id": "req_raw"})

    async with _vendor_support.raw_server(handler, method="POST", path="/v1/messages") as url:
        yield url


def sse(kind: str, obj: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(obj)}\n\n".encode()


START = sse(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "c",
            "usage": {"input_tokens": 3, "cache_read_input_tokens": 4},
        },
    },
)
TEXT = sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}},
) + sse(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
)


async def raw_stream(body: bytes) -> chatkit.AsyncChatStream:
    async with raw_server(body) as url:
        client = chatkit.AsyncClient(provider=Anthropic(api_key=KEY, base_url=url), max_retries=0)
        async with client:
            stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
            try:
                await collect(stream)
            finally:
                await stream.aclose()
    return stream


async def test_a_clean_end_without_a_stop_is_interrupted() -> None:
    with pytest.raises(StreamInterrupted) as caught:
        await raw_stream(START + TEXT)
    assert caught.value.partial_text == "Hi there"


async def test_text_in_block_start_unknown_events_and_cache_usage() -> None:
    citation = sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": {}},
        },
    )
    orphan = sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 5,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
    )
    future = sse("brand_new_event", {"type": "brand_new_event"})
    redacted = sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "redacted_thinking", "data": "x"},
        },
    )
    end = sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
    )
    stream = await raw_stream(START + TEXT + citation + orphan + future + redacted + end)
    assert stream.text == "Hi there"
    assert stream.usage is not None
    assert (
        stream.usage.prompt_tokens,
        stream.usage.completion_tokens,
        stream.usage.total_tokens,
    ) == (7, 2, 9)
    assert stream.finish_reason == "stop"


async def test_message_delta_without_a_stop_reason_does_not_finish() -> None:
    interim = sse(
        "message_delta", {"type": "message_delta", "delta": {"stop_reason": None}, "usage": "bad"}
    )
    with pytest.raises(StreamInterrupted):
        await raw_stream(START + TEXT + interim)


@pytest.mark.parametrize(
    "event",
    [
        b"data: [1, 2]\n\n",
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}},
        ),
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
        ),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": None, "name": "f"},
            },
        ),
    ],
)
async def test_malformed_events_are_decode_errors(event: bytes) -> None:
    with pytest.raises(ResponseDecodeError):
        await raw_stream(START + event)


async def test_event_name_is_used_when_data_has_no_type() -> None:
    error = b'event: error\ndata: {"error": {"type": "overloaded_error", "message": "busy"}}\n\n'
    with pytest.raises(OverloadedError) as caught:
        await raw_stream(START + error)
    assert caught.value.request_id == "req_raw"


async def test_a_last_event_without_its_blank_line_is_still_read() -> None:
    stream = await raw_stream(START + TEXT + b'event: message_stop\ndata: {"type": "message_stop"}')
    assert stream.text == "Hi there"


async def test_message_start_without_strings_is_tolerated() -> None:
    start = sse("message_start", {"type": "message_start", "message": {"id": 5, "usage": None}})
    end = sse("message_stop", {"type": "message_stop"})
    stream = await raw_stream(start + TEXT + end)
    assert stream.text == "Hi there"
    assert stream.get_final_completion().id == ""


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}',
            OverloadedError,
        ),
        (b'{"content": 5}', ResponseDecodeError),
        (b"[]", ResponseDecodeError),
        (b"not json", ResponseDecodeError),
    ],
)
async def test_non_streamed_bodies_that_are_not_messages(
    body: bytes, error: type[Exception]
) -> None:
    async with raw_server(body, "application/json") as url:
        client = chatkit.AsyncClient(provider=Anthropic(api_key=KEY, base_url=url), max_retries=0)
        async with client:
            with pytest.raises(error) as caught:
                await client.chat.completions.create(model="m", messages=HELLO)
    if isinstance(caught.value, OverloadedError):
        assert caught.value.request_id == "req_raw"


# -- non-streamed answers -----------------------------------------------------


async def test_non_streamed_blocks_without_an_openai_field_are_skipped() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "model": "c",
        "content": [
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
            {"type": "text", "text": "Found it."},
        ],
        "stop_reason": "end_turn",
    }
    async with raw_server(json.dumps(message).encode(), "application/json") as url:
        client = chatkit.AsyncClient(provider=Anthropic(api_key=KEY, base_url=url), max_retries=0)
        async with client:
            reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert reply.text == "Found it."
    assert reply.choices[0].message.tool_calls is None
    assert reply.usage is not None and reply.usage.total_tokens == 0


async def test_non_streamed_completion(server: FakeAnthropicServer) -> None:
    calls = [{"id": "toolu_a", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    server.default = Behavior(text="", reasoning=["Thinking."], tool_calls=calls)
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="claude-test", messages=HELLO)
    assert reply.id == "msg_fake1"
    assert reply.model == "claude-test"
    assert reply.provider == "Anthropic"
    message = reply.choices[0].message
    assert message.content is None
    assert message.reasoning_content == "Thinking."
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_a",
        "get_weather",
        {"city": "Paris"},
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.usage is not None and reply.usage.total_tokens == 1 + reply.usage.completion_tokens


async def test_error_status_bodies_become_typed_errors(server: FakeAnthropicServer) -> None:
    server.fail(1, 529)
    async with client_for(server) as client:
        with pytest.raises(OverloadedError) as caught:
            await client.chat.completions.create(model="m", messages=HELLO)
    error = caught.value
    assert error.status_code == 529
    assert error.request_id == "req_1"
    assert error.body == {"type": "overloaded_error", "message": "Fake error: HTTP 529."}
    assert "Fake error: HTTP 529." in str(error)


async def test_wrong_key_is_an_authentication_error(server: FakeAnthropicServer) -> None:
    provider = Anthropic(api_key="sk-ant-wrong", base_url=server.base_url)
    async with chatkit.AsyncClient(provider=provider, max_retries=3) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.chat.completions.create(model="m", messages=HELLO)
    assert "invalid x-api-key" in str(caught.value)
    assert "sk-ant-wrong" not in str(caught.value)
    assert len(server.requests) == 1


async def test_non_streamed_error_event_equivalent_is_retried(server: FakeAnthropicServer) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="overloaded_error"))
    async with client_for(server, max_retries=1) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert reply.text == ANSWER
    assert isinstance(reply.attempts[0].error, OverloadedError)


async def test_truncated_non_streamed_body(server: FakeAnthropicServer) -> None:
    server.script(Behavior(drop_after=0))
    async with client_for(server) as client:
        with pytest.raises(APIConnectionError):
            await client.chat.completions.create(model="m", messages=HELLO)


# -- usage, models ------------------------------------------------------------


def test_usage_adds_cached_prompt_tokens() -> None:
    start = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 20,
        "output_tokens": 1,
    }
    usage = _usage(start, {"output_tokens": 42, "service_tier": "standard"})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (35, 42, 77)
    assert _usage(None).total_tokens == 0


def test_model_entries() -> None:
    item = {
        "type": "model",
        "id": "claude-x",
        "display_name": "Claude X",
        "created_at": "2025-02-19T00:00:00Z",
    }
    model = _model(item, "Anthropic")
    assert (model.id, model.owned_by, model.provider) == ("claude-x", "anthropic", "Anthropic")
    assert model.created == 1739923200
    assert model.model_extra == {"display_name": "Claude X"}
    assert _model({"id": "y", "created_at": "yesterday"}, "Anthropic").created == 0
    assert _model({"id": "z"}, "Anthropic").created == 0


def test_endpoint_repr_hides_the_key() -> None:
    endpoint = resolve_endpoint(
        "X",
        api_key="sk-secret",
        base_url=None,
        api_key_env=("X_KEY",),
        base_url_env=("X_URL",),
        default_base_url="https://x.example",
        key_required=False,
    )
    assert repr(endpoint) == "Endpoint(base_url='https://x.example', api_key=set)"
    assert endpoint.proxy_settings is None


async def test_list_models_follows_pages() -> None:
    names = [f"claude-{i}" for i in range(1001)]
    async with (
        FakeAnthropicServer(api_key=KEY, models=names) as server,
        client_for(server) as client,
    ):
        models = await client.models.list()
    assert [m.id for m in models] == names
    first, second = server.requests
    assert (first.path, first.query) == ("/v1/models", {"limit": "1000"})
    assert second.query == {"limit": "1000", "after_id": "claude-999"}
    assert first.headers["x-api-key"] == KEY
    assert first.headers["anthropic-version"] == "2023-06-01"


async def test_list_models_rejects_a_page_without_data() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with chatkit.AsyncClient(provider=Anthropic(api_key=KEY, base_url=url)) as client:
            with pytest.raises(ResponseDecodeError):
                await client.models.list()
    finally:
        await runner.cleanup()
