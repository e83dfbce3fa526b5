"""Issue 11, the stream and retry layers: choice 0 only, refusals and logprobs
assembled, typed usage details, error fields and attempts, Retry-After that is
not a number, a closed client never retried, one copy of the streamed text.

Upstreams are real aiohttp servers on 127.0.0.1 writing exact SSE bytes.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from aiohttp import web

import chatkit
from chatkit import (
    APIConnectionError,
    ClientClosedError,
    CompletionTokensDetails,
    PromptTokensDetails,
    RetryPolicy,
    RetryProvider,
    StreamInterrupted,
    Timeout,
)
from chatkit._errors import error_from_status
from chatkit._types import ChatCompletion, ChatCompletionChunk, ChoiceDelta, ChunkChoice
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk_payload(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": list(choices),
    } | extra


@asynccontextmanager
async def sse_server(
    frames: list[bytes], *, cut: bool = False, status: int = 200, body: bytes | None = None
) -> AsyncIterator[str]:
    """Serve ``frames`` as one event stream on every POST; ``cut`` drops the
    connection after them (a truncated body); yield the base URL."""
    requests: list[Any] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        requests.append(await request.json())
        if status != 200:
            return web.Response(status=status, body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in frames:
            await response.write(data)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def client_for(base_url: str, **options: Any) -> chatkit.AsyncClient:
    options.setdefault("max_retries", 0)
    return chatkit.AsyncClient(base_url=base_url, api_key="sk-test", **options)


# -- item 4: with n > 1, text follows choice 0 only -------------------------------

INTERLEAVED = [
    frame(
        chunk_payload(
            {"index": 0, "delta": {"role": "assistant"}},
            {"index": 1, "delta": {"role": "assistant"}},
        )
    ),
    frame(
        chunk_payload(
            {"index": 1, "delta": {"content": "B1 "}}, {"index": 0, "delta": {"content": "A1 "}}
        )
    ),
    frame(chunk_payload({"index": 1, "delta": {"content": "B2 "}})),
    frame(chunk_payload({"index": 0, "delta": {"content": "A2"}})),
]


async def test_chunk_text_and_partial_text_follow_choice_zero() -> None:
    async with sse_server(INTERLEAVED, cut=True) as url, client_for(url) as client:
        stream = client.chat.completions.create(messages=MESSAGES, n=2, stream=True)
        seen = []
        with pytest.raises(StreamInterrupted) as caught:
            async for chunk in stream:
                seen.append(chunk.text)
    assert seen == ["", "A1 ", "", "A2"]
    assert caught.value.partial_text == "A1 A2"
    assert stream.text == "A1 A2"


@contextmanager
def sse_server_in_thread(frames: list[bytes], **options: Any) -> Iterator[str]:
    """``sse_server`` on a loop of its own, for the sync client."""
    ready: queue.Queue[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = queue.Queue()

    async def main() -> None:
        stop = asyncio.Event()
        async with sse_server(frames, **options) as url:
            ready.put((url, asyncio.get_running_loop(), stop))
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    url, loop, stop = ready.get(timeout=10)
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_sync_partial_text_follows_choice_zero() -> None:
    with (
        sse_server_in_thread(INTERLEAVED, cut=True) as url,
        chatkit.Client(base_url=url, api_key="sk-test", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(messages=MESSAGES, n=2, stream=True)
        with pytest.raises(StreamInterrupted) as caught:
            for _ in stream:
                pass
    assert caught.value.partial_text == "A1 A2"
    assert stream.text == "A1 A2"


def test_completion_text_is_choice_zero_whatever_the_order() -> None:
    completion = ChatCompletion.model_validate(
        {
            "choices": [
                {"index": 1, "message": {"role": "assistant", "content": "second"}},
                {"index": 0, "message": {"role": "assistant", "content": "first"}},
            ]
        }
    )
    assert completion.text == "first"


# -- item 5: refusals and logprobs -------------------------------------------------


async def test_refusal_only_stream_assembles_content_none() -> None:
    frames = [
        frame(chunk_payload({"index": 0, "delta": {"role": "assistant", "content": None}})),
        frame(chunk_payload({"index": 0, "delta": {"refusal": "I can't "}})),
        frame(chunk_payload({"index": 0, "delta": {"refusal": "help with that."}})),
        frame(chunk_payload({"index": 0, "delta": {}, "finish_reason": "stop"})),
        b"data: [DONE]\n\n",
    ]
    async with sse_server(frames) as url, client_for(url) as client:
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        completion = await stream.until_done()
    message = completion.choices[0].message
    assert message.content is None
    assert message.refusal == "I can't help with that."


async def test_empty_answer_still_assembles_empty_content() -> None:
    frames = [
        frame(chunk_payload({"index": 0, "delta": {"role": "assistant"}})),
        frame(chunk_payload({"index": 0, "delta": {}, "finish_reason": "stop"})),
        b"data: [DONE]\n\n",
    ]
    async with sse_server(frames) as url, client_for(url) as client:
        completion = await client.chat.completions.create(
            messages=MESSAGES, stream=True
        ).until_done()
    assert completion.choices[0].message.content == ""


def token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}


async def test_streamed_logprobs_are_assembled() -> None:
    frames = [
        frame(chunk_payload({"index": 0, "delta": {"role": "assistant"}, "logprobs": None})),
        frame(
            chunk_payload(
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {"content": [token("Hi", -0.1)]},
                }
            )
        ),
        frame(
            chunk_payload(
                {
                    "index": 0,
                    "delta": {"content": " there"},
                    "logprobs": {"content": [token(" there", -0.5)], "refusal": None},
                }
            )
        ),
        frame(chunk_payload({"index": 0, "delta": {}, "finish_reason": "stop"})),
        b"data: [DONE]\n\n",
    ]
    async with sse_server(frames) as url, client_for(url) as client:
        completion = await client.chat.completions.create(
            messages=MESSAGES, logprobs=True, stream=True
        ).until_done()
    logprobs = completion.choices[0].logprobs
    assert logprobs == {"content": [token("Hi", -0.1), token(" there", -0.5)]}


# -- item 7: typed usage details ---------------------------------------------------


async def test_usage_details_are_typed() -> None:
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 9,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0},
    }
    frames = [
        frame(chunk_payload({"index": 0, "delta": {"role": "assistant", "content": "ok"}})),
        frame(chunk_payload({"index": 0, "delta": {}, "finish_reason": "stop"})),
        frame(chunk_payload(usage=usage) | {"choices": []}),
        b"data: [DONE]\n\n",
    ]
    async with sse_server(frames) as url, client_for(url) as client:
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        await stream.until_done()
    assert stream.usage is not None
    prompt, completion = stream.usage.prompt_tokens_details, stream.usage.completion_tokens_details
    assert isinstance(prompt, PromptTokensDetails)
    assert isinstance(completion, CompletionTokensDetails)
    assert (prompt.cached_tokens, completion.reasoning_tokens) == (16, 4)
    assert completion.accepted_prediction_tokens is None


# -- item 8: error fields and attempts ---------------------------------------------


async def test_status_errors_carry_code_param_and_type() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "Invalid value for 'temperature'",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        }
    ).encode()
    async with sse_server([], status=400, body=body) as url, client_for(url) as client:
        with pytest.raises(chatkit.BadRequestError) as caught:
            await client.chat.completions.create(messages=MESSAGES)
    error = caught.value
    assert (error.code, error.param, error.type) == (
        "invalid_value",
        "temperature",
        "invalid_request_error",
    )
    assert isinstance(error, chatkit.OpenAIError)


def test_status_error_without_those_fields_has_none() -> None:
    error = error_from_status(502, b"<html>bad gateway</html>")
    assert (error.code, error.param, error.type) == (None, None, None)


def test_deeply_nested_error_body_is_still_a_status_error() -> None:
    error = error_from_status(500, b"[" * 100_000)
    assert isinstance(error, chatkit.InternalServerError)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as running:
        yield running


@pytest.mark.parametrize("stream", [False, True])
async def test_plain_client_retries_are_on_the_final_error(
    server: FakeOpenAIServer, stream: bool
) -> None:
    server.fail(3, 503, retry_after_ms=1)
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", max_retries=2) as client:
        with pytest.raises(chatkit.InternalServerError) as caught:
            if stream:
                await client.chat.completions.create(messages=MESSAGES, stream=True)
            else:
                await client.chat.completions.create(messages=MESSAGES)
    assert [a.status_code for a in caught.value.attempts] == [503, 503, 503]


async def test_stream_interrupted_carries_attempts_and_a_connection_cause(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(status=503, retry_after_ms=1), Behavior(drop_after=2))
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", max_retries=2) as client:
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        with pytest.raises(StreamInterrupted) as caught:
            async for _ in stream:
                pass
    error = caught.value
    assert [a.status_code for a in error.attempts] == [503, None]
    assert isinstance(error.cause, APIConnectionError)
    assert not isinstance(error.cause, StreamInterrupted)
    assert error.partial_text == stream.text != ""


class SelfInterrupting:
    """A third-party provider that raises StreamInterrupted itself, without a cause."""

    name = "SelfInterrupting"

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        yield ChatCompletionChunk(choices=[ChunkChoice(delta=ChoiceDelta(content="Hel"))])
        raise StreamInterrupted("SelfInterrupting: the stream ended before its end")


async def test_a_provider_raising_stream_interrupted_is_not_nested() -> None:
    async with chatkit.AsyncClient(SelfInterrupting(), max_retries=0) as client:
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        with pytest.raises(StreamInterrupted) as caught:
            async for _ in stream:
                pass
    assert type(caught.value.cause) is APIConnectionError
    assert caught.value.partial_text == "Hel"
    assert len(caught.value.attempts) == 1


# -- item 21: Retry-After that is not a finite number ------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
def test_non_finite_retry_after_is_no_hint(header: str, value: str) -> None:
    error = error_from_status(429, b"{}", {header: value})
    policy = RetryPolicy(backoff_base=0.01, backoff_max=0.01)
    assert policy.retry_after(error) is None
    delay = policy.delay(error, 0, None)
    assert delay is not None and 0 <= delay <= 0.01


async def test_retry_after_nan_from_a_server_falls_back_to_backoff(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(status=429, headers={"Retry-After": "nan"}))
    policy_client = chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", max_retries=1, timeout=Timeout(total=10)
    )
    async with policy_client as client:
        reply = await client.chat.completions.create(messages=MESSAGES)
    assert reply.text
    assert [a.status_code for a in reply.attempts] == [429, None]


# -- item 22: a closed client is never retried -------------------------------------


class ClosedUnderneath:
    """Raises what a closed transport raises; counts how often it was asked."""

    name = "ClosedUnderneath"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        self.calls += 1
        raise ClientClosedError("the client is closed")
        yield  # pragma: no cover


class Counting:
    name = "Counting"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        self.calls += 1
        yield ChatCompletionChunk(choices=[ChunkChoice(delta=ChoiceDelta(content="fine"))])


@pytest.mark.parametrize("stream", [False, True])
async def test_client_closed_error_is_neither_retried_nor_fallen_back(stream: bool) -> None:
    closed, fallback = ClosedUnderneath(), Counting()
    provider = RetryProvider([closed, fallback], shuffle=False, single_provider_retry=True)
    async with chatkit.AsyncClient(provider, max_retries=3) as client:
        with pytest.raises(ClientClosedError) as caught:
            if stream:
                await client.chat.completions.create(messages=MESSAGES, stream=True)
            else:
                await client.chat.completions.create(messages=MESSAGES)
    assert (closed.calls, fallback.calls) == (1, 0)
    assert len(caught.value.attempts) == 1  # type: ignore[attr-defined]


# -- item 18: the streamed text is held once ---------------------------------------

PIECES = [f"piece {i:04d} " + "x" * 80 for i in range(200)]  # past pydantic's string cache


def long_stream() -> list[bytes]:
    frames = [frame(chunk_payload({"index": 0, "delta": {"role": "assistant"}}))]
    frames += [frame(chunk_payload({"index": 0, "delta": {"content": p}})) for p in PIECES]
    return [*frames, frame(chunk_payload({"index": 0, "delta": {}, "finish_reason": "stop"}))]


def other_holders(pieces: list[str]) -> list[int]:
    """For each piece but the last (which the caller's loop variable may still
    hold), how many references exist besides ``pieces`` and this count's own."""
    return [sys.getrefcount(pieces[i]) - 2 for i in range(len(pieces) - 1)]


