"""RetryProvider(fallback_on_empty=True): an answer with no content at all is a
failure before content, so the next provider is tried; never after content."""

from __future__ import annotations

from typing import Any

import pytest
from health_support import ask

import chatkit
from chatkit import EmptyAnswerError
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
GREETING = "Hello! How can I help you today?"


def chain(first: FakeOpenAIServer, second: FakeOpenAIServer, **options: Any) -> RetryProvider:
    members = [
        OpenAI(base_url=first.base_url, api_key="sk-a"),
        Groq(base_url=second.base_url, api_key="sk-b"),
    ]
    return RetryProvider(members, strategy="ordered", **options)


@pytest.mark.parametrize("finish", ["stop", "content_filter", "length"])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_empty_answer_moves_on_to_the_next_provider(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool, finish: str
) -> None:
    server.script(Behavior(chunks=[], finish_reason=finish))
    provider = chain(server, backup, fallback_on_empty=True)
    async with chatkit.AsyncClient(provider=provider) as client:
        text, name, attempts = await ask(client, stream)
    assert (text, name) == (GREETING, "Groq")
    empty = attempts[0].error
    assert isinstance(empty, EmptyAnswerError) and empty.finish_reason == finish
    assert attempts[0].decision == "next" and f"finish_reason={finish}" in attempts[0].describe()
    assert (len(server.requests), len(backup.requests)) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_without_opting_in_an_empty_answer_is_the_answer(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    server.script(Behavior(chunks=[], finish_reason="content_filter"))
    async with chatkit.AsyncClient(provider=chain(server, backup)) as client:
        text, name, attempts = await ask(client, stream)
    assert (text, name, len(attempts)) == ("", "OpenAI", 1)
    assert len(backup.requests) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_never_after_content(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    server.script(Behavior(chunks=["Partial"], finish_reason="content_filter"))
    provider = chain(server, backup, fallback_on_empty=True)
    async with chatkit.AsyncClient(provider=provider) as client:
        text, name, _ = await ask(client, stream)
    assert (text, name) == ("Partial", "OpenAI")
    assert len(backup.requests) == 0


async def test_a_tool_call_is_content(server: FakeOpenAIServer, backup: FakeOpenAIServer) -> None:
    call = {"id": "call_1", "name": "lookup", "arguments": "{}"}
    server.script(Behavior(chunks=[], tool_calls=[call]))
    provider = chain(server, backup, fallback_on_empty=True)
    async with chatkit.AsyncClient(provider=provider) as client:
        completion = await client.chat.completions.create(messages=MESSAGES)
    assert completion.provider == "OpenAI" and completion.choices[0].message.tool_calls


@pytest.mark.parametrize("stream", [False, True])
async def test_every_provider_empty_fails_with_every_attempt(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    server.default = backup.default = Behavior(chunks=[])
    provider = chain(server, backup, fallback_on_empty=True)
    async with chatkit.AsyncClient(provider=provider) as client:
        with pytest.raises(chatkit.RetryProviderError) as caught:
            await ask(client, stream)
    assert [type(a.error) for a in caught.value.attempts] == [EmptyAnswerError] * 2


def test_the_sync_client_falls_back_too() -> None:
    with (
        FakeOpenAIServer(Behavior(chunks=[])).run_in_thread() as empty,
        FakeOpenAIServer().run_in_thread() as full,
        chatkit.Client(provider=chain(empty, full, fallback_on_empty=True)) as client,
    ):
        chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
        assert "".join(chunk.text for chunk in chunks) == GREETING
        assert chunks.provider == "Groq"
