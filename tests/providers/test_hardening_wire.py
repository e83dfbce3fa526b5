"""Issue 11, the wire formats: truncated bodies, ``[DONE]`` with whitespace,
cache and reasoning token details, floods of blank lines, malformed upstreams,
and keys that cannot be sent as a header.

Upstreams are real servers on 127.0.0.1: raw asyncio servers that write exact
bytes (a body with neither Content-Length nor chunked encoding, ended by
closing the socket) and the fake vendor servers of ``chatkit.testing``.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest

import chatkit
from chatkit import (
    APIConnectionError,
    APITimeoutError,
    ChatkitError,
    InvalidRequestError,
    ResponseDecodeError,
    StreamInterrupted,
    Timeout,
)
from chatkit._request import ChatRequest
from chatkit._sse import SSEDecoder
from chatkit._transport import Transport
from chatkit.providers import Anthropic, Gemini, Ollama, OpenAI

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
KEY = "sk-wire-0123456789abcdef"
# Bounds a test that would hang without the behaviour under test; far above
# what a passing run takes, so it never decides one.
GUARD = 30.0


# -- raw upstreams -------------------------------------------------------------


@asynccontextmanager
async def raw_upstream(
    bodies: list[bytes] | Callable[[asyncio.StreamWriter], Any],
    content_type: str = "text/event-stream",
    status: str = "200 OK",
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server that answers with a body of no declared length.

    Request ``n`` gets ``bodies[n]`` (the last one once they run out), then
    the socket closes: that close is the body's only end, exactly what a
    server that just dies mid-stream looks like. ``bodies`` may instead be a
    coroutine function that writes the body itself.
    Yields ``http://127.0.0.1:port`` and the request heads seen.
    """
    heads: list[bytes] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            heads.append(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if callable(bodies):
                await bodies(writer)
            else:
                writer.write(bodies[min(len(heads), len(bodies)) - 1])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def details(usage: Any) -> Any:
    """``usage.prompt_tokens_details``, which must be there (extra fields included)."""
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    return usage.prompt_tokens_details


def sse(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def openai_chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]})


