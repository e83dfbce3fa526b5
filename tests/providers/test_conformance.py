"""One set of cases every provider goes through, async and sync.

Each provider plugs in with an ``Adapter``: its fake server (from
chatkit.testing), how to build the provider pointing at it, and how to read
the request it sent back into a neutral form (``Sent``), so the cases can
check "the system prompt was sent" without knowing where each vendor puts it.
Vendor-exact request assertions live in each provider's own test file.

To add a provider, write its ``Adapter`` and append it to ``ADAPTERS``.
A fake server must take ``Behavior`` like ``FakeOpenAIServer`` does (OpenAI
finish-reason names included) and accept ``api_key=``; the provider must
accept ``api_key=`` and ``base_url=`` and ignore ``stream_options``.

Every case runs twice: through ``chatkit.AsyncClient`` in the test's event
loop, and through the sync ``chatkit.Client`` from a worker thread (the fake
server keeps running in the test's loop meanwhile).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

import chatkit
from chatkit import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    ChatCompletionChunk,
    InternalServerError,
    MissingAuthError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterrupted,
)
from chatkit.providers import Anthropic, Gemini, Ollama, OpenAI
from chatkit.testing import (
    Behavior,
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOllamaServer,
    FakeOpenAIServer,
    RecordedRequest,
)

pytestmark = pytest.mark.anyio

KEY = "sk-conformance"
HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALLS = [
    {"id": "call_a", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    {"id": "call_b", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})},
]
_DATA_URL = re.compile(r"data:([^;]+);base64,(.*)")


# -- the neutral view of a request ---------------------------------------------


@dataclass
class Sent:
    """What a request asked for, whatever the vendor's wire format."""

    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    """``(role, text)`` of each user/assistant turn, in order."""
    images: list[tuple[str, str]] = field(default_factory=list)
    """``(media type, base64 data)`` of each inline image."""
    tools: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """``(name, arguments)`` of the assistant's earlier tool calls."""
    tool_results: list[str] = field(default_factory=list)
    stream: bool = False


def read_openai(request: RecordedRequest) -> Sent:
    body = request.json
    sent = Sent(stream=body.get("stream") is True)
    sent.tools = [tool["function"]["name"] for tool in body.get("tools", [])]
    for message in body["messages"]:
        role, content = message["role"], message.get("content")
        texts: list[str] = []
        parts: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        )
        for part in parts:
            if part["type"] == "text":
                texts.append(part["text"])
            elif part["type"] == "image_url":
                match = _DATA_URL.fullmatch(part["image_url"]["url"])
                assert match is not None
                sent.images.append((match[1], match[2]))
        text = "".join(texts)
        if role == "system":
            sent.system = text
        elif role == "tool":
            sent.tool_results.append(text)
        else:
            for call in message.get("tool_calls") or []:
                function = call["function"]
                sent.tool_calls.append((function["name"], json.loads(function["arguments"])))
            if text:
                sent.turns.append((role, text))
    return sent


def read_anthropic(request: RecordedRequest) -> Sent:
    body = request.json
    sent = Sent(stream=body.get("stream") is True)
    sent.tools = [tool["name"] for tool in body.get("tools", [])]
    system = body.get("system")
    if system is not None:
        sent.system = system if isinstance(system, str) else "".join(b["text"] for b in system)
    for message in body["messages"]:
        content = message["content"]
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        texts: list[str] = []
        for block in blocks:
            if block["type"] == "text":
                texts.append(block["text"])
            elif block["type"] == "image":
                source = block["source"]
                sent.images.append((source["media_type"], source["data"]))
            elif block["type"] == "tool_use":
                sent.tool_calls.append((block["name"], block["input"]))
            elif block["type"] == "tool_result":
                result = block["content"]
                sent.tool_results.append(
                    result if isinstance(result, str) else "".join(b["text"] for b in result)
                )
        if texts:
            sent.turns.append((message["role"], "".join(texts)))
    return sent


