"""The gateway's streamed writes: coalesced, ordered, bounded, and stopped by a disconnect.

Each test serves a real aiohttp handler on a loopback port and reads it with
a real client; HTTP chunk boundaries (``iter_chunks``) show how many writes
the handler made.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from server_support import MESSAGES, gateway, running, upstream_client

from chatkit.server._app import LISTEN_BACKLOG
from chatkit.server._outbox import HIGH_WATER, Outbox
from chatkit.server._wire import _dump, chunk_bytes, completion_bytes
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

Producer = Callable[[Outbox], Awaitable[None]]


def streaming_app(produce: Producer, outcome: dict[str, Any]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        outbox = Outbox(response)
        try:
            await produce(outbox)
            await outbox.close()
            await response.write_eof()
            outcome["ended"] = "eof"
        except ConnectionResetError:
            outcome["ended"] = "reset"
        finally:
            await outbox.abandon()
            outcome["writer_done"] = outbox._writer.done()
            outcome["done"].set()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def http_chunks(url: str) -> list[bytes]:
    chunks: list[bytes] = []
    current = b""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        async for data, end_of_chunk in response.content.iter_chunks():
            current += data
            if end_of_chunk and current:  # the empty last chunk ends the body
                chunks.append(current)
                current = b""
    if current:
        chunks.append(current)
    return chunks


async def test_events_queued_without_a_wait_leave_in_one_write() -> None:
    events = [f"data: {i}\n\n".encode() for i in range(50)]

    async def produce(outbox: Outbox) -> None:
        for event in events:
            await outbox.put(event)

    outcome: dict[str, Any] = {"done": asyncio.Event()}
    async with running(streaming_app(produce, outcome)) as url:
        chunks = await http_chunks(url)
    assert chunks == [b"".join(events)]
    assert outcome["ended"] == "eof" and outcome["writer_done"]


async def test_events_separated_by_waits_are_written_in_order_as_they_come() -> None:
    async def produce(outbox: Outbox) -> None:
        for batch in range(3):
            for i in range(4):
                await outbox.put(f"data: {batch}.{i}\n\n".encode())
            # The handler waiting for upstream: the writer sends the batch now.
            await asyncio.sleep(0.01)

    outcome: dict[str, Any] = {"done": asyncio.Event()}
    async with running(streaming_app(produce, outcome)) as url:
        chunks = await http_chunks(url)
    expected = [b"".join(f"data: {b}.{i}\n\n".encode() for i in range(4)) for b in range(3)]
    assert chunks == expected


async def test_the_queue_stays_bounded_when_the_producer_never_waits() -> None:
    part = b"x" * 10_000
    total = 300  # 3 MB, more than ten times the high-water mark
    seen: list[int] = []

    async def produce(outbox: Outbox) -> None:
        for _ in range(total):
            await outbox.put(part)
            seen.append(outbox.queued)

    outcome: dict[str, Any] = {"done": asyncio.Event()}
    async with running(streaming_app(produce, outcome)) as url:
        chunks = await http_chunks(url)
    assert b"".join(chunks) == part * total
    assert max(seen) < HIGH_WATER
    # Every write carried many parts, yet none waited for the whole stream.
    assert 1 < len(chunks) <= math.ceil(total * len(part) / HIGH_WATER) + 1


async def test_a_caller_that_goes_away_stops_the_producer_with_a_reset() -> None:
    outcome: dict[str, Any] = {"done": asyncio.Event(), "puts": 0}

    async def produce(outbox: Outbox) -> None:
        while outcome["puts"] < 100_000:
            await outbox.put(b"data: " + b"y" * 65_536 + b"\n\n")
            outcome["puts"] += 1
            await asyncio.sleep(0)

    async with running(streaming_app(produce, outcome)) as url:
        async with aiohttp.ClientSession() as session:
            response = await session.get(url)
            await response.content.readexactly(100_000)
            response.close()  # drop the connection mid-stream
        await asyncio.wait_for(outcome["done"].wait(), 30)
    assert outcome["ended"] == "reset"
    assert outcome["writer_done"]
    assert outcome["puts"] < 100_000


async def test_gateway_relays_a_long_stream_event_for_event() -> None:
    pieces = [f"w{i} " for i in range(2000)]
    async with (
        FakeOpenAIServer(Behavior(chunks=pieces)) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
        upstream_client(upstream) as direct,
    ):
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            raw = await response.read()
        expected = await direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads)
    assert text == expected.text == "".join(pieces)
    assert [
        p["choices"][0]["delta"].get("content")
        for p in payloads
        if p["choices"][0]["delta"].get("content")
    ] == pieces
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_wire_json_matches_the_standard_encoder() -> None:
    from chatkit import ChatCompletion, ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": 'é \u2028 \U0001f600 "q" \\ </script>'},
                    "logprobs": {"content": [{"token": "a", "logprob": -1e-05, "bytes": [97]}]},
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            "vendor_extra": {"nested": [1, 2.5, True, None]},
        }
    )
    event = chunk_bytes(chunk)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert b'"id":"c1","object":"chat.completion.chunk"' in event  # compact, as OpenAI
    decoded = json.loads(event[6:-2])
    assert decoded == json.loads(json.dumps(_dump(chunk)))
    whole = ChatCompletion.model_validate(
        {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
    )
    assert json.loads(completion_bytes(whole))["choices"][0]["message"]["content"] == "ok"


def test_a_lone_surrogate_is_escaped_not_fatal() -> None:
    from chatkit import ChatCompletionChunk

    # Providers that parse with json.loads can hand one on; JSON allows it escaped.
    chunk = ChatCompletionChunk.model_validate({"choices": [{"delta": {"content": "a\ud800b"}}]})
    event = chunk_bytes(chunk)
    assert b"\\ud800" in event
    assert json.loads(event[6:-2])["choices"][0]["delta"]["content"] == "a\ud800b"


async def test_the_gateway_listens_with_a_deep_accept_queue() -> None:
    # aiohttp's default of 128 dropped thousands of connections in a burst.
    async with FakeOpenAIServer() as upstream, gateway(upstream) as url:
        port = url.rsplit(":", 1)[1]
        done = await anyio.run_process(["ss", "-ltnH", f"sport = :{port}"])
    somaxconn = int(await anyio.Path("/proc/sys/net/core/somaxconn").read_text())
    backlogs = [int(line.split()[2]) for line in done.stdout.decode().splitlines()]
    assert backlogs == [min(LISTEN_BACKLOG, somaxconn)]