def anthropic_text(text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    payload = {"type": "content_block_delta", "index": 0, "delta": delta}
    return sse(payload, "content_block_delta")


ANTHROPIC_START = sse(
    {
        "type": "message_start",
        "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}},
    },
    "message_start",
)
ANTHROPIC_END = sse(
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    "message_delta",
) + sse({"type": "message_stop"}, "message_stop")


def gemini_text(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    return sse({"candidates": [candidate]})


def ollama_line(text: str, done: bool = False) -> bytes:
    line: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": text}}
    line["done"] = done
    if done:
        line["done_reason"] = "stop"
    return json.dumps(line).encode() + b"\n"


# Per wire format: the provider at a base URL, a whole answer "Hello", the
# first piece of content ("Hel"), and how that format's next event starts.
WIRES: dict[str, dict[str, Any]] = {
    "openai": {
        "provider": lambda url: OpenAI(api_key=KEY, base_url=f"{url}/v1"),
        "content_type": "text/event-stream",
        "whole": openai_chunk("Hel") + openai_chunk("lo") + openai_chunk(None, "stop"),
        "first": openai_chunk("Hel"),
        "torn": b'data: {"id": "c1", "object": "chat.completion.chunk", "choi',
    },
    "anthropic": {
        "provider": lambda url: Anthropic(api_key=KEY, base_url=url),
        "content_type": "text/event-stream",
        "whole": ANTHROPIC_START + anthropic_text("Hel") + anthropic_text("lo") + ANTHROPIC_END,
        "first": ANTHROPIC_START + anthropic_text("Hel"),
        "torn": b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind',
    },
    "gemini": {
        "provider": lambda url: Gemini(api_key=KEY, base_url=url),
        "content_type": "text/event-stream",
        "whole": gemini_text("Hel") + gemini_text("lo", "STOP"),
        "first": gemini_text("Hel"),
        "torn": b'data: {"candidates": [{"content": {"parts": [{"te',
    },
    "ollama": {
        "provider": lambda url: Ollama(base_url=url),
        "content_type": "application/x-ndjson",
        "whole": ollama_line("Hel") + ollama_line("lo") + ollama_line("", done=True),
        "first": ollama_line("Hel"),
        "torn": b'{"model": "m", "message": {"role": "assistant", "cont',
    },
}


def client(provider: Any, **options: Any) -> chatkit.AsyncClient:
    return chatkit.AsyncClient(provider=provider, **options)


async def collect(provider: Any, *, sync: bool = False, **options: Any) -> Any:
    """Stream one answer through the async client, or the sync one on a thread."""
    if sync:

        def run() -> Any:
            with chatkit.Client(provider=provider, **options) as sync_client:
                stream = sync_client.chat.completions.create(
                    model="m", messages=MESSAGES, stream=True
                )
                with stream:
                    for _ in stream:
                        pass
                return stream

        return await anyio.to_thread.run_sync(run)
    async with client(provider, **options) as async_client:
        stream = async_client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
        return stream


# -- item 3: a body cut mid-line is a connection failure ------------------------


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("wire", list(WIRES))
async def test_a_body_torn_before_content_is_retried(wire: str, sync: bool) -> None:
    spec = WIRES[wire]
    bodies = [spec["torn"], spec["whole"]]
    async with raw_upstream(bodies, spec["content_type"]) as (url, heads):
        stream = await collect(spec["provider"](url), sync=sync, max_retries=1)
    assert stream.text == "Hello"
    assert len(heads) == 2
    first = stream.attempts[0].error
    assert type(first) is APIConnectionError
    assert "truncated" in str(first)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("wire", list(WIRES))
async def test_a_body_torn_after_content_interrupts_the_stream(wire: str, sync: bool) -> None:
    spec = WIRES[wire]
    async with raw_upstream([spec["first"] + spec["torn"]], spec["content_type"]) as (url, heads):
        with pytest.raises(StreamInterrupted) as caught:
            await collect(spec["provider"](url), sync=sync, max_retries=2)
    assert len(heads) == 1  # committed: never retried after content
    assert caught.value.partial_text == "Hel"
    assert type(caught.value.cause) is APIConnectionError
    assert "truncated" in str(caught.value.cause)


@pytest.mark.parametrize("wire", list(WIRES))
async def test_a_body_that_ends_between_events_is_a_connection_error(wire: str) -> None:
    # Whole events, but no end marker: the same connection failure, not a
    # StreamInterrupted of the provider's own making (the retry layer makes that).
    spec = WIRES[wire]
    async with raw_upstream([b"", spec["whole"]], spec["content_type"]) as (url, _):
        stream = await collect(spec["provider"](url), max_retries=1)
    assert stream.text == "Hello"
    first = stream.attempts[0].error
    assert type(first) is APIConnectionError
    assert "ended early" in str(first)


async def test_an_unterminated_last_event_that_parses_is_still_accepted() -> None:
    # Lenient as before: a server that omits the final line break is not cut off.
    body = openai_chunk("Hel") + openai_chunk("lo") + openai_chunk(None, "stop").rstrip(b"\n")
    async with raw_upstream([body]) as (url, _):
        stream = await collect(WIRES["openai"]["provider"](url), max_retries=0)
    assert stream.text == "Hello"
    assert stream.get_final_completion().choices[0].finish_reason == "stop"


# -- item 6: [DONE] with whitespace ----------------------------------------------


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize(
    "done",
    [b"data: [DONE] \n\n", b"data: [DONE]\t\n\n", b"data: [DONE]  \r\n\r\n", b"data:  [DONE]\n\n"],
    ids=["space", "tab", "spaces-crlf", "leading-space"],
)
async def test_done_followed_by_whitespace_ends_the_stream(done: bytes, sync: bool) -> None:
    # No finish_reason: only [DONE] says the answer is complete.
    body = openai_chunk("Hel") + openai_chunk("lo") + done
    async with raw_upstream([body]) as (url, _):
        stream = await collect(WIRES["openai"]["provider"](url), sync=sync, max_retries=0)
    assert stream.text == "Hello"


@pytest.mark.parametrize("done", [b"data: [DONE] ", b"data: [DONE]\t"])
async def test_an_unterminated_done_with_whitespace_ends_the_stream(done: bytes) -> None:
    body = openai_chunk("Hello") + done
    async with raw_upstream([body]) as (url, _):
        stream = await collect(WIRES["openai"]["provider"](url), max_retries=0)
    assert stream.text == "Hello"


# -- item 7: cache and reasoning tokens ------------------------------------------

ANTHROPIC_CACHED_START = sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "claude",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
                "output_tokens": 1,
            },
        },
    },
    "message_start",
)


