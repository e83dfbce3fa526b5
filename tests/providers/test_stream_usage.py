"""Every streamed answer carries usage: chatkit asks OpenAI-compatible servers
for it (``stream_options.include_usage``) and folds the usage-only chunk into
the finishing chunk, unless the caller asked for ``stream_options`` itself."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import chatkit
from chatkit.providers import OpenAI
from chatkit.providers.base import Capabilities
from chatkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]


async def read(
    client: chatkit.AsyncClient, **options: Any
) -> tuple[chatkit.AsyncChatStream, list[chatkit.ChatCompletionChunk]]:
    stream = await client.chat.completions.create(messages=MESSAGES, stream=True, **options)
    async with stream:
        chunks = [chunk async for chunk in stream]
    return stream, chunks


async def test_chatkit_asks_for_usage_and_folds_it_into_the_last_chunk(
    server: FakeOpenAIServer,
) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
        stream, chunks = await read(client)
    assert server.requests[-1].json["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk reached the caller
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.usage is not None
    assert stream.usage == last.usage and stream.usage.total_tokens > 0
    assert stream.get_final_completion().usage == last.usage


async def test_the_callers_own_stream_options_are_kept_and_its_chunk_delivered(
    server: FakeOpenAIServer,
) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
        stream, chunks = await read(client, stream_options={"include_usage": True})
    assert server.requests[-1].json["stream_options"] == {"include_usage": True}
    assert not chunks[-1].choices and chunks[-1].usage is not None  # as OpenAI sends it
    assert stream.usage == chunks[-1].usage


async def test_a_provider_without_stream_usage_is_not_asked_for_it(
    server: FakeOpenAIServer,
) -> None:
    class NoUsage(OpenAI):
        """A server known to reject stream_options."""

        name = "NoUsage"
        capabilities: ClassVar[Capabilities] = Capabilities(stream_usage=False)

    provider = NoUsage(base_url=server.base_url, api_key="sk")
    async with chatkit.AsyncClient(provider=provider) as client:
        stream, _ = await read(client)
    assert "stream_options" not in server.requests[-1].json
    assert stream.usage is None and stream.finish_reason == "stop"


def test_the_sync_client_gets_usage_too() -> None:
    with (
        FakeOpenAIServer().run_in_thread() as server,
        chatkit.Client(base_url=server.base_url, api_key="sk") as client,
    ):
        chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
        for _ in chunks:
            pass
        assert chunks.usage is not None and chunks.usage.total_tokens > 0