async def test_async_stream_holds_each_piece_once() -> None:
    async with sse_server(long_stream()) as url, client_for(url) as client:
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        read = 0
        async for _ in stream:
            read += 1
            if read == 150:
                break
        pieces = stream._builder._first.content
        assert other_holders(pieces) == [0] * (len(pieces) - 1)
        await stream.aclose()


def test_sync_stream_holds_each_piece_once() -> None:
    with (
        sse_server_in_thread(long_stream()) as url,
        chatkit.Client(base_url=url, api_key="sk-test", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        for _ in range(150):  # next(), not a for loop: breaking out would close it
            next(stream)
        pieces = stream._builder._first.content
        assert other_holders(pieces) == [0] * (len(pieces) - 1)


def test_a_pool_timeout_moves_on_instead_of_waiting_for_the_same_pool() -> None:
    assert RetryPolicy().decide(chatkit.PoolTimeoutError("pool full")) == "next"
    assert RetryPolicy().decide(chatkit.APITimeoutError("slow")) == "retry"


# -- item 14: a key echoed anywhere in an upstream's answer never reaches an error ----

SECRET_KEY = "sk-echoed-3b9d7c1f2e8a4605"


@pytest.mark.parametrize(
    "frames",
    [
        [
            frame(
                {"error": {"message": f"invalid key {SECRET_KEY}", "type": "authentication_error"}}
            )
        ],
        [
            frame(chunk_payload({"index": 0, "delta": {"content": "Hi"}})),
            frame({"error": {"message": f"key {SECRET_KEY} revoked", "code": SECRET_KEY}}),
        ],
        [b"data: {not json " + SECRET_KEY.encode() + b"\n\n"],
    ],
    ids=["error event", "error event after content", "decode error"],
)
async def test_a_key_echoed_in_the_stream_never_reaches_the_error(frames: list[bytes]) -> None:
    async with (
        sse_server(frames) as url,
        chatkit.AsyncClient(base_url=url, api_key=SECRET_KEY, max_retries=0) as client,
    ):
        with pytest.raises(chatkit.APIError) as caught:
            await client.chat.completions.create(messages=MESSAGES, stream=True).until_done()
    error = caught.value
    seen = [str(error), repr(error.args), repr(getattr(error, "body", None))]
    cause = getattr(error, "cause", None)
    if cause is not None:
        seen += [str(cause), repr(getattr(cause, "body", None))]
    seen += [a.describe() for a in error.attempts]
    assert not [text for text in seen if SECRET_KEY in text]


# -- item 1: a RetryProvider's members each get the model meant for them -------------


async def test_retry_provider_members_get_the_model_their_prefix_names(
    server: FakeOpenAIServer,
) -> None:
    from chatkit.providers import Anthropic, OpenAI, Provider
    from chatkit.testing import FakeAnthropicServer

    async with FakeAnthropicServer(api_key="sk-ant") as anthropic:
        members: list[Provider] = [
            Anthropic(base_url=anthropic.base_url, api_key="sk-ant"),
            OpenAI(base_url=server.base_url, api_key="sk"),
        ]
        provider = RetryProvider(members, shuffle=False)
        async with chatkit.AsyncClient(provider) as client:
            foreign = await client.chat.completions.create(messages=MESSAGES, model="openai:gpt-4o")
            own = await client.chat.completions.create(
                messages=MESSAGES, model="anthropic:claude-x"
            )
        sent_to_anthropic = [r.json["model"] for r in anthropic.requests]
    # Anthropic cannot be meant by "openai:": skipped, never sent "gpt-4o".
    assert foreign.attempts[0].skipped and "model" in foreign.attempts[0].describe()
    assert foreign.provider == "OpenAI"
    assert [r.json["model"] for r in server.requests] == ["openai:gpt-4o"]
    assert sent_to_anthropic == ["claude-x"]
    assert own.provider == "Anthropic"