def read_gemini(request: RecordedRequest) -> Sent:
    body = request.json
    sent = Sent(stream=request.path.endswith(":streamGenerateContent"))
    sent.tools = [d["name"] for tool in body.get("tools", []) for d in tool["functionDeclarations"]]
    system = body.get("systemInstruction")
    if system is not None:
        sent.system = "".join(part["text"] for part in system["parts"])
    for content in body["contents"]:
        texts: list[str] = []
        for part in content["parts"]:
            if "text" in part and not part.get("thought"):
                texts.append(part["text"])
            elif "inlineData" in part:
                sent.images.append((part["inlineData"]["mimeType"], part["inlineData"]["data"]))
            elif "functionCall" in part:
                sent.tool_calls.append((part["functionCall"]["name"], part["functionCall"]["args"]))
            elif "functionResponse" in part:
                response = part["functionResponse"]["response"]
                sent.tool_results.append(response.get("result", json.dumps(response)))
        if texts:
            sent.turns.append(
                ("assistant" if content["role"] == "model" else "user", "".join(texts))
            )
    return sent


def _image_type(data: str) -> str:
    # Ollama sends bare base64: the media type is whatever the bytes say.
    head = base64.b64decode(data)[:8]
    return "image/png" if head.startswith(b"\x89PNG") else "application/octet-stream"


def read_ollama(request: RecordedRequest) -> Sent:
    body = request.json
    sent = Sent(stream=body.get("stream", True) is True)
    sent.tools = [tool["function"]["name"] for tool in body.get("tools", [])]
    for message in body["messages"]:
        role, text = message["role"], message.get("content", "")
        sent.images += [(_image_type(image), image) for image in message.get("images", [])]
        if role == "system":
            sent.system = text
        elif role == "tool":
            sent.tool_results.append(text)
        else:
            for call in message.get("tool_calls") or []:
                function = call["function"]
                sent.tool_calls.append((function["name"], function["arguments"]))
            if text:
                sent.turns.append((role, text))
    return sent


# -- adapters --------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """How the suite drives one provider against its fake server."""

    name: str
    server: Callable[..., Any]
    """``server(behavior, api_key=...)``: an unstarted fake server."""
    provider_class: type
    """Built as ``provider_class(api_key=..., base_url=server.base_url)``."""
    read: Callable[[RecordedRequest], Sent]
    key_env: str | None
    """The variable ``MissingAuthError`` names; None for providers without keys."""
    finish_reasons: tuple[str, ...] = ("stop", "length", "tool_calls", "content_filter")
    tool_call_ids: bool = True
    """Whether the vendor's wire format carries tool call ids."""
    argument_fragments: bool = True
    """Whether streamed tool-call arguments arrive in pieces (not whole calls)."""

    def __str__(self) -> str:
        return self.name


ADAPTERS = [
    Adapter("openai", FakeOpenAIServer, OpenAI, read_openai, "OPENAI_API_KEY"),
    Adapter("anthropic", FakeAnthropicServer, Anthropic, read_anthropic, "ANTHROPIC_API_KEY"),
    # Gemini and Ollama send whole calls without ids, and have no finish reason
    # for "tool_calls" without a call in the answer.
    Adapter(
        "gemini",
        FakeGeminiServer,
        Gemini,
        read_gemini,
        "GEMINI_API_KEY",
        finish_reasons=("stop", "length", "content_filter"),
        tool_call_ids=False,
        argument_fragments=False,
    ),
    Adapter(
        "ollama",
        FakeOllamaServer,
        Ollama,
        read_ollama,
        None,
        finish_reasons=("stop", "length"),
        tool_call_ids=False,
        argument_fragments=False,
    ),
]


# -- running a case async or sync --------------------------------------------------


@dataclass
class Streamed:
    chunks: list[ChatCompletionChunk]
    text: str
    final: ChatCompletion
    attempts: list[Any]


class Harness:
    """One provider, its running fake server, and a way to call it (async or sync)."""

    def __init__(self, adapter: Adapter, server: Any, mode: str) -> None:
        self.adapter = adapter
        self.server = server
        self.mode = mode

    @property
    def sent(self) -> Sent:
        return self.adapter.read(self.server.requests[-1])

    def provider(self, api_key: str = KEY) -> Any:
        return self.adapter.provider_class(api_key=api_key, base_url=self.server.base_url)

    async def complete(
        self, *, max_retries: int = 0, api_key: str = KEY, **create: Any
    ) -> ChatCompletion:
        create.setdefault("messages", HELLO)
        create.setdefault("model", "test-model")
        provider = self.provider(api_key)
        if self.mode == "async":
            async with chatkit.AsyncClient(provider=provider, max_retries=max_retries) as client:
                reply: ChatCompletion = await client.chat.completions.create(**create)
                return reply

        def run() -> ChatCompletion:
            with chatkit.Client(provider=provider, max_retries=max_retries) as client:
                result: ChatCompletion = client.chat.completions.create(**create)
                return result

        return await anyio.to_thread.run_sync(run)

    async def stream(self, *, max_retries: int = 0, **create: Any) -> Streamed:
        create.setdefault("messages", HELLO)
        create.setdefault("model", "test-model")
        provider = self.provider()
        if self.mode == "async":
            async with chatkit.AsyncClient(provider=provider, max_retries=max_retries) as client:
                async with client.chat.completions.create(stream=True, **create) as stream:
                    chunks = [chunk async for chunk in stream]
                return Streamed(chunks, stream.text, stream.get_final_completion(), stream.attempts)

        def run() -> Streamed:
            with chatkit.Client(provider=provider, max_retries=max_retries) as client:
                with client.chat.completions.create(stream=True, **create) as stream:
                    chunks = list(stream)
                return Streamed(chunks, stream.text, stream.get_final_completion(), stream.attempts)

        return await anyio.to_thread.run_sync(run)


