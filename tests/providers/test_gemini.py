"""The Gemini provider: the exact requests it sends and how it reads the answers.

Requests are checked as the fake Gemini server recorded them (path, query,
headers and JSON body) against the Generative Language API format. Answers
come from that server, or from a small raw aiohttp server for responses the
fake does not produce (a blocked prompt, several finish reasons).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from _vendor_support import (
    ANSWER,
    HELLO,
    PNG,
    VendorCalls,
    fake_server_fixture,
    raw_server,
)
from _vendor_support import WEATHER_CALL as CALL
from _vendor_support import WEATHER_TOOL as WEATHER
from aiohttp import web

import chatkit
from chatkit import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    MissingAuthError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    StreamInterrupted,
    UnsupportedCapabilityError,
)
from chatkit.providers import DEFAULT_ORDER, PROVIDERS, Gemini, default_provider_class
from chatkit.testing import Behavior, FakeGeminiServer

pytestmark = pytest.mark.anyio

KEY = "AIza-test-key"


server = fake_server_fixture(FakeGeminiServer, api_key=KEY)
GEMINI = VendorCalls(Gemini, model="gemini-2.5-flash", api_key=KEY)
client_for = GEMINI.client_for
sent = GEMINI.sent
sent_body = GEMINI.sent_body
refused = GEMINI.refused
stream = GEMINI.stream


def sse_answer(*events: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
        return web.Response(body=body, content_type="text/event-stream")

    return handler


# -- configuration -------------------------------------------------------------


def test_picked_by_default_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing earlier in the default order may be configured in this environment.
    for earlier in DEFAULT_ORDER[: DEFAULT_ORDER.index("gemini")]:
        for variable in getattr(PROVIDERS.get(earlier), "api_key_env", ()):
            monkeypatch.delenv(variable, raising=False)
    assert default_provider_class() is not Gemini
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-env")
    assert default_provider_class() is Gemini


def test_registered_under_its_name() -> None:
    assert PROVIDERS["gemini"] is Gemini


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(MissingAuthError) as caught:
        Gemini()
    assert caught.value.env_var == "GEMINI_API_KEY"
    assert "GEMINI_API_KEY" in str(caught.value)


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-google-secret")
    assert Gemini()._api_key == "AIza-google-secret"
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-gemini-secret")
    provider = Gemini()
    assert provider._api_key == "AIza-gemini-secret"  # GEMINI_API_KEY comes first
    assert provider.base_url == "https://generativelanguage.googleapis.com"
    assert "secret" not in repr(provider)
    assert repr(provider) == (
        "Gemini(base_url='https://generativelanguage.googleapis.com', api_key=set)"
    )


async def test_key_travels_in_a_header_never_in_the_url(server: FakeGeminiServer) -> None:
    request = await sent(server)
    assert request.method == "POST"
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.query == {}
    assert request.headers["x-goog-api-key"] == KEY
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert "authorization" not in request.headers


async def test_streamed_request_uses_sse(server: FakeGeminiServer) -> None:
    await stream(server)
    request = server.requests[-1]
    assert request.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert request.query == {"alt": "sse"}
    assert request.headers["Accept"] == "text/event-stream"
    assert request.headers["x-goog-api-key"] == KEY


async def test_a_gateway_base_url_needs_no_key() -> None:
    async with FakeGeminiServer() as server:
        async with chatkit.AsyncClient(provider=Gemini(base_url=server.base_url)) as client:
            reply = await client.chat.completions.create(model="m", messages=HELLO)
        assert reply.text == ANSWER
        assert "x-goog-api-key" not in server.requests[-1].headers


async def test_model_names_and_api_version(server: FakeGeminiServer) -> None:
    async with client_for(server, default_model="gemini-2.5-pro", api_version="/v1/") as client:
        await client.chat.completions.create(model="", messages=HELLO)
        await client.chat.completions.create(model="models/gemini-x", messages=HELLO)
    assert [r.path for r in server.requests] == [
        "/v1/models/gemini-2.5-pro:generateContent",
        "/v1/models/gemini-x:generateContent",
    ]


async def test_headers_query_and_extra_body(server: FakeGeminiServer) -> None:
    async with client_for(server, default_headers={"x-team": "a"}) as client:
        await client.chat.completions.create(
            model="gemini-2.5-flash",
            messages=HELLO,
            temperature=0.2,
            extra_headers={"x-trace": "t1"},
            extra_query={"trace": "1"},
            extra_body={
                "generationConfig": {"topK": 5},
                "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT"}],
            },
        )
    request = server.requests[-1]
    assert request.headers["x-team"] == "a" and request.headers["x-trace"] == "t1"
    assert request.query == {"trace": "1"}
    body = request.json
    assert body["generationConfig"] == {"temperature": 0.2, "topK": 5}
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT"}]


def test_proxy_settings_keep_their_password_to_themselves() -> None:
    provider = Gemini(api_key=KEY, proxy="socks5://user:hunter2@127.0.0.1:1080")
    assert provider.proxy_settings is not None
    assert "hunter2" not in repr(provider.proxy_settings)
    assert Gemini(api_key=KEY).proxy_settings is None


# -- request translation ---------------------------------------------------------


async def test_conversation_and_generation_config(server: FakeGeminiServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
    ]
    body = await sent_body(
        server,
        messages=messages,
        temperature=0.5,
        top_p=0.9,
        max_tokens=64,
        stop="END",
        seed=7,
        n=1,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="u-1",
        store=False,
        metadata={"a": "b"},
    )
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello."}]},
            {"role": "user", "parts": [{"text": "Weather?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric units."}]},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "seed": 7,
            "candidateCount": 1,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.2,
            "maxOutputTokens": 64,
            "stopSequences": ["END"],
        },
    }


async def test_max_completion_tokens_and_stop_list(server: FakeGeminiServer) -> None:
    body = await sent_body(server, max_completion_tokens=10, stop=["a", "b"])
    assert body["generationConfig"] == {"maxOutputTokens": 10, "stopSequences": ["a", "b"]}
    assert "generationConfig" not in await sent_body(server)


async def test_media_parts(server: FakeGeminiServer) -> None:
    content = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=1"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    body = await sent_body(server, messages=[{"role": "user", "content": content}])
    assert body["contents"][0]["parts"] == [
        {"text": "What are these?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://example.com/render?id=1"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
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
    ],
)
async def test_media_refused_before_io(
    server: FakeGeminiServer, part: dict[str, Any], error: type[Exception], field: str
) -> None:
    caught = await refused(server, error, messages=[{"role": "user", "content": [part]}])
    assert getattr(caught, "field", None) == field


async def test_only_a_system_prompt_is_refused(server: FakeGeminiServer) -> None:
    caught = await refused(
        server, InvalidRequestError, messages=[{"role": "system", "content": "Be brief."}]
    )
    assert "messages" in str(caught)


async def test_tools_and_tool_choice(server: FakeGeminiServer) -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    body = await sent_body(server, tools=[WEATHER, bare], tool_choice="required")
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parametersJsonSchema": WEATHER["function"]["parameters"],
                },
                {"name": "now"},
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    for choice, config in [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ]:
        body = await sent_body(server, tools=[WEATHER], tool_choice=choice)
        assert body["toolConfig"] == {"functionCallingConfig": config}


async def test_bad_tools_are_refused(server: FakeGeminiServer) -> None:
    await refused(server, InvalidRequestError, tools=[WEATHER], tool_choice="sometimes")
    caught = await refused(server, UnsupportedCapabilityError, tools=[{"type": "web_search"}])
    assert getattr(caught, "field", None) == "tools[0]"


async def test_tool_calls_and_results_go_back(server: FakeGeminiServer) -> None:
    second = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_time", "arguments": ""},
    }
    messages = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "function", "name": "get_weather", "content": "[1, 2]"},
    ]
    body = await sent_body(server, messages=messages, tools=[WEATHER])
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me look."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": [1, 2]}}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (
            [*HELLO, {"role": "tool", "tool_call_id": "call_unknown", "content": "x"}],
            "messages[1].tool_call_id",
        ),
        ([*HELLO, {"role": "function", "content": "x"}], "messages[1].name"),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
async def test_untranslatable_tool_history_is_refused(
    server: FakeGeminiServer, messages: list[dict[str, Any]], field: str
) -> None:
    caught = await refused(server, InvalidRequestError, messages=messages)
    assert getattr(caught, "field", None) == field


def history(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
    ]


async def test_thought_signatures_go_back(server: FakeGeminiServer) -> None:
    signed = {**CALL, "extra_content": {"google": {"thought_signature": "c2ln"}}}
    body = await sent_body(server, messages=history(signed))
    parts = body["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == ["c2ln", "c2ln"]
    # Gemini 3 rejects a replayed call without one: the first call of the step
    # gets the documented sentinel; earlier generations get nothing.
    body = await sent_body(server, messages=history(CALL), model="gemini-3-pro-preview")
    parts = body["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == ["skip_thought_signature_validator", None]
    body = await sent_body(server, messages=history(CALL))
    assert all("thoughtSignature" not in p for p in body["contents"][1]["parts"])


async def test_response_formats(server: FakeGeminiServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "$defs": {}}
    body = await sent_body(server, response_format={"type": "json_object"})
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    body = await sent_body(
        server,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    assert "generationConfig" not in await sent_body(server, response_format={"type": "text"})
    await refused(server, InvalidRequestError, response_format={"type": "json_schema"})
    await refused(server, InvalidRequestError, response_format={"type": "yaml"})


async def test_reasoning_effort(server: FakeGeminiServer) -> None:
    body = await sent_body(server, reasoning_effort="medium")
    assert body["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True}
    }
    body = await sent_body(server, reasoning_effort="high", model="gemini-3-flash")
    assert body["generationConfig"] == {
        "thinkingConfig": {"thinkingLevel": "high", "includeThoughts": True}
    }
    body = await sent_body(server, reasoning_effort="none")
    assert body["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 0}}
    caught = await refused(server, InvalidRequestError, reasoning_effort="max")
    assert getattr(caught, "field", None) == "reasoning_effort"


async def test_unsupported_parameters_fail_before_io(server: FakeGeminiServer) -> None:
    caught = await refused(server, UnsupportedCapabilityError, logprobs=True)
    assert getattr(caught, "field", None) == "logprobs"
    await refused(server, UnsupportedCapabilityError, modalities=["text", "audio"])
    # Asking for nothing unsupported is fine.
    body = await sent_body(server, logprobs=False, modalities=["text"], parallel_tool_calls=False)
    assert set(body) == {"contents"}


# -- answers ---------------------------------------------------------------------


async def test_streamed_answer(server: FakeGeminiServer) -> None:
    server.default = Behavior(reasoning=["Let me think.", " Done."])
    result = await stream(server)
    chunks = result.chunks  # type: ignore[attr-defined]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.reasoning_content == "Let me think."
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert result.text == ANSWER
    assert len([c for c in chunks if c.text]) == 7
    assert {c.id for c in chunks} == {"fake-response-1"}
    assert {c.model for c in chunks} == {"gemini-2.5-flash"}
    final = result.get_final_completion()
    assert final.choices[0].message.reasoning_content == "Let me think. Done."
    assert final.choices[0].finish_reason == "stop"
    # Usage rides on the finishing chunk; thoughts count as completion tokens.
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert final.usage is not None
    assert final.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 1,
        "completion_tokens": 9,
        "total_tokens": 10,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


async def test_non_streamed_answer(server: FakeGeminiServer) -> None:
    server.default = Behavior(reasoning=["Hmm."])
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert reply.text == ANSWER
    assert reply.choices[0].message.reasoning_content == "Hmm."
    assert reply.provider == "Gemini"
    assert reply.id == "fake-response-1"
    assert reply.usage is not None and reply.usage.total_tokens == 9  # 1 + 7 + 1 thought


async def test_several_candidates(server: FakeGeminiServer) -> None:
    result = await stream(server, n=2)
    final = result.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1]
    assert [c.message.content for c in final.choices] == [ANSWER, ANSWER]
    assert server.requests[-1].json["generationConfig"] == {"candidateCount": 2}


async def test_tool_calls_in_answers(server: FakeGeminiServer) -> None:
    calls = [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"name": "get_time", "arguments": ""},
    ]
    server.default = Behavior(text="", tool_calls=calls)
    result = await stream(server, tools=[WEATHER])
    chunks = result.chunks  # type: ignore[attr-defined]
    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "get_time", "{}"),
    ]
    # Gemini sends no ids: each call gets a unique one to answer with.
    assert all(d.id and d.id.startswith("call_") for d in deltas)
    assert deltas[0].id != deltas[1].id
    signature = deltas[0].model_extra
    assert signature == {
        "extra_content": {"google": {"thought_signature": "ZmFrZS1zaWduYXR1cmUtMQ=="}}
    }
    final = result.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None
    # The assembled completion keeps the signature, so a streamed tool loop
    # can send it back like a non-streamed one.
    final_calls = final.choices[0].message.tool_calls
    assert final_calls is not None and final_calls[0].model_extra == signature
    assert final_calls[1].model_extra == {}

    async with client_for(server) as client:
        reply = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=HELLO, tools=[WEATHER]
        )
    calls_back = reply.choices[0].message.tool_calls
    assert calls_back is not None and len(calls_back) == 2
    assert calls_back[0].model_extra == {
        "extra_content": {"google": {"thought_signature": "ZmFrZS1zaWduYXR1cmUtMg=="}}
    }
    assert calls_back[1].model_extra == {}
    # The completion's message goes straight back into the history.
    history = [*HELLO, reply.choices[0].message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in calls_back]
    body = await sent_body(server, messages=history)
    model_parts = body["contents"][1]["parts"]
    assert model_parts[0]["thoughtSignature"] == "ZmFrZS1zaWduYXR1cmUtMg=="
    assert [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]] == [
        "get_weather",
        "get_time",
    ]


@pytest.mark.parametrize(
    ("gemini", "openai"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "malformed_function_call"),
        ("OTHER", "other"),
    ],
)
async def test_finish_reasons(server: FakeGeminiServer, gemini: str, openai: str) -> None:
    server.default = Behavior(finish_reason=gemini)
    assert (await stream(server)).finish_reason == openai
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert reply.choices[0].finish_reason == openai


async def test_blocked_prompt() -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
        "modelVersion": "gemini-2.5-flash",
    }
    async with raw_server(sse_answer(blocked)) as url:
        result = await stream(url)
    assert result.text == ""
    assert result.finish_reason == "content_filter"
    assert result.usage is not None and result.usage.prompt_tokens == 4


async def test_parts_without_text_and_empty_events_are_skipped() -> None:
    events: list[dict[str, Any]] = [
        {"candidates": [{"content": {"parts": [{"executableCode": {"code": "1"}}]}}]},
        {"usageMetadata": {"promptTokenCount": 1}},
        {
            "candidates": [
                {"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP"}
            ],
            "usageMetadata": {
                "promptTokenCount": 1,
                "candidatesTokenCount": 1,
                "cachedContentTokenCount": 1,
            },
        },
    ]
    async with raw_server(sse_answer(*events)) as url:
        result = await stream(url)
    assert [c.text for c in result.chunks] == ["Hi"]  # type: ignore[attr-defined]
    assert result.usage is not None
    assert result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 1
    assert result.usage.total_tokens == 2


async def test_models_list_pages_and_skips_non_chat_models() -> None:
    names = [f"gemini-{i}" for i in range(1001)] + ["gemini-embedding-001"]
    async with (
        FakeGeminiServer(api_key=KEY, models=names) as server,
        client_for(server) as client,
    ):
        models = await client.models.list()
    assert [m.id for m in models] == names[:-1]
    assert models[0].provider == "Gemini"
    assert models[0].owned_by == "google"
    assert models[0].model_extra is not None and models[0].model_extra["inputTokenLimit"] == 1048576
    assert [r.query for r in server.requests] == [
        {"pageSize": "1000"},
        {"pageSize": "1000", "pageToken": "1000"},
    ]
    assert server.requests[0].path == "/v1beta/models"
    assert server.requests[0].headers["x-goog-api-key"] == KEY


async def test_models_list_must_be_an_object() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response([1, 2])

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(ResponseDecodeError):
            await client.models.list()


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "google_status"),
    [
        (400, BadRequestError, "INVALID_ARGUMENT"),
        (403, PermissionDeniedError, "PERMISSION_DENIED"),
        (404, NotFoundError, "NOT_FOUND"),
        (429, RateLimitError, "RESOURCE_EXHAUSTED"),
        (500, InternalServerError, "INTERNAL"),
        (503, InternalServerError, "UNAVAILABLE"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_error_statuses(
    server: FakeGeminiServer,
    status: int,
    error: type[Exception],
    google_status: str,
    streamed: bool,
) -> None:
    server.fail(1, status)
    with pytest.raises(error) as caught:
        if streamed:
            await stream(server)
        else:
            await sent(server)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.body["status"] == google_status  # type: ignore[attr-defined]
    assert caught.value.provider == "Gemini"  # type: ignore[attr-defined]
    assert f"Fake error: HTTP {status}." in str(caught.value)


async def test_rate_limit_waits_as_the_body_says(server: FakeGeminiServer) -> None:
    server.fail(1, 429, retry_after=0.05)
    with pytest.raises(RateLimitError) as caught:
        await sent(server)
    assert caught.value.headers["retry-after"] == "0.05"
    server.fail(1, 429, retry_after_ms=10)
    async with client_for(server, max_retries=1) as client:
        reply = await client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert reply.text == ANSWER
    assert reply.attempts[0].delay == pytest.approx(0.01)


async def test_a_retry_after_header_wins_over_the_body(server: FakeGeminiServer) -> None:
    server.script(Behavior(status=503, retry_after=9, headers={"Retry-After": "0"}))
    with pytest.raises(InternalServerError) as caught:
        await sent(server)
    assert caught.value.headers["Retry-After"] == "0"
    assert "retry-after" not in caught.value.headers


async def test_bad_key_is_an_authentication_error(server: FakeGeminiServer) -> None:
    async with client_for(server, api_key="AIza-wrong-secret", max_retries=2) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert caught.value.status_code == 400  # what Google sends for a bad key
    assert "API key not valid" in str(caught.value)
    assert "AIza-wrong-secret" not in str(caught.value)
    assert len(server.requests) == 1  # not retried


async def test_no_key_against_a_keyed_server_is_permission_denied(
    server: FakeGeminiServer,
) -> None:
    async with chatkit.AsyncClient(provider=Gemini(base_url=server.base_url)) as client:
        with pytest.raises(PermissionDeniedError, match="unregistered callers"):
            await client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)


async def test_error_event_mid_stream(server: FakeGeminiServer) -> None:
    server.script(Behavior(error_event_after=2, error_event_type="UNAVAILABLE"))
    with pytest.raises(StreamInterrupted) as caught:
        await stream(server, max_retries=2)
    assert caught.value.partial_text == "Hello! How"
    cause = caught.value.cause
    assert isinstance(cause, InternalServerError) and cause.status_code == 503
    assert len(server.requests) == 1


async def test_error_event_before_content_is_retried(server: FakeGeminiServer) -> None:
    server.script(Behavior(error_event_after=0, error_event_type="rate_limit_error"))
    result = await stream(server, max_retries=1)
    assert result.text == ANSWER
    assert isinstance(result.attempts[0].error, RateLimitError)


async def test_stream_ending_without_a_finish_reason(server: FakeGeminiServer) -> None:
    server.script(Behavior(done=False))
    with pytest.raises(StreamInterrupted) as caught:
        await stream(server, max_retries=2)
    assert caught.value.partial_text == ANSWER
    assert "finishReason" in str(caught.value)
    assert len(server.requests) == 1


async def test_empty_stream_is_retried(server: FakeGeminiServer) -> None:
    server.script(Behavior(text="", done=False))
    result = await stream(server, max_retries=1)
    assert result.text == ANSWER
    # A stream that ends early is a plain connection failure from the provider.
    error = result.attempts[0].error
    assert isinstance(error, APIConnectionError)
    assert not isinstance(error, StreamInterrupted)
    assert "ended early" in str(error)


async def test_malformed_events(server: FakeGeminiServer) -> None:
    server.script(Behavior(malformed_after=0))
    with pytest.raises(ResponseDecodeError):
        await stream(server)
    async with raw_server(sse_answer([1, 2])) as url:  # type: ignore[arg-type]
        with pytest.raises(ResponseDecodeError, match="not a JSON object"):
            await stream(url)


@pytest.mark.parametrize(
    ("behavior", "error"),
    [
        (Behavior(malformed_after=0), ResponseDecodeError),
        (Behavior(drop_after=0), APIConnectionError),
        (Behavior(error_event_after=0, error_event_type="overloaded_error"), InternalServerError),
    ],
)
async def test_non_streamed_faults(
    server: FakeGeminiServer, behavior: Behavior, error: type[Exception]
) -> None:
    server.script(behavior)
    with pytest.raises(error):
        await sent(server)


async def test_error_body_in_a_200_answer() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 429, "message": "slow down"}})

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(RateLimitError, match="slow down"):
            await client.chat.completions.create(model="m", messages=HELLO)


# -- the sync client -------------------------------------------------------------


def test_sync_client_streams() -> None:
    client_class = getattr(chatkit, "Client", None)
    if client_class is None:
        pytest.skip("chatkit.Client (chatkit/_sync.py) is not available yet")
    with FakeGeminiServer(api_key=KEY).run_in_thread() as server:
        provider = Gemini(api_key=KEY, base_url=server.base_url)
        with client_class(provider=provider, max_retries=0) as client:
            with client.chat.completions.create(
                model="gemini-2.5-flash", messages=HELLO, stream=True
            ) as result:
                pieces = [chunk.text for chunk in result]
            reply = client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO)
    assert "".join(pieces) == ANSWER == reply.text
    assert [r.path.rsplit(":", 1)[1] for r in server.requests] == [
        "streamGenerateContent",
        "generateContent",
    ]


# -- provider edge cases -------------------------------------------------------------


async def test_empty_parts_and_system_messages_are_dropped(server: FakeGeminiServer) -> None:
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Hi"}]},
    ]
    body = await sent_body(server, messages=messages)
    assert body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_arguments_that_are_not_json_are_refused(server: FakeGeminiServer) -> None:
    call = {**CALL, "function": {"name": "f", "arguments": "{not json"}}
    messages = [*HELLO, {"role": "assistant", "tool_calls": [call]}]
    await refused(server, InvalidRequestError, messages=messages)


async def test_answer_without_candidates() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"usageMetadata": {"promptTokenCount": 2}})

    async with raw_server(handler) as url, client_for(url) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    assert reply.text == ""
    assert reply.choices[0].finish_reason is None


async def test_model_pages_are_bounded_and_junk_is_skipped() -> None:
    pages = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal pages
        pages += 1
        models = [{"name": f"models/m{pages}"}, {"displayName": "no name"}, "junk"]
        return web.json_response({"models": models, "nextPageToken": "again"})

    async with raw_server(handler) as url, client_for(url) as client:
        models = await client.models.list()
    assert pages == 100  # a server that never stops paging is not followed forever
    assert [m.id for m in models[:2]] == ["m1", "m2"]


# -- the fake server on the wire ----------------------------------------------------


@asynccontextmanager
async def raw_client(server: FakeGeminiServer) -> AsyncIterator[Any]:
    import aiohttp

    async with aiohttp.ClientSession(
        base_url=server.base_url, headers={"x-goog-api-key": KEY}
    ) as session:
        yield session


GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Expected an object"),
        ({"contents": HELLO, "messages": []}, "Unknown name 'messages'"),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 5}},
            "Unknown name 'max_tokens' at 'generation_config'",
        ),
        ({}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
        (
            {"contents": [{"parts": [{"text": "x", "inlineData": {}}]}]},
            "contents[0].parts[0].data: required oneof",
        ),
    ],
)
async def test_fake_server_refuses_what_gemini_refuses(
    server: FakeGeminiServer, body: Any, message: str
) -> None:
    async with raw_client(server) as session, session.post(GENERATE, json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"]


async def test_fake_server_plumbing(server: FakeGeminiServer) -> None:
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    async with raw_client(server) as session:
        async with session.post(GENERATE, data=b"{") as response:
            assert response.status == 400
        async with session.post("/v1beta/models/gemini-2.5-flash:embedContent", json=body) as r:
            assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
        async with session.post("/v1beta/models/gemini-2.5-flash:countTokens", json=body) as r:
            assert (r.status, await r.json()) == (200, {"totalTokens": 1})
        async with session.post("/v1beta/models/gemini-2.5-flash:countTokens", json={}) as r:
            assert r.status == 400
        headers = {"x-fake-behavior": '{"nonsense": 1}'}
        async with session.post(GENERATE, json=body, headers=headers) as response:
            assert response.status == 400
        async with session.get("/v1beta/models", params={"pageSize": "x"}) as response:
            assert response.status == 400
        async with session.get("/health") as response:
            assert await response.text() == "ok"
        # The key may also come as ?key=, as Google accepts it.
        url = f"{server.base_url}{GENERATE}?key={KEY}"
        async with session.post(url, json=body, headers={"x-goog-api-key": ""}) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["candidates"][0]["content"]["parts"] == [{"text": ANSWER}]
    assert answer["candidates"][0]["finishReason"] == "STOP"
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()


async def test_fake_server_needs_the_key_for_models_too(server: FakeGeminiServer) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.base_url}/v1beta/models") as response,
    ):
        assert response.status == 403


async def test_fake_server_port_in_use(server: FakeGeminiServer) -> None:
    with pytest.raises(OSError):
        await FakeGeminiServer(port=server.port).start()


async def test_fake_server_stalls_and_trickles(server: FakeGeminiServer) -> None:
    server.script(Behavior(stall_after=1, stall_seconds=0.2, trickle=0.05, text="a b"))
    async with (
        raw_client(server) as session,
        session.post(
            "/v1beta/models/m:streamGenerateContent",
            params={"alt": "sse"},
            json={"contents": [{"parts": [{"text": "Hi"}]}]},
        ) as response,
    ):
        raw = await response.read()
    assert b": keep-alive" in raw
    assert raw.count(b"data: ") == 3  # two pieces and the finishing event
    assert raw.endswith(b"\r\n\r\n")


async def test_fake_server_notices_a_client_that_leaves(server: FakeGeminiServer) -> None:
    server.script(Behavior(stall_after=1, stall_seconds=30))
    async with client_for(server) as client:
        result = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        assert (await result.__anext__()).text == "Hello!"
        await result.aclose()
    assert await server.wait_for_disconnects(1)


async def test_fake_server_resets_and_stalls_whole_answers(server: FakeGeminiServer) -> None:
    server.script(Behavior(reset=True), Behavior(stall_after=0, stall_seconds=0.01))
    with pytest.raises(APIConnectionError):
        await sent(server)
    assert (await sent(server)).path == GENERATE


async def test_fake_server_tool_arguments_that_are_not_json(server: FakeGeminiServer) -> None:
    server.script(Behavior(text="", tool_calls=[{"name": "f", "arguments": "{oops"}]))
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model="m", messages=HELLO)
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.arguments == "{}"
