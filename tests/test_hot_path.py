"""The per-chunk fast paths answer exactly as the general paths do.

- The SSE decoder's shortcut for single-line ``data:`` events is compared
  with an independent, line-by-line reading of the spec on generated streams
  cut at random points, and its size cap is checked.
- ``OpenAI.stream``'s end-of-body path (the last event without its blank
  line, handled by ``decoder.flush()``) is driven by a real server, through
  both the async and the sync client.
- A provider whose capabilities are all present skips the capability check;
  one that lacks a capability still refuses before any I/O.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
from aiohttp import web

import chatkit
from chatkit import APIStatusError, SSEDecodeError, UnsupportedCapabilityError
from chatkit._sse import SSEDecoder, SSEEvent
from chatkit.providers import OpenAI
from chatkit.providers._base import Capabilities
from chatkit.testing import FakeOpenAIServer

HELLO = [{"role": "user", "content": "Hello"}]

# -- the SSE fast path -------------------------------------------------------------


def reference_events(stream: str) -> list[SSEEvent]:
    """The WHATWG rules, line by line, for LF-only text (plus chatkit's empty-data rule)."""
    events: list[SSEEvent] = []
    data: list[str] = []
    event_type, last_id, retry = "", None, None
    for line in stream.split("\n")[:-1]:
        if line == "":
            if data and "\n".join(data):
                events.append(SSEEvent("\n".join(data), event_type or "message", last_id, retry))
            data, event_type, retry = [], "", None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id":
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    return events


SHAPES: list[Callable[[random.Random, int], str]] = [
    lambda rng, i: f'data: {{"n": {i}, "text": "é{"x" * rng.randrange(40)}"}}\n\n',
    lambda rng, i: f"data: {i}\n\n",
    lambda rng, i: f"data: first {i}\ndata: second\n\n",
    lambda rng, i: f"event: delta\ndata: {i}\n\n",
    lambda rng, i: f"id: {i}\ndata: with id\n\n",
    lambda rng, i: f"retry: {100 + i}\ndata: with retry\n\n",
    lambda rng, i: ": keep-alive\n\n",
    lambda rng, i: f"data: {i}\n\n\n\n",
    lambda rng, i: "data: \n\n",
    lambda rng, i: f"data:{i}\n\n",
    lambda rng, i: f"data: {i}\n: comment inside\n\n",
]


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_matches_the_line_by_line_reading(seed: int) -> None:
    rng = random.Random(seed)
    # Mostly plain data events, as real streams are, with every other shape mixed in.
    weights = [30, 20, 2, 2, 2, 2, 2, 2, 1, 1, 1]
    shapes = rng.choices(SHAPES, weights=weights, k=rng.randrange(1, 120))
    text = "".join(shape(rng, i) for i, shape in enumerate(shapes))
    stream = text.encode()
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 12))))
    decoder = SSEDecoder()
    got: list[SSEEvent] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got.extend(decoder.feed(stream[start:cut]))
        start = cut
    got.extend(decoder.flush())
    assert got == reference_events(text)


@pytest.mark.parametrize("seed", range(10))
def test_feed_messages_gives_message_data_as_plain_strings(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(shape(rng, i) for i, shape in enumerate(rng.choices(SHAPES, k=60)))
    text += "event: error\ndata: boom\n\ndata: multi\ndata: line\n\ndata: unterminated"
    stream = text.encode()
    cut = rng.randrange(1, len(stream))
    full, plain = SSEDecoder(), SSEDecoder()
    expected = full.feed(stream[:cut]) + full.feed(stream[cut:]) + full.flush()
    got = plain.feed_messages(stream[:cut]) + plain.feed_messages(stream[cut:])
    got += plain.flush_messages()
    assert got == [e.data if e.event == "message" else e for e in expected]
    assert SSEEvent("boom", "error", expected[-3].id) in got
    assert plain.last_event_id == full.last_event_id and plain.retry == full.retry


def test_fast_path_enforces_the_event_size_cap() -> None:
    decoder = SSEDecoder(max_event_size=10)
    assert decoder.feed(b"data: 0123456789\n\n") == [SSEEvent("0123456789")]
    with pytest.raises(SSEDecodeError, match="max_event_size"):
        decoder.feed(b"data: small\n\ndata: 0123456789A\n\n")
    # The decoder dropped its buffers: the next stream starts clean.
    assert decoder.feed(b"data: again\n\n") == [SSEEvent("again")]


def test_a_half_read_event_is_finished_before_the_fast_path_resumes() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\ndata: one\n") == []
    events = decoder.feed(b"data: two\n\ndata: three\n\n")
    assert events == [SSEEvent("one\ntwo", "delta"), SSEEvent("three")]


# -- OpenAI.stream at the end of the body -----------------------------------------------


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return "data: " + json.dumps({**body, "choices": [choice]})


def _event(choices: list[dict[str, Any]]) -> str:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return "data: " + json.dumps({**body, "choices": choices}) + "\n\n"


def _delta(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


# Deltas that carry more than content take the builder's slower branch.
MIXED = (
    _event([_delta({"role": "assistant", "content": ""})])
    + _event([_delta({"reasoning_content": "think"})])
    + _event([_delta({"content": "Hi"}), _delta({"content": "Other"}, index=1)])
    + _event([_delta({"refusal": "no"})])
    + _event(
        [
            _delta(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a"'},
                        }
                    ]
                }
            )
        ]
    )
    + _event([_delta({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})])
    + _event([_delta({}, finish="tool_calls"), _delta({}, index=1, finish="stop")])
    + "data: [DONE]\n\n"
)