@pytest.fixture(params=ADAPTERS, ids=str)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    found: Adapter = request.param
    return found


@pytest.fixture(params=["async", "sync"])
async def harness(request: pytest.FixtureRequest, adapter: Adapter) -> AsyncIterator[Harness]:
    mode: str = request.param
    if mode == "sync" and getattr(chatkit, "Client", None) is None:
        pytest.skip("chatkit.Client (chatkit/_sync.py) is not available yet")
    async with adapter.server(Behavior(), api_key=KEY) as server:
        yield Harness(adapter, server, mode)


# -- text --------------------------------------------------------------------------


async def test_plain_text(harness: Harness) -> None:
    reply = await harness.complete()
    assert reply.text == ANSWER
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.provider == harness.adapter.provider_class.name  # type: ignore[attr-defined]
    assert harness.sent.stream is False
    assert harness.sent.turns == [("user", "Hello")]


async def test_streamed_text(harness: Harness) -> None:
    result = await harness.stream()
    assert result.chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in result.chunks if c.text]) > 1  # really streamed, not one blob
    assert result.text == "".join(c.text for c in result.chunks) == ANSWER
    assert {c.provider for c in result.chunks} == {harness.adapter.provider_class.name}  # type: ignore[attr-defined]
    assert result.final.choices[0].finish_reason == "stop"
    assert harness.sent.stream is True


async def test_multi_turn(harness: Harness) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
    ]
    await harness.complete(messages=messages)
    assert harness.sent.turns == [
        ("user", "Hi"),
        ("assistant", "Hello there."),
        ("user", "How are you?"),
    ]


async def test_system_prompt(harness: Harness) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    await harness.stream(messages=messages)
    sent = harness.sent
    assert sent.system == "Be brief."
    assert sent.turns == [("user", "Hello")]


async def test_image_input_as_data_url(harness: Harness) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    await harness.complete(messages=[{"role": "user", "content": content}])
    sent = harness.sent
    assert sent.images == [("image/png", PNG)]
    assert sent.turns == [("user", "What is this?")]


# -- tools -----------------------------------------------------------------------


def check_tool_calls(adapter: Adapter, reply: ChatCompletion) -> None:
    message = reply.choices[0].message
    assert message.tool_calls is not None
    got = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert got == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    ids = [c.id for c in message.tool_calls]
    if adapter.tool_call_ids:
        assert ids == ["call_a", "call_b"]
    assert all(ids) and len(set(ids)) == 2
    assert reply.choices[0].finish_reason == "tool_calls"


async def test_tool_calls_streamed(harness: Harness) -> None:
    harness.server.default = Behavior(text="", tool_calls=CALLS)
    result = await harness.stream(tools=[TOOL])
    indexes = [
        call.index for chunk in result.chunks for call in chunk.choices[0].delta.tool_calls or []
    ]
    assert sorted(set(indexes)) == [0, 1]
    if harness.adapter.argument_fragments:
        assert len(indexes) > 2  # arguments arrive in fragments, merged by index
    check_tool_calls(harness.adapter, result.final)
    assert harness.sent.tools == ["get_weather"]


async def test_tool_calls_not_streamed(harness: Harness) -> None:
    harness.server.default = Behavior(text="", tool_calls=CALLS)
    reply = await harness.complete(tools=[TOOL], tool_choice="auto")
    check_tool_calls(harness.adapter, reply)
    assert harness.sent.tools == ["get_weather"]


