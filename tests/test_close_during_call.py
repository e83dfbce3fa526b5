"""Closing a client while one of its calls is reading a response body.

aiohttp's session close drops the connections in use without telling the
bodies being read from them: before the transport interrupted its open
responses, a read already waiting on a silent server waited forever. Each
test bounds the wait, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from health_support import chat_route

from chatkit import AsyncClient, ClientClosedError, StreamInterrupted
from chatkit.providers import Anthropic, OpenAI
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "hi"}]
BOUND = 10.0  # seconds; a working close ends the read at once


async def _read_rest(stream: object, seen: list[str]) -> BaseException | None:
    try:
        async for chunk in stream:  # type: ignore[attr-defined]
            seen.append(chunk.text)
    except Exception as exc:
        return exc
    return None


async def test_closing_the_client_ends_a_stream_waiting_after_content() -> None:
    silent = Behavior(text="one two three four", stall_after=1, stall_seconds=3600)
    async with FakeOpenAIServer(silent) as upstream:
        client = AsyncClient(provider=OpenAI(base_url=upstream.base_url, api_key="sk-test"))
        stream = client.chat.completions.create(messages=MESSAGES, model="m", stream=True)
        seen: list[str] = []
        async for chunk in stream:
            seen.append(chunk.text)
            if chunk.text:
                break
        reader = asyncio.create_task(_read_rest(stream, seen))
        await asyncio.sleep(0)  # let the reader reach the silent socket
        await client.aclose()
        async with asyncio.timeout(BOUND):
            error = await reader
    assert isinstance(error, StreamInterrupted)
    assert "the client was closed during the call" in str(error)
    assert "".join(seen) == "one"


async def test_closing_the_client_ends_a_stream_waiting_for_its_first_content() -> None:
    silent = Behavior(text="one two", stall_after=0, stall_seconds=3600)
    async with FakeAnthropicServer(silent) as upstream:
        client = AsyncClient(provider=Anthropic(base_url=upstream.base_url, api_key="sk-ant"))
        stream = client.chat.completions.create(messages=MESSAGES, model="m", stream=True)
        reader = asyncio.create_task(_read_rest(stream, []))
        await asyncio.sleep(0)
        await client.aclose()
        async with asyncio.timeout(BOUND):
            error = await reader
    # Nothing was delivered: the plain error, not a broken-off stream, and
    # not retried (retrying a closed client fails the same way).
    assert isinstance(error, ClientClosedError)


async def test_closing_the_client_ends_a_non_streamed_body_half_sent() -> None:
    release, sent = asyncio.Event(), asyncio.Event()

    async def half_a_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": "4096"}
        )
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-1", "object": "chat.completion", ')
        sent.set()
        await release.wait()
        return response

    async with chat_route(half_a_body) as base_url:
        client = AsyncClient(provider=OpenAI(base_url=base_url, api_key="sk-test"), max_retries=0)
        call = asyncio.create_task(client.chat.completions.create(messages=MESSAGES, model="m"))
        await sent.wait()
        # A few loop turns for the client to take the head and wait on the
        # body; were it still before the head, it must fail the same way.
        for _ in range(20):
            await asyncio.sleep(0)
        await client.aclose()
        try:
            async with asyncio.timeout(BOUND):
                with pytest.raises(ClientClosedError):
                    await call
        finally:
            release.set()
