"""Tests of chatkit.testing's fake OpenAI server, driven by a raw aiohttp client.

chatkit's own client is deliberately not used: these tests pin down what the
server puts on the wire, so the client's tests can rely on it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatkit.testing import Behavior, FakeOpenAIServer, RecordedRequest, _openai_server
from chatkit.testing import __main__ as cli

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Say hello to me"}]
STREAM = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
NO_STREAM = {"model": "gpt-test", "messages": MESSAGES}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(
    behavior: Behavior | None = None, **kwargs: Any
) -> AsyncIterator[tuple[FakeOpenAIServer, aiohttp.ClientSession]]:
    async with (
        FakeOpenAIServer(behavior, **kwargs) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
    ):
        yield server, session


@asynccontextmanager
async def exchange(
    behavior: Behavior | None, body: dict[str, Any]
) -> AsyncIterator[tuple[FakeOpenAIServer, aiohttp.ClientResponse]]:
    """A fresh server answering one chat-completions request with `body`."""
    async with (
        serve(behavior) as (server, session),
        session.post(chat_url(server), json=body) as response,
    ):
        yield server, response


def chat_url(server: FakeOpenAIServer) -> str:
    return server.base_url + "/chat/completions"


def split_events(raw: bytes) -> list[bytes]:
    return [event for event in raw.split(b"\n\n") if event]


def data_objects(raw: bytes) -> list[Any]:
    """The JSON objects of the data events, skipping [DONE] and comments."""
    objects = []
    for event in split_events(raw):
        if event.startswith(b"data: ") and event != b"data: [DONE]":
            objects.append(json.loads(event[6:]))
    return objects


def content_of(objects: list[Any]) -> str:
    return "".join(
        obj["choices"][0]["delta"].get("content") or "" for obj in objects if obj["choices"]
    )


async def read_until_error(response: aiohttp.ClientResponse) -> tuple[bytes, BaseException]:
    """Read the body with iter_any; return what arrived and the error that ended it."""
    received = bytearray()
    with pytest.raises(aiohttp.ClientError) as info:
        async for data in response.content.iter_any():
            received += data
    return bytes(received), info.value


# -- the happy path ---------------------------------------------------------------


async def test_stream_is_openai_shaped() -> None:
    async with exchange(None, STREAM) as (_, response):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "req_1"
        raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    objects = data_objects(raw)
    first, *middle, last = objects
    for obj in objects:
        assert obj["object"] == "chat.completion.chunk"
        assert obj["model"] == "gpt-test"
        assert obj["system_fingerprint"] == "fp_fake"
        assert obj["id"] == first["id"]
        assert "usage" not in obj
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [m["choices"][0]["delta"]["content"] for m in middle] == [
        "Hello!",
        " How",
        " can",
        " I",
        " help",
        " you",
        " today?",
    ]
    assert all(m["choices"][0]["finish_reason"] is None for m in middle)
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


async def test_include_usage_adds_usage_chunk_and_null_usage() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two three"}, {"x": 1}]},
        {"role": "assistant", "content": None},
        "not a message",
    ]
    body = {**STREAM, "messages": messages, "stream_options": {"include_usage": True}}
    async with exchange(Behavior(chunks=["a", "b"], repeat=2), body) as (_, response):
        raw = await response.read()
    *chunks, usage_chunk = data_objects(raw)
    assert all("usage" in c and c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert content_of(chunks) == "abab"
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_non_streamed_completion() -> None:
    async with serve(Behavior(text="Hi there  friend\n")) as (server, session):
        body = {"messages": MESSAGES}  # no model: the server names one
        async with session.post(chat_url(server), json=body) as response:
            assert response.headers["x-request-id"] == "req_1"
            obj = await response.json()
    assert obj["object"] == "chat.completion"
    assert obj["model"] == "fake-model"
    assert obj["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi there  friend\n",
        "refusal": None,
    }
    assert obj["choices"][0]["finish_reason"] == "stop"
    # Pieces: "Hi", " there", "  friend", "\n".
    assert obj["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_chunks_repeat_finish_reason_and_no_done() -> None:
    behavior = Behavior(chunks=["é", "☃"], repeat=3, finish_reason="length", done=False)
    async with exchange(behavior, STREAM) as (_, response):
        raw = await response.read()
    objects = data_objects(raw)
    assert content_of(objects) == "é☃" * 3
    assert objects[-1]["choices"][0]["finish_reason"] == "length"
    assert b"[DONE]" not in raw
    assert "é".encode() in raw  # raw UTF-8, not \u escapes


async def test_reasoning_and_tool_calls_stream() -> None:
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    behavior = Behavior(
        text="",
        reasoning=["Let me", " think."],
        tool_calls=[
            {"id": "call_1", "name": "get_weather", "arguments": arguments},
            {"name": "get_time"},
        ],
    )
    async with exchange(behavior, STREAM) as (_, response):
        objects = data_objects(await response.read())
    deltas = [obj["choices"][0]["delta"] for obj in objects]
    assert [d.get("reasoning_content") for d in deltas[1:3]] == ["Let me", " think."]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert heads == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "call_1",  # generated from the index when the script has none
            "type": "function",
            "function": {"name": "get_time", "arguments": ""},
        },
    ]
    fragments = [c["function"]["arguments"] for c in calls if c["index"] == 0]
    assert len(fragments) > 2  # streamed in pieces, not in one delta
    assert "".join(fragments) == arguments
    assert objects[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_reasoning_and_tool_calls_non_streamed() -> None:
    behavior = Behavior(
        text="",
        reasoning=["Hmm."],
        tool_calls=[{"id": "call_9", "name": "lookup", "arguments": '{"q": "x"}'}],
    )
    async with exchange(behavior, NO_STREAM) as (_, response):
        obj = await response.json()
    message = obj["choices"][0]["message"]
    assert message["content"] is None
    assert message["reasoning_content"] == "Hmm."
    assert message["tool_calls"] == [
        {
            "id": "call_9",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
        }
    ]
    assert obj["choices"][0]["finish_reason"] == "tool_calls"


async def test_content_survives_next_to_tool_calls() -> None:
    behavior = Behavior(text="Checking.", tool_calls=[{"name": "f", "arguments": "{}"}])
    async with exchange(behavior, NO_STREAM) as (_, response):
        message = (await response.json())["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert message["tool_calls"][0]["id"] == "call_0"


# -- errors, auth, validation ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (529, "server_error"),
    ],
)
async def test_error_status_body(status: int, error_type: str) -> None:
    async with exchange(Behavior(status=status), STREAM) as (_, response):
        assert response.status == status
        assert response.headers["x-request-id"] == "req_1"
        body = await response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type


async def test_error_headers_and_type_override() -> None:
    behavior = Behavior(
        status=429,
        error_type="insufficient_quota",
        retry_after=2,
        retry_after_ms=1500,
        headers={"x-should-retry": "true"},
    )
    async with serve(behavior) as (server, session):
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            assert response.headers["Retry-After"] == "2"
            assert response.headers["retry-after-ms"] == "1500"
            assert response.headers["x-should-retry"] == "true"
            assert (await response.json())["error"]["type"] == "insufficient_quota"
        server.script(Behavior(status=503, retry_after=0.25))
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            assert response.headers["Retry-After"] == "0.25"


async def test_extra_headers_on_success() -> None:
    async with (
        serve(Behavior(headers={"x-ratelimit-remaining-requests": "7"})) as (
            server,
            session,
        ),
        session.post(chat_url(server), json=STREAM) as response,
    ):
        assert response.headers["x-ratelimit-remaining-requests"] == "7"
        await response.read()


async def test_fail_then_script_then_default() -> None:
    async with serve(Behavior(text="default")) as (server, session):
        server.fail(2, 503, retry_after=0, error_type="overloaded_error")
        server.script(Behavior(text="scripted one"), Behavior(text="scripted two"))
        seen = []
        for _ in range(5):
            async with session.post(chat_url(server), json=NO_STREAM) as response:
                body = await response.json()
                if response.status == 200:
                    seen.append(body["choices"][0]["message"]["content"])
                else:
                    assert response.headers["Retry-After"] == "0"
                    seen.append(f"{response.status} {body['error']['type']}")
    assert seen == [
        "503 overloaded_error",
        "503 overloaded_error",
        "scripted one",
        "scripted two",
        "default",
    ]


async def test_fail_defaults_to_500() -> None:
    async with serve() as (server, session):
        server.fail(1)
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            assert response.status == 500
            assert "Retry-After" not in response.headers
        server.default.text = "changed"
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            assert (await response.json())["choices"][0]["message"]["content"] == "changed"


async def test_api_key_is_checked() -> None:
    async with serve(api_key="sk-test") as (server, session):
        server.script(Behavior(text="kept for the authorized request"))
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with session.post(chat_url(server), json=NO_STREAM, headers=headers) as r:
                assert r.status == 401
                error = (await r.json())["error"]
                assert error["type"] == "authentication_error"
                assert error["code"] == "invalid_api_key"
        async with session.get(server.base_url + "/models") as r:
            assert r.status == 401
        good = {"Authorization": "Bearer sk-test"}
        async with session.post(chat_url(server), json=NO_STREAM, headers=good) as r:
            assert r.status == 200
            content = (await r.json())["choices"][0]["message"]["content"]
            assert content == "kept for the authorized request"
        async with session.get(server.base_url + "/models", headers=good) as r:
            assert r.status == 200
        async with session.get(server.url + "/health") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [(b"{not json", None), (b"[1, 2]", "messages"), (b'{"model": "m"}', "messages")],
)
async def test_bad_request_body(body: bytes, param: str | None) -> None:
    async with serve() as (server, session):
        server.script(Behavior(text="still queued"))
        async with session.post(chat_url(server), data=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            assert (await response.json())["choices"][0]["message"]["content"] == "still queued"


async def test_x_fake_behavior_overrides_fields() -> None:
    async with serve(Behavior(text="default text", finish_reason="length")) as (server, session):
        override = {"x-fake-behavior": json.dumps({"chunks": ["o", "k"]})}
        async with session.post(chat_url(server), json=STREAM, headers=override) as response:
            objects = data_objects(await response.read())
        assert content_of(objects) == "ok"
        assert objects[-1]["choices"][0]["finish_reason"] == "length"  # kept from default
        override = {"x-fake-behavior": json.dumps({"status": 429, "retry_after_ms": 10})}
        async with session.post(chat_url(server), json=STREAM, headers=override) as response:
            assert response.status == 429
            assert response.headers["retry-after-ms"] == "10"


@pytest.mark.parametrize(
    ("header", "message"),
    [("{oops", "not valid JSON"), ("[1]", "JSON object"), ('{"nope": 1}', "unknown")],
)
async def test_x_fake_behavior_rejects_bad_values(header: str, message: str) -> None:
    async with serve() as (server, session):
        server.script(Behavior(text="not used up by the bad request"))
        headers = {"x-fake-behavior": header}
        async with session.post(chat_url(server), json=STREAM, headers=headers) as response:
            assert response.status == 400
            assert message in (await response.json())["error"]["message"]
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            content = (await response.json())["choices"][0]["message"]["content"]
            assert content == "not used up by the bad request"


def test_apply_override_copies() -> None:
    from chatkit.testing._behavior import apply_override

    original = Behavior(text="a")
    changed = apply_override(original, '{"text": "b", "repeat": 2}')
    assert (changed.text, changed.repeat, original.text) == ("b", 2, "a")


# -- other endpoints and recording ------------------------------------------------


async def test_models_health_404_and_recorded_requests() -> None:
    async with serve(models=["m-1", "m-2"]) as (server, session):
        async with session.get(server.base_url + "/models") as response:
            listing = await response.json()
        assert listing == {
            "object": "list",
            "data": [
                {"id": "m-1", "object": "model", "created": 0, "owned_by": "chatkit-fake"},
                {"id": "m-2", "object": "model", "created": 0, "owned_by": "chatkit-fake"},
            ],
        }
        async with session.get(server.url + "/health") as response:
            assert response.status == 200
        async with session.get(server.url + "/nowhere") as response:
            assert response.status == 404
            assert response.headers["x-request-id"] == "req_3"
        headers = {"Authorization": "Bearer k", "X-Custom": "1"}
        url = chat_url(server) + "?api-version=2024"
        async with session.post(url, json=NO_STREAM, headers=headers) as response:
            await response.read()
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/nowhere"),
        ("POST", "/v1/chat/completions"),
    ]
    last = server.requests[-1]
    assert isinstance(last, RecordedRequest)
    assert last.query == {"api-version": "2024"}
    assert last.json == NO_STREAM
    assert last.headers["authorization"] == "Bearer k"
    assert last.headers["Authorization"] == "Bearer k"  # lookups ignore case
    assert last.headers.get("X-CUSTOM") == "1"
    assert last.headers.get("missing", "-") == "-"
    assert "x-custom" in last.headers and "X-Custom" in last.headers
    assert 1 not in last.headers  # type: ignore[comparison-overlap]
    assert "x-custom" in list(last.headers)


async def test_default_models() -> None:
    async with serve() as (server, session), session.get(server.base_url + "/models") as response:
        assert [m["id"] for m in (await response.json())["data"]] == ["fake-model"]


async def test_garbage_request_gets_a_400_and_the_server_lives_on() -> None:
    async with serve() as (server, session):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GARBAGE\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.0 400")
        writer.close()
        await writer.wait_closed()
        async with session.get(server.url + "/health") as response:
            assert response.status == 200


def test_repeated_headers_are_joined() -> None:
    from chatkit.testing._behavior import make_headers

    headers = make_headers([("Accept", "a"), ("accept", "b")])
    assert headers == {"accept": "a, b"}


# -- faults ----------------------------------------------------------------------


async def test_reset_closes_without_a_response() -> None:
    async with serve(Behavior(reset=True)) as (server, session):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.post(chat_url(server), json=STREAM) as response:
                await response.read()
        assert len(server.requests) == 1
        server.default = Behavior()  # the server keeps serving new connections
        async with session.post(chat_url(server), json=STREAM) as response:
            assert response.status == 200
            await response.read()
        assert server.disconnects == 0  # the server hung up, not the client


async def test_drop_after_cuts_the_stream() -> None:
    async with serve(Behavior(chunks=["a", "b", "c", "d"], drop_after=2)) as (server, session):
        async with session.post(chat_url(server), json=STREAM) as response:
            assert response.status == 200
            received, error = await read_until_error(response)
        assert isinstance(error, aiohttp.ClientPayloadError)
        objects = data_objects(received)
        assert content_of(objects) == "ab"
        assert all(o["choices"][0]["finish_reason"] is None for o in objects)
        assert b"[DONE]" not in received
        assert server.disconnects == 0


async def test_drop_after_past_the_end_drops_before_finish() -> None:
    async with exchange(Behavior(chunks=["a"], drop_after=10), STREAM) as (_, response):
        received, _ = await read_until_error(response)
    objects = data_objects(received)
    assert content_of(objects) == "a"
    assert objects[-1]["choices"][0]["finish_reason"] is None


async def test_drop_after_non_streamed_truncates_body() -> None:
    async with exchange(Behavior(drop_after=0), NO_STREAM) as (_, response):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_stall_then_client_timeout_counts_a_disconnect() -> None:
    async with serve(Behavior(chunks=["a", "b", "c"], stall_after=1)) as (server, session):
        timeout = aiohttp.ClientTimeout(sock_read=0.2)
        async with session.post(chat_url(server), json=STREAM, timeout=timeout) as response:
            received, error = await read_until_error(response)
        assert isinstance(error, aiohttp.SocketTimeoutError)
        assert content_of(data_objects(received)) == "a"
        assert await server.wait_for_disconnects(1, timeout=5)
        assert server.disconnects == 1
        assert server.active_streams == 0


async def test_client_close_while_stalled_is_seen_promptly() -> None:
    async with serve(Behavior(stall_after=2)) as (server, session):
        async with session.post(chat_url(server), json=STREAM) as response:
            received = b""
            while received.count(b"\n\n") < 3:  # role + 2 content chunks
                received += await response.content.readany()
            assert server.active_streams == 1
            response.close()
        started = time.monotonic()
        assert await server.wait_for_disconnects(1, timeout=5)
        assert time.monotonic() - started < 4
        assert not await server.wait_for_disconnects(2, timeout=0.05)
        assert server.active_streams == 0


async def test_non_streamed_stall_client_timeout_counts_a_disconnect() -> None:
    async with serve(Behavior(stall_after=0)) as (server, session):
        timeout = aiohttp.ClientTimeout(sock_read=0.1)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(chat_url(server), json=NO_STREAM, timeout=timeout):
                pass  # pragma: no cover - the headers never arrive
        assert await server.wait_for_disconnects(1)


async def test_short_stall_continues() -> None:
    behavior = Behavior(chunks=["a", "b"], stall_after=1, stall_seconds=0.05)
    async with exchange(behavior, STREAM) as (_, response):
        raw = await response.read()
    assert content_of(data_objects(raw)) == "ab"
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_trickle_sends_comments_during_the_stall() -> None:
    behavior = Behavior(chunks=["a"], trickle=0.02, stall_seconds=0.15)
    async with exchange(behavior, STREAM) as (_, response):
        raw = await response.read()
    events = split_events(raw)
    comments = [e for e in events if e.startswith(b":")]
    assert len(comments) >= 3
    # The comments come right after the role chunk, before any content.
    assert events[0].startswith(b"data: ")
    assert events[1].startswith(b":")
    assert content_of(data_objects(raw)) == "a"


async def test_trickle_forever_until_the_client_gives_up() -> None:
    behavior = Behavior(chunks=["a", "b"], stall_after=1, trickle=0.02)
    async with serve(behavior) as (server, session):
        timeout = aiohttp.ClientTimeout(total=0.3, sock_read=0.1)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(chat_url(server), json=STREAM, timeout=timeout) as response:
                async for _ in response.content.iter_any():
                    pass
        assert await server.wait_for_disconnects(1)


async def test_malformed_after() -> None:
    behavior = Behavior(chunks=["a", "b"], malformed_after=1)
    async with exchange(behavior, STREAM) as (_, response):
        events = split_events(await response.read())
    assert events[2] == b"data: {not json"
    assert b"b" in events[3]
    assert events[-1] == b"data: [DONE]"
    async with exchange(Behavior(malformed_after=0), NO_STREAM) as (_, response):
        assert response.status == 200
        assert await response.read() == b"{not json"


async def test_error_event_after() -> None:
    behavior = Behavior(chunks=["a", "b"], error_event_after=1, error_event_type="overloaded")
    async with exchange(behavior, STREAM) as (_, response):
        assert response.status == 200
        raw = await response.read()  # ends cleanly
    objects = data_objects(raw)
    assert content_of(objects[:-1]) == "a"
    assert objects[-1] == {
        "error": {"message": "fake error event", "type": "overloaded", "param": None, "code": None}
    }
    assert b"[DONE]" not in raw
    async with exchange(Behavior(error_event_after=0), NO_STREAM) as (_, response):
        assert response.status == 200
        assert (await response.json())["error"]["type"] == "server_error"


async def test_huge_line() -> None:
    async with serve(Behavior(chunks=["tail"], huge_line=200_000)) as (server, session):
        async with session.post(chat_url(server), json=STREAM) as response:
            raw = await response.read()
        lines = raw.split(b"\n")
        assert abs(len(lines[2]) - 200_000) < 16
        assert content_of(data_objects(raw)).endswith("tail")
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            content = (await response.json())["choices"][0]["message"]["content"]
        assert len(content) == 200_000 + len("tail")


async def test_delay_between_chunks() -> None:
    async with serve(Behavior(chunks=["a", "b", "c"], delay=0.02)) as (server, session):
        started = time.monotonic()
        async with session.post(chat_url(server), json=STREAM) as response:
            reads = [data async for data in response.content.iter_any()]
        elapsed = time.monotonic() - started
    assert elapsed >= 4 * 0.02 * 0.9  # three content chunks and the finish chunk
    assert len(reads) >= 2  # flushed chunk by chunk, not in one batch
    assert content_of(data_objects(b"".join(reads))) == "abc"


async def test_benchmark_stream_is_complete_and_batched() -> None:
    behavior = Behavior(chunks=["x"], repeat=20_000)
    async with exchange(behavior, STREAM) as (_, response):
        raw = b"".join([data async for data in response.content.iter_any()])
    assert raw.count(b'"content":"x"') == 20_000
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_write_failure_counts_a_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer that vanishes between writes surfaces as ConnectionResetError from
    # write(); force that path, which is timing-dependent on a real socket.
    async def broken_write(*args: Any) -> None:
        raise ConnectionResetError("peer gone")

    monkeypatch.setattr(_openai_server, "write_stream", broken_write)
    async with serve() as (server, session):
        async with session.post(chat_url(server), json=STREAM) as response:
            await response.read()
        assert server.disconnects == 1
        assert server.active_streams == 0


async def test_write_failure_outside_a_stream_counts_a_disconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_complete(*args: Any) -> None:
        raise ConnectionResetError("peer gone")

    monkeypatch.setattr(_openai_server, "_complete", broken_complete)
    async with serve() as (server, session):
        async with session.post(chat_url(server), json=NO_STREAM) as response:
            await response.read()
        assert server.disconnects == 1


# -- lifecycle ---------------------------------------------------------------------


async def test_close_ends_stalled_streams_without_counting_them() -> None:
    server = FakeOpenAIServer(Behavior(stall_after=0))
    with pytest.raises(RuntimeError):
        _ = server.base_url
    await server.start()
    with pytest.raises(RuntimeError):
        await server.start()
    async with (
        aiohttp.ClientSession() as session,
        session.post(chat_url(server), json=STREAM) as response,
    ):
        await response.content.readany()
        assert server.active_streams == 1
        await server.close()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await server.close()  # closing twice is fine
    assert server.disconnects == 0


async def test_port_and_urls() -> None:
    async with FakeOpenAIServer() as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.base_url == server.url + "/v1"


# -- a server on its own thread, for synchronous code -------------------------------


def test_run_in_thread_with_a_sync_client() -> None:
    server = FakeOpenAIServer(Behavior(text="from a thread"))
    with server.run_in_thread() as running:
        assert running is server
        request = urllib.request.Request(
            chat_url(server),
            data=json.dumps(NO_STREAM).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            obj = json.load(response)
        assert obj["choices"][0]["message"]["content"] == "from a thread"

        # A client that hangs up on a stalled stream; wait for it synchronously.
        server.script(Behavior(stall_after=1))
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", "/v1/chat/completions", json.dumps(STREAM).encode())
        stream = connection.getresponse()
        assert stream.status == 200
        assert stream.read1().startswith(b"data: ")
        assert not server.wait_for_disconnects_sync(1, timeout=0.05)
        connection.close()
        stream.close()
        assert server.wait_for_disconnects_sync(1, timeout=5)
        assert server.disconnects == 1
    with pytest.raises(RuntimeError):
        _ = server.url  # closed on exit


async def test_async_wait_for_a_threaded_server() -> None:
    server = FakeOpenAIServer(Behavior(stall_after=0))
    with server.run_in_thread():
        async with aiohttp.ClientSession() as session:
            async with session.post(chat_url(server), json=STREAM) as response:
                await response.content.readany()
                response.close()
            assert await server.wait_for_disconnects(1, timeout=5)


def test_run_in_thread_reports_start_errors() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = FakeOpenAIServer(port=taken.getsockname()[1])
        with pytest.raises(OSError), server.run_in_thread():
            pass  # pragma: no cover - start fails


# -- python -m chatkit.testing ------------------------------------------------------


def _post(base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_cli_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "chatkit.testing", "--host", "127.0.0.1", "--port", "0"]
    command += ["--text", "cli answer", "--chunks", "5"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # bounded by the per-test timeout
        assert line.startswith("READY http://127.0.0.1:"), line
        base_url = line.split()[1]
        assert base_url.endswith("/v1")
        raw = _post(base_url, STREAM)
        assert content_of(data_objects(raw)) == "cli answercli answercli"
        steer = {"x-fake-behavior": json.dumps({"chunks": ["steered"]})}
        assert content_of(data_objects(_post(base_url, STREAM, steer))) == "steered"
    finally:
        process.terminate()
        rest, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr.decode()
    assert rest == b""  # exactly one line was printed


def test_cli_in_process_until_sigterm() -> None:
    # The same entry point in this process (so coverage sees it); a helper
    # thread talks to the server and then sends the signal that stops it.
    read_fd, write_fd = os.pipe()
    results: dict[str, Any] = {}

    def client() -> None:
        with os.fdopen(read_fd, "r") as ready:
            base_url = ready.readline().split()[1]
            try:
                results["raw"] = _post(base_url, NO_STREAM, {"Authorization": "Bearer sk"})
                with pytest.raises(urllib.error.HTTPError) as info:
                    _post(base_url, NO_STREAM)
                results["unauthorized"] = info.value.code
                info.value.close()  # an HTTPError holds the response open
            finally:
                os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=client)
    helper.start()
    with os.fdopen(write_fd, "w") as out:
        argv = ["--port", "0", "--text", "in process", "--delay", "0", "--api-key", "sk"]
        assert cli.main(argv, out) == 0
    helper.join(10)
    assert json.loads(results["raw"])["choices"][0]["message"]["content"] == "in process"
    assert results["unauthorized"] == 401


def test_cli_behavior_from_args() -> None:
    args = cli._parser().parse_args(["--text", "", "--chunks", "3"])
    assert cli.behavior_from_args(args).chunks == ["", "", ""]
    args = cli._parser().parse_args([])
    assert cli.behavior_from_args(args).chunks is None


@pytest.mark.parametrize("vendor", ["OpenAI", "Anthropic", "Gemini", "Ollama"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_scripted_status_is_served_whatever_the_success_fields_hold(
    vendor: str, stream: bool
) -> None:
    """The answer is only built for a success: a bad tool call can't turn a 503 into a 500."""
    import chatkit
    import chatkit.providers as providers
    import chatkit.testing as testing

    server_class = getattr(testing, f"Fake{vendor}Server")
    failing = Behavior(status=503, tool_calls=[{"not": "a tool call"}])
    async with server_class(behavior=failing) as server:
        vendor_class = getattr(providers, vendor)
        provider = vendor_class(api_key="sk-test-0123456789", base_url=server.base_url)
        async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
            with pytest.raises(chatkit.InternalServerError) as caught:
                reply = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
                await reply
    assert caught.value.status_code == 503


@pytest.mark.parametrize(
    ("vendor", "shape"),
    [
        ("OpenAI", {"message", "type", "param", "code"}),
        ("Anthropic", {"type", "message"}),
        ("Gemini", {"code", "message", "status"}),
        ("Ollama", {"error"}),
    ],
)
async def test_a_malformed_override_gets_the_vendors_own_error_shape(
    vendor: str, shape: set[str]
) -> None:
    import chatkit
    import chatkit.providers as providers
    import chatkit.testing as testing

    async with getattr(testing, f"Fake{vendor}Server")() as server:
        vendor_class = getattr(providers, vendor)
        provider = vendor_class(api_key="sk-test-0123456789", base_url=server.base_url)
        async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
            with pytest.raises(chatkit.BadRequestError, match="x-fake-behavior") as caught:
                await client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-fake-behavior": "not json"},
                )
    assert isinstance(caught.value.body, dict) and set(caught.value.body) == shape