async def test_tool_results_go_back(harness: Harness) -> None:
    call = {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": "18C, sunny"},
    ]
    await harness.complete(messages=messages, tools=[TOOL])
    sent = harness.sent
    assert sent.tool_calls == [("get_weather", {"city": "Paris"})]
    assert sent.tool_results == ["18C, sunny"]
    assert sent.turns == [("user", "Weather in Paris?")]


# -- usage, stop reasons -----------------------------------------------------------


def check_usage(usage: Any) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_usage(harness: Harness) -> None:
    check_usage((await harness.complete()).usage)
    streamed = await harness.stream(stream_options={"include_usage": True})
    check_usage(streamed.final.usage)


@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls", "content_filter"])
async def test_stop_reasons(harness: Harness, finish: str) -> None:
    if finish not in harness.adapter.finish_reasons:
        pytest.skip(f"{harness.adapter} cannot express finish_reason={finish!r}")
    harness.server.default = Behavior(finish_reason=finish)
    assert (await harness.complete()).choices[0].finish_reason == finish
    assert (await harness.stream()).final.choices[0].finish_reason == finish


# -- errors --------------------------------------------------------------------------

STATUS_ERRORS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    500: InternalServerError,
    529: OverloadedError,
}
RETRYABLE = {429, 500, 529}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("status", sorted(STATUS_ERRORS))
async def test_error_statuses(harness: Harness, status: int, stream: bool) -> None:
    harness.server.fail(1, status, retry_after=0)
    with pytest.raises(STATUS_ERRORS[status]) as caught:
        if stream:
            await harness.stream()
        else:
            await harness.complete()
    assert caught.value.status_code == status
    assert caught.value.provider == harness.adapter.provider_class.name  # type: ignore[attr-defined]
    # With a retry allowed, only the retryable statuses are tried again.
    harness.server.fail(1, status, retry_after=0)
    before = len(harness.server.requests)
    if status in RETRYABLE:
        reply = await harness.complete(max_retries=1)
        assert reply.text == ANSWER
        assert len(harness.server.requests) - before == 2
    else:
        with pytest.raises(STATUS_ERRORS[status]):
            await harness.complete(max_retries=1)
        assert len(harness.server.requests) - before == 1


async def test_error_event_before_content_is_retried(harness: Harness) -> None:
    harness.server.script(Behavior(error_event_after=0, error_event_type="overloaded_error"))
    result = await harness.stream(max_retries=1)
    assert result.text == ANSWER
    assert isinstance(result.attempts[0].error, APIStatusError)
    assert len(harness.server.requests) == 2


async def test_error_event_mid_stream(harness: Harness) -> None:
    harness.server.script(Behavior(error_event_after=2, error_event_type="overloaded_error"))
    with pytest.raises(StreamInterrupted) as caught:
        await harness.stream(max_retries=2)
    assert caught.value.partial_text == "Hello! How"
    assert isinstance(caught.value.cause, APIStatusError)
    assert len(harness.server.requests) == 1  # past the commit point: never retried


async def test_truncated_stream(harness: Harness) -> None:
    harness.server.script(Behavior(drop_after=3))
    with pytest.raises(StreamInterrupted) as caught:
        await harness.stream(max_retries=2)
    assert caught.value.partial_text == "Hello! How can"
    assert isinstance(caught.value.cause, APIConnectionError)
    assert len(harness.server.requests) == 1


async def test_stream_cut_before_content_is_retried(harness: Harness) -> None:
    harness.server.script(Behavior(drop_after=0))
    result = await harness.stream(max_retries=1)
    assert result.text == ANSWER
    assert isinstance(result.attempts[0].error, APIConnectionError)


async def test_bad_credentials(harness: Harness) -> None:
    if harness.adapter.key_env is None:
        pytest.skip(f"{harness.adapter} takes no API key")
    with pytest.raises(AuthenticationError) as caught:
        await harness.complete(api_key="sk-wrong-key", max_retries=2)
    assert "sk-wrong-key" not in str(caught.value)
    assert len(harness.server.requests) == 1


def test_missing_credentials_name_the_variable(adapter: Adapter) -> None:
    if adapter.key_env is None:
        pytest.skip(f"{adapter} takes no API key")
    with pytest.raises(MissingAuthError) as caught:
        adapter.provider_class()
    assert caught.value.env_var == adapter.key_env
    assert adapter.key_env in str(caught.value)