async def test_anthropic_stream_reports_cache_tokens_as_openai_does() -> None:
    body = ANTHROPIC_CACHED_START + anthropic_text("Hello") + ANTHROPIC_END
    async with raw_upstream([body]) as (url, _):
        stream = await collect(WIRES["anthropic"]["provider"](url), max_retries=0)
    usage = stream.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (125, 2, 127)
    assert details(usage).cached_tokens == 100
    assert details(usage).cache_creation_tokens == 20


async def test_anthropic_message_reports_cache_tokens_as_openai_does() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 5,
            "cache_read_input_tokens": 7,
            "cache_creation_input_tokens": 0,
            "output_tokens": 2,
        },
    }
    body = json.dumps(message).encode()
    async with (
        raw_upstream([body], "application/json") as (url, _),
        client(WIRES["anthropic"]["provider"](url), max_retries=0) as async_client,
    ):
        completion = await async_client.chat.completions.create(model="m", messages=MESSAGES)
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.total_tokens) == (12, 14)
    assert details(usage).cached_tokens == 7
    assert details(usage).cache_creation_tokens == 0


async def test_anthropic_usage_without_cache_fields_has_no_details() -> None:
    async with raw_upstream([WIRES["anthropic"]["whole"]]) as (url, _):
        stream = await collect(WIRES["anthropic"]["provider"](url), max_retries=0)
    assert stream.usage.prompt_tokens == 3
    assert stream.usage.prompt_tokens_details is None