BODIES = {
    "mixed": MIXED,
    # The last, unterminated event is not a chunk at all.
    "unterminated garbage": _chunk("Hel") + "\n\n" + "data: {not json",
    # The last event has no blank line after it, and no [DONE] follows.
    "unterminated finish": _chunk("Hel") + "\n\n" + _chunk("lo") + "\n\n" + _chunk(None, "stop"),
    # [DONE] arrives without its blank line.
    "unterminated done": _chunk("Hello") + "\n\n" + _chunk(None, "stop") + "\n\ndata: [DONE]",
    # An error event is the very last, unterminated thing in the body.
    "unterminated error": _chunk("Hel")
    + "\n\n"
    + 'data: {"error": {"message": "overloaded", "type": "server_error"}}',
}


@contextmanager
def raw_sse_server(body: str) -> Iterator[str]:
    """A real server on 127.0.0.1 that answers every chat call with `body`, then EOF."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body.encode())
        await response.write_eof()
        return response

    started = threading.Event()
    stop: list[Callable[[], object]] = []
    address: list[str] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        address.append(f"http://127.0.0.1:{port}/v1")
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        started.set()
        await done.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield address[0]
    finally:
        stop[0]()
        thread.join(10)


async def _async_text(base_url: str) -> tuple[str, str | None]:
    provider = OpenAI(base_url=base_url, api_key="sk-test")
    async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        async for _ in stream:
            pass
        return stream.text, stream.finish_reason


def _sync_text(base_url: str) -> tuple[str, str | None]:
    provider = OpenAI(base_url=base_url, api_key="sk-test")
    with chatkit.Client(provider=provider, max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        for _ in stream:
            pass
        return stream.text, stream.finish_reason


def _run(mode: str, base_url: str) -> tuple[str, str | None]:
    return asyncio.run(_async_text(base_url)) if mode == "async" else _sync_text(base_url)


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("case", ["unterminated finish", "unterminated done"])
def test_last_event_without_its_blank_line_still_counts(mode: str, case: str) -> None:
    with raw_sse_server(BODIES[case]) as base_url:
        assert _run(mode, base_url) == ("Hello", "stop")


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_unterminated_error_event_is_raised(mode: str) -> None:
    with (
        raw_sse_server(BODIES["unterminated error"]) as base_url,
        pytest.raises(chatkit.StreamInterrupted) as caught,
    ):
        _run(mode, base_url)
    assert caught.value.partial_text == "Hel"
    assert isinstance(caught.value.cause, APIStatusError)
    assert "overloaded" in str(caught.value.cause)


async def _async_final(base_url: str) -> chatkit.ChatCompletion:
    provider = OpenAI(base_url=base_url, api_key="sk-test")
    async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True)
        return await stream.until_done()


def _sync_final(base_url: str) -> chatkit.ChatCompletion:
    provider = OpenAI(base_url=base_url, api_key="sk-test")
    with chatkit.Client(provider=provider, max_retries=0) as client:
        return client.chat.completions.create(model="m", messages=HELLO, stream=True).until_done()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_deltas_beyond_content_are_assembled(mode: str) -> None:
    with raw_sse_server(BODIES["mixed"]) as base_url:
        final = asyncio.run(_async_final(base_url)) if mode == "async" else _sync_final(base_url)
    first, second = final.choices
    assert first.message.content == "Hi"
    assert first.message.reasoning_content == "think"
    assert first.message.refusal == "no"
    assert first.finish_reason == "tool_calls"
    assert first.message.tool_calls is not None
    call = first.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", '{"a": 1}')
    assert (second.index, second.message.content, second.finish_reason) == (1, "Other", "stop")


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_torn_last_line_is_a_truncation(mode: str) -> None:
    with (
        raw_sse_server(BODIES["unterminated garbage"]) as base_url,
        pytest.raises(chatkit.StreamInterrupted) as caught,
    ):
        _run(mode, base_url)
    assert caught.value.partial_text == "Hel"
    # A line cut off by the end of the body is a connection failure, not bad JSON.
    assert type(caught.value.cause) is chatkit.APIConnectionError


# -- the capability check ----------------------------------------------------------------


class NoTools(OpenAI):
    name: ClassVar[str] = "NoTools"
    capabilities: ClassVar[Capabilities] = Capabilities(tools=False)


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer().run_in_thread() as running:
        yield running


async def _async_call(provider: OpenAI, **params: Any) -> str:
    async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
        stream: AsyncIterator[Any] = client.chat.completions.create(
            model="m", messages=HELLO, stream=True, **params
        )
        return "".join([chunk.text async for chunk in stream])


def _sync_call(provider: OpenAI, **params: Any) -> str:
    with chatkit.Client(provider=provider, max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True, **params)
        return "".join(chunk.text for chunk in stream)


def _call(mode: str, provider: OpenAI, **params: Any) -> str:
    if mode == "async":
        return asyncio.run(_async_call(provider, **params))
    return _sync_call(provider, **params)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_missing_capability_refused_before_io(mode: str, server: FakeOpenAIServer) -> None:
    provider = NoTools(base_url=server.base_url, api_key="sk-test")
    with pytest.raises(UnsupportedCapabilityError, match="tools"):
        _call(mode, provider, tools=TOOLS)
    assert server.requests == []
    # What the provider can do still goes through.
    assert _call(mode, provider) == "Hello! How can I help you today?"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_full_capabilities_send_tools(mode: str, server: FakeOpenAIServer) -> None:
    provider = OpenAI(base_url=server.base_url, api_key="sk-test")
    assert _call(mode, provider, tools=TOOLS) == "Hello! How can I help you today?"
    assert server.requests[-1].json["tools"] == TOOLS