async def test_gemini_reports_cached_and_reasoning_tokens() -> None:
    event = {
        "candidates": [{"content": {"parts": [{"text": "Hello"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 50,
            "cachedContentTokenCount": 40,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 9,
            "totalTokenCount": 62,
        },
    }
    async with raw_upstream([sse(event)]) as (url, _):
        stream = await collect(WIRES["gemini"]["provider"](url), max_retries=0)
    usage = stream.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (50, 12, 62)
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert usage.completion_tokens_details.reasoning_tokens == 9


# -- item 19: a flood of blank lines holds neither the loop nor the deadline ------


def flood(
    piece: bytes, prefix: bytes = b"", *, gzip: bool = False
) -> Callable[[asyncio.StreamWriter], Any]:
    """Write ``prefix``, then ``piece`` over and over, as fast as the client reads,
    until the client hangs up (the test's guard bounds it).

    ``gzip``: one endless gzip member, so that a few kilobytes on the wire
    inflate into reads of megabytes on the client.
    """
    block = piece * ((8 << 20) // len(piece))

    async def write(writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        if gzip:
            first, repeat = _gzip_flood(piece)
            writer.write(first)
            while True:
                writer.write(repeat)
                await writer.drain()
        while True:
            writer.write(block)
            await writer.drain()

    return write


_GZIP: dict[bytes, tuple[bytes, bytes]] = {}


def _gzip_flood(piece: bytes) -> tuple[bytes, bytes]:
    """The start of a gzip member of ``piece`` repeated, and a part that may
    follow it any number of times (each part ends in a sync flush and inflates
    to the same 8 MiB, whatever came before: the window is all ``piece``)."""
    if piece not in _GZIP:
        block = piece * ((8 << 20) // len(piece))
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        first = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
        compressor.compress(block)
        compressor.flush(zlib.Z_SYNC_FLUSH)
        repeat = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
        _GZIP[piece] = (first, repeat)
    return _GZIP[piece]


class Ticker:
    """Measures the longest gap between two turns of the event loop."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


FLOODS = {
    "openai-lf": ("openai", b"\n", b"", False),
    "openai-crlf": ("openai", b"\r\n", b"", False),
    "openai-comments": ("openai", b":\n", b"", False),
    "openai-after-content": ("openai", b"\n", openai_chunk("Hel"), False),
    "anthropic-lf": ("anthropic", b"\n", b"", False),
    "gemini-cr": ("gemini", b"\r", b"", False),
    "ollama-lf": ("ollama", b"\n", b"", False),
    "ollama-crlf": ("ollama", b"\r\n", b"", False),
    "openai-gzip-lf": ("openai", b"\n", b"", True),
    "openai-gzip-comments": ("openai", b":\n", b"", True),
    "anthropic-gzip-crlf": ("anthropic", b"\r\n", b"", True),
    "gemini-gzip-lf": ("gemini", b"\n", b"", True),
    "ollama-gzip-lf": ("ollama", b"\n", b"", True),
}


@pytest.mark.parametrize("case", list(FLOODS))
async def test_a_flood_of_blank_lines_keeps_the_loop_and_the_deadline(case: str) -> None:
    wire, piece, prefix, gzip = FLOODS[case]
    spec = WIRES[wire]
    content_type = spec["content_type"] + ("\r\nContent-Encoding: gzip" if gzip else "")
    async with (
        raw_upstream(flood(piece, prefix, gzip=gzip), content_type) as (url, _),
        Ticker() as ticker,
    ):
        started = time.monotonic()
        with anyio.fail_after(GUARD), pytest.raises((APITimeoutError, StreamInterrupted)) as caught:
            await collect(spec["provider"](url), max_retries=0, timeout=Timeout(total=1))
        elapsed = time.monotonic() - started
    error = caught.value
    if isinstance(error, StreamInterrupted):  # after content the timeout is its cause
        assert isinstance(error.cause, APITimeoutError)
    # Generous bounds: this checks behaviour (the loop turns, the deadline
    # ends the call), not speed. Without the fix the loop stalls for seconds.
    assert ticker.max_gap < 0.5
    assert elapsed < 3.0


def test_decoding_blank_lines_and_comments_stays_linear() -> None:
    # Twice the input must cost about twice the time, not four times; the
    # bound is loose, the quadratic case it guards against is not.
    def cost(size: int, piece: bytes) -> float:
        decoder = SSEDecoder()
        read = piece * (65536 // len(piece))
        started = time.perf_counter()
        for _ in range(size):
            assert decoder.feed(read) == []
        return time.perf_counter() - started

    for piece in (b"\n", b"\r\n", b":\n", b": keep-alive\r\n"):
        small, large = cost(64, piece), cost(256, piece)
        assert large < small * 4 * 3


def test_blank_line_runs_and_comments_do_not_change_events() -> None:
    stream = (
        b":c\n\n\n\ndata: a\n:x\ndata: b\n\n\n\n\nevent: e\n\n\n:y\n"
        b"data: c\n\n\r\n\r\n\r\ndata: d\r\n\r\n"
    )
    expected = [("a\nb", "message"), ("c", "message"), ("d", "message")]
    for split in range(len(stream) + 1):
        decoder = SSEDecoder()
        events = decoder.feed(stream[:split]) + decoder.feed(stream[split:]) + decoder.flush()
        assert [(e.data, e.event) for e in events] == expected, split


# -- item 21: a malformed upstream gives only chatkit errors ---------------------

DEEP = "[" * 100_000

MALFORMED_STREAMS: dict[str, list[bytes]] = {
    "openai": [
        b'data: {"foo": 1}\n\n',
        b"data: 5\n\n",
        b"data: []\n\n",
        b'data: "x"\n\n',
        b"data: null\n\n",
        b'data: {"choices": 5}\n\n',
        b'data: {"choices": [5]}\n\n',
        b'data: {"choices": [{"delta": 5}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        f"data: {DEEP}\n\n".encode(),
        f'data: {{"choices": {DEEP}\n\n'.encode(),
        openai_chunk("Hel") + b'data: {"foo": 1}\n\n',
    ],
    "anthropic": [
        b"data: 5\n\n",
        b'data: {"type": "message_start", "message": 5}\n\n',
        b'data: {"type": "content_block_delta", "index": 0, "delta": 5}\n\n',
        b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}\n\n',
        b'data: {"type": "content_block_start", "index": 0,'
        b' "content_block": {"type": "tool_use", "id": 5, "name": "f"}}\n\n',
        b'data: {"type": "message_delta", "delta": []}\n\n',
        f"data: {DEEP}\n\n".encode(),
        f'data: {{"type": "message_start", "message": {DEEP}\n\n'.encode(),
    ],
    "gemini": [
        b'data: {"candidates": 5}\n\n',
        b'data: {"candidates": [5]}\n\n',
        b'data: {"candidates": [{"content": 5}]}\n\n',
        b'data: {"candidates": [{"content": {"parts": "x"}}]}\n\n',
        b'data: {"candidates": [{"content": {"parts": [5]}}]}\n\n',
        b'data: {"candidates": [{"index": "x", "content": {"parts": [{"text": "a"}]}}]}\n\n',
        b'data: {"candidates": [{"index": {}, "content": {"parts": [{"text": "a"}]}}]}\n\n',
        b'data: {"candidates": [{"content": {"parts": [{"functionCall": 5}]}}]}\n\n',
        b'data: {"promptFeedback": "x"}\n\n',
        b'data: {"usageMetadata": {"promptTokenCount": "x"},'
        b' "candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]}\n\n',
        b"data: 5\n\n",
        f"data: {DEEP}\n\n".encode(),
        f'data: {{"candidates": {DEEP}\n\n'.encode(),
    ],
    "ollama": [
        b'{"message": []}\n',
        b'{"message": "x"}\n',
        b'{"message": {"content": 5}}\n',
        b'{"message": {"tool_calls": 5}}\n',
        b'{"message": {"tool_calls": [{"function": {"name": "f"}, "id": 5}]}}\n',
        b'{"done": true, "prompt_eval_count": "x"}\n',
        b'{"done": true, "eval_count": [1]}\n',
        b"5\n",
        b"[]\n",
        f"{DEEP}\n".encode(),
        f'{{"message": {DEEP}\n'.encode(),
    ],
}


def _request(stream: bool) -> ChatRequest:
    return ChatRequest(model="m", messages=list(MESSAGES), stream=stream)


async def _provider_stream(provider: Any, transport: Transport) -> None:
    http = transport.call(timeout=Timeout(total=GUARD))
    http.start()
    async for _ in provider.stream(_request(True), http):
        pass


CASES = [
    (wire, index) for wire, bodies in MALFORMED_STREAMS.items() for index in range(len(bodies))
]


@pytest.mark.parametrize(("wire", "index"), CASES)
async def test_malformed_stream_events_are_decode_errors(wire: str, index: int) -> None:
    spec = WIRES[wire]
    body = MALFORMED_STREAMS[wire][index]
    async with raw_upstream([body], spec["content_type"]) as (url, _), Transport() as transport:
        with pytest.raises(ResponseDecodeError):
            await _provider_stream(spec["provider"](url), transport)


MALFORMED_BODIES: dict[str, list[bytes]] = {
    "openai": [b'{"foo": 1}', b"5", DEEP.encode(), b'{"choices": 5}'],
    "anthropic": [b'{"content": 5}', b"5", DEEP.encode(), b'{"content": [{"type": "text"}]}'],
    "gemini": [b'{"candidates": 5}', b"[]", DEEP.encode(), b'{"candidates": [{"content": "x"}]}'],
    "ollama": [b'{"message": []}', b"5", DEEP.encode(), b'{"message": {"content": 5}}'],
}
BODY_CASES = [(wire, i) for wire, bodies in MALFORMED_BODIES.items() for i in range(len(bodies))]


@pytest.mark.parametrize(("wire", "index"), BODY_CASES)
async def test_malformed_completions_are_decode_errors(wire: str, index: int) -> None:
    spec = WIRES[wire]
    body = MALFORMED_BODIES[wire][index]
    async with (
        raw_upstream([body], "application/json") as (url, _),
        Transport() as transport,
    ):
        http = transport.call(timeout=Timeout(total=GUARD))
        http.start()
        with pytest.raises(ResponseDecodeError):
            await spec["provider"](url).complete(_request(False), http)


MODEL_LISTS = [DEEP.encode(), b'{"data": ' + DEEP.encode(), b"not json", b'{"models": 5}']


@pytest.mark.parametrize("wire", list(WIRES))
@pytest.mark.parametrize("body", range(len(MODEL_LISTS)))
async def test_malformed_model_lists_give_only_chatkit_errors(wire: str, body: int) -> None:
    raw = MODEL_LISTS[body]
    async with (
        raw_upstream([raw], "application/json") as (url, _),
        Transport() as transport,
    ):
        http = transport.call(timeout=Timeout(total=GUARD))
        http.start()
        try:
            models = await WIRES[wire]["provider"](url).list_models(http)
        except ChatkitError as exc:
            assert isinstance(exc, ResponseDecodeError)
        else:
            assert models == []  # a list that holds no models is just empty


@pytest.mark.parametrize("wire", list(WIRES))
async def test_a_web_page_instead_of_a_stream_is_not_retried(wire: str) -> None:
    page = b"<!doctype html><html><body>Sign in to continue</body></html>\n"
    spec = WIRES[wire]
    async with raw_upstream([page], "text/html; charset=utf-8") as (url, heads):
        with pytest.raises(ResponseDecodeError) as caught:
            await collect(spec["provider"](url), max_retries=3)
    assert len(heads) == 1
    assert "text/html" in str(caught.value)


async def test_fuzzed_streams_give_only_chatkit_errors() -> None:
    # Mangled versions of valid answers: each cut, byte-flipped or with a
    # field's value swapped for another JSON type. Anything but a chatkit
    # error (AttributeError, TypeError, ValidationError...) fails the test.
    import random

    rng = random.Random(11)
    values = [b"5", b'"x"', b"[]", b"{}", b"null", b"true", b"-1", b"1e999"]
    for spec in WIRES.values():
        whole: bytes = spec["whole"]
        variants = []
        for _ in range(25):
            data = bytearray(whole)
            kind = rng.randrange(3)
            if kind == 0:
                data = data[: rng.randrange(len(data))]
            elif kind == 1:
                for _ in range(3):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                # Replace the value after a random ":" with another type.
                colons = [i for i, c in enumerate(data) if c == ord(":")]
                at = rng.choice(colons) + 1
                end = at
                while end < len(data) and data[end] not in b",}\n":
                    end += 1
                data[at:end] = b" " + rng.choice(values)
            variants.append(bytes(data))
        async with (
            raw_upstream(variants, spec["content_type"]) as (url, _),
            Transport() as transport,
        ):
            for _ in variants:
                with suppress(ChatkitError):
                    await _provider_stream(spec["provider"](url), transport)


# -- item 20: a key that cannot travel in a header --------------------------------


@pytest.mark.parametrize("key", [KEY + "\n", KEY + "\r\n", " " + KEY, "sk-a\nb", "sk\0x"])
@pytest.mark.parametrize("wire", ["openai", "anthropic", "gemini", "ollama"])
def test_an_api_key_with_a_line_break_is_refused_before_io(wire: str, key: str) -> None:
    make: Callable[[], Any] = {
        "openai": lambda: OpenAI(api_key=key, base_url="http://127.0.0.1:9/v1"),
        "anthropic": lambda: Anthropic(api_key=key, base_url="http://127.0.0.1:9"),
        "gemini": lambda: Gemini(api_key=key, base_url="http://127.0.0.1:9"),
        "ollama": lambda: Ollama(api_key=key, base_url="http://127.0.0.1:9"),
    }[wire]
    with pytest.raises(InvalidRequestError) as caught:
        make()
    assert caught.value.field == "api_key"
    assert "api_key" in str(caught.value)
    assert KEY not in str(caught.value)
    assert "sk-a" not in str(caught.value)


def test_an_api_key_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\r")
    with pytest.raises(InvalidRequestError) as caught:
        OpenAI()
    assert caught.value.field == "api_key"
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("wire", list(WIRES))
@pytest.mark.parametrize("body", [DEEP, '{"error": ' + DEEP], ids=["array", "in-error"])
async def test_a_deeply_nested_error_body_is_still_a_status_error(wire: str, body: str) -> None:
    status = "500 Internal Server Error"
    async with (
        raw_upstream([body.encode()], "application/json", status=status) as (url, _),
        Transport() as transport,
    ):
        http = transport.call(timeout=Timeout(total=GUARD))
        http.start()
        with pytest.raises(chatkit.InternalServerError):
            await WIRES[wire]["provider"](url).complete(_request(False), http)


# -- issue 11 review, item 20: a 200 body that is no stream ---------------------

JSON_ERROR = json.dumps(
    {
        "error": {
            "code": 400,
            "message": "Model m is not served here",
            "type": "invalid_request_error",
        }
    }
).encode()


@pytest.mark.parametrize("newline", [b"", b"\n"], ids=["bare", "newline"])
@pytest.mark.parametrize("wire", ["openai", "anthropic", "gemini"])
async def test_a_json_error_instead_of_a_stream_is_a_status_error(
    wire: str, newline: bytes
) -> None:
    spec = WIRES[wire]
    async with raw_upstream([JSON_ERROR + newline], "application/json") as (url, heads):
        with pytest.raises(chatkit.BadRequestError) as caught:
            await collect(spec["provider"](url), max_retries=3)
    assert len(heads) == 1  # the real error, not a dropped connection retried
    assert caught.value.status_code == 400
    assert "Model m is not served here" in str(caught.value)


async def test_an_ollama_json_error_instead_of_a_stream_is_a_status_error() -> None:
    body = b'{"error": "model \'m\' not found"}'
    async with raw_upstream([body], "application/json") as (url, _):
        with pytest.raises(chatkit.APIStatusError) as caught:
            await collect(WIRES["ollama"]["provider"](url), max_retries=0)
    assert "model 'm' not found" in str(caught.value)


PAGES = [
    ("text/plain", b"502 Bad Gateway: upstream connect error"),
    ("text/plain; charset=utf-8", b"502 Bad Gateway: upstream connect error\n"),
    ("application/json", b'{"status": "502 Bad Gateway: upstream connect error"}'),
    ("application/json", b'["502 Bad Gateway: upstream connect error"]\n'),
]


# An Ollama stream is JSON objects: one that is not an error may be a stream's
# first line, and ends as a stream cut short.
PAGE_CASES = [
    (wire, content_type, page)
    for wire in WIRES
    for content_type, page in PAGES
    if not (wire == "ollama" and page.startswith(b"{"))
]


@pytest.mark.parametrize(("wire", "content_type", "page"), PAGE_CASES)
async def test_a_body_that_is_no_stream_is_a_decode_error(
    wire: str, content_type: str, page: bytes
) -> None:
    spec = WIRES[wire]
    async with raw_upstream([page], content_type) as (url, heads):
        with pytest.raises(ResponseDecodeError) as caught:
            await collect(spec["provider"](url), max_retries=3)
    assert len(heads) == 1
    assert "502 Bad Gateway: upstream connect error" in str(caught.value)
    if not page.endswith(b"\n") or wire != "ollama":
        # (A whole Ollama line that is not JSON says so as its own error.)
        assert content_type.partition(";")[0] in str(caught.value)


async def test_the_start_of_a_page_is_quoted_short_and_without_a_torn_key() -> None:
    # The quote is cut at 200 characters, here inside the key: scrubbing
    # (whole keys only) would miss the cut piece, so it is left out.
    page = ("x " * 98 + "z " + KEY + " was refused " + "y" * 5000).encode()
    async with raw_upstream([page], "text/plain") as (url, _):
        with pytest.raises(ResponseDecodeError) as caught:
            await collect(WIRES["openai"]["provider"](url), max_retries=0)
    message = str(caught.value)
    assert "sk-w" not in message
    assert len(message) < 400
    assert "y" * 100 not in message


async def test_a_key_quoted_whole_by_a_page_is_scrubbed() -> None:
    page = f"Invalid key {KEY}: denied".encode()
    async with raw_upstream([page], "text/plain") as (url, _):
        with pytest.raises(ResponseDecodeError) as caught:
            await collect(WIRES["openai"]["provider"](url), max_retries=0)
    assert KEY not in str(caught.value)
    assert "denied" in str(caught.value)


@pytest.mark.parametrize("start", [b": ping\n\n", b"event: ping\n", b"dat"])
@pytest.mark.parametrize("wire", ["openai", "anthropic", "gemini"])
async def test_a_stream_cut_before_its_first_event_is_still_retried(
    wire: str, start: bytes
) -> None:
    # Keep-alives or a torn first field, then the close: a dropped stream.
    spec = WIRES[wire]
    async with raw_upstream([start, spec["whole"]], spec["content_type"]) as (url, heads):
        stream = await collect(spec["provider"](url), max_retries=1)
    assert stream.text == "Hello"
    assert len(heads) == 2
    assert type(stream.attempts[0].error) is APIConnectionError


# -- issue 11 review, item 21: caller JSON nested past the parser's limit -------

DEEP_ARGUMENTS: list[dict[str, Any]] = [
    {"role": "user", "content": "Hi"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": DEEP}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
]


def _unreachable(wire: str) -> Any:
    # Port 9 (discard): nothing listens, so a request that got this far would fail.
    return {
        "anthropic": lambda: Anthropic(api_key=KEY, base_url="http://127.0.0.1:9"),
        "gemini": lambda: Gemini(api_key=KEY, base_url="http://127.0.0.1:9"),
        "ollama": lambda: Ollama(base_url="http://127.0.0.1:9"),
    }[wire]()


@pytest.mark.parametrize("wire", ["anthropic", "gemini", "ollama"])
async def test_deeply_nested_tool_call_arguments_are_a_field_error(wire: str) -> None:
    async with client(_unreachable(wire), max_retries=0) as async_client:
        with pytest.raises(InvalidRequestError) as caught:
            await async_client.chat.completions.create(model="m", messages=DEEP_ARGUMENTS)
    assert caught.value.field == "messages[1].tool_calls[0].function.arguments"


async def test_a_deeply_nested_gemini_tool_result_is_a_field_error() -> None:
    messages = [*DEEP_ARGUMENTS[:2], {"role": "tool", "tool_call_id": "call_1", "content": DEEP}]
    messages[1] = {
        **DEEP_ARGUMENTS[1],
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    async with client(_unreachable("gemini"), max_retries=0) as async_client:
        with pytest.raises(InvalidRequestError) as caught:
            await async_client.chat.completions.create(model="m", messages=messages)
    assert caught.value.field == "messages[2].content"


# -- issue 11 review, item 21: odd shapes in a vendor's error body --------------


@pytest.mark.parametrize("details", ["5", "true", '"x"', '{"reason": "API_KEY_INVALID"}'])
async def test_gemini_error_details_of_the_wrong_type_are_ignored(details: str) -> None:
    body = f'{{"error": {{"code": 400, "message": "bad", "details": {details}}}}}'
    status = "400 Bad Request"
    async with (
        raw_upstream([body.encode()], "application/json", status=status) as (url, _),
        Transport() as transport,
    ):
        http = transport.call(timeout=Timeout(total=GUARD))
        http.start()
        with pytest.raises(chatkit.BadRequestError):
            await Gemini(api_key=KEY, base_url=url).complete(_request(False), http)
