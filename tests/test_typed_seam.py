"""The typed provider seam: the optional-ability protocols, the aliases users
see, the one deadline helper of the retry loop, and the results both stream
kinds share."""

from __future__ import annotations

import asyncio
import gc
import sys
import textwrap
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import chatkit
from chatkit import providers
from chatkit._outcome import time_limit
from chatkit._retry import RetryingCall, RetryingProvider
from chatkit._streaming import StreamResults
from chatkit._types import ChatCompletion, ChatCompletionChunk, ChoiceDelta, ChunkChoice
from chatkit.providers._base import (
    Provider,
    SupportsAclose,
    SupportsCheckRequest,
    SupportsComplete,
    SupportsListModels,
    is_provider_class,
    provider_name,
    supports_strict_schema,
)
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hello"}]


def _chunk(content: str | None = None, finish: str | None = None) -> ChatCompletionChunk:
    choice = ChunkChoice(delta=ChoiceDelta(content=content), finish_reason=finish)
    return ChatCompletionChunk(id="c1", model="m", choices=[choice])


class _Chunks:
    """An async iterator that is no generator: it has no aclose() to call."""

    def __init__(self, *pieces: str) -> None:
        self._chunks = [_chunk(p) for p in pieces] + [_chunk(finish="stop")]

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)


class Minimal:
    """A third-party provider with nothing but ``stream``, and no ``name``."""

    def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        return _Chunks("Hello", " there")


class WithComplete(Minimal):
    name = "WithComplete"

    async def complete(self, request: Any, http: Any) -> ChatCompletion:
        return ChatCompletion.model_validate(
            {
                "id": "x",
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}],
            }
        )


class NotRetrying(Minimal):
    """Has a ``retrying_call`` but says it does not retry: the client wraps it."""

    name = "NotRetrying"
    handles_retries = False

    def retrying_call(self, request: Any, http: Any) -> RetryingCall:
        raise AssertionError("a provider with handles_retries = False drives no call")


def test_the_protocols_describe_the_builtin_providers() -> None:
    openai = providers.OpenAI(api_key="k")
    for protocol in (Provider, SupportsComplete, SupportsListModels, SupportsCheckRequest):
        assert isinstance(openai, protocol), protocol
    assert isinstance(providers.Local(), SupportsAclose)
    retry = chatkit.RetryProvider([openai])
    assert isinstance(retry, RetryingProvider) and retry.handles_retries
    assert not isinstance(openai, RetryingProvider)
    minimal = Minimal()
    assert isinstance(minimal, Provider)
    for optional in (SupportsComplete, SupportsListModels, SupportsCheckRequest, SupportsAclose):
        assert not isinstance(minimal, optional), optional
    assert is_provider_class(providers.OpenAI) and is_provider_class(Minimal)
    assert not is_provider_class(int)


def test_provider_name_and_strict_schema_read_declared_attributes() -> None:
    assert provider_name(Minimal()) == provider_name(Minimal) == "Minimal"
    assert provider_name(WithComplete()) == "WithComplete"
    assert provider_name(providers.Anthropic) == providers.Anthropic.name
    assert supports_strict_schema(providers.OpenAI(api_key="k"))
    assert not supports_strict_schema(Minimal())


def test_the_aliases_are_public_and_resolve_at_run_time() -> None:
    assert typing.get_args(chatkit.ProviderSpec) == (Provider, type[Provider], str)
    assert typing.get_args(chatkit.TimeoutTypes) == (chatkit.Timeout, float, type(None))
    for signature in (chatkit.AsyncClient.__init__, chatkit.Client.__init__):
        hints = typing.get_type_hints(signature)
        assert hints["provider"] == chatkit.ProviderSpec | None
        assert hints["timeout"] == chatkit.TimeoutTypes


async def test_a_minimal_provider_streams_and_completes_without_aclose() -> None:
    async with chatkit.AsyncClient(Minimal(), max_retries=0) as client:
        stream = await client.chat.completions.create(messages=MESSAGES, stream=True)
        assert [c.text async for c in stream] == ["Hello", " there", ""]
        completion = await client.chat.completions.create(messages=MESSAGES)
        with pytest.raises(chatkit.InvalidRequestError, match="Minimal has no model list"):
            await client.models.list()
    assert stream.text == completion.text == "Hello there"
    assert completion.provider == "Minimal"


async def test_a_dedicated_complete_is_used_for_non_streamed_calls() -> None:
    async with chatkit.AsyncClient(WithComplete()) as client:
        completion = await client.chat.completions.create(messages=MESSAGES)
    assert completion.text == "whole"
    assert [a.provider for a in completion.attempts] == ["WithComplete"]


async def test_handles_retries_false_keeps_the_client_retry_layer() -> None:
    async with chatkit.AsyncClient(NotRetrying(), max_retries=0) as client:
        completion = await client.chat.completions.create(messages=MESSAGES)
        stream = await client.chat.completions.create(messages=MESSAGES, stream=True)
        await stream.until_done()
    assert completion.text == stream.text == "Hello there"
    assert [a.provider for a in stream.attempts] == ["NotRetrying"]


async def test_time_limit_turns_its_own_expiry_into_api_timeout_error() -> None:
    with pytest.raises(chatkit.APITimeoutError) as caught:
        async with time_limit(0.01, "Slow", "nothing within {limit:.3g}s"):
            await anyio.sleep(5)
    assert str(caught.value).startswith("Slow: nothing within 0.01s")
    assert caught.value.provider == "Slow"
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_time_limit_passes_other_timeouts_through() -> None:
    own = TimeoutError("the provider's own")
    with pytest.raises(TimeoutError) as caught:
        async with time_limit(5.0, "P", "unused {limit}"):
            raise own
    assert caught.value is own
    chatkit_timeout = chatkit.APITimeoutError("P: read timeout", provider="P")
    with pytest.raises(chatkit.APITimeoutError) as again:
        async with time_limit(None, "P", "unused {limit}"):
            raise chatkit_timeout
    assert again.value is chatkit_timeout


def test_both_stream_kinds_share_their_results() -> None:
    async def read_async(base_url: str) -> chatkit.AsyncChatStream:
        async with chatkit.AsyncClient(base_url=base_url) as client:
            stream = await client.chat.completions.create(messages=MESSAGES, stream=True)
            await stream.until_done()
        return stream

    with FakeOpenAIServer().run_in_thread() as server:
        server.script(Behavior(text="one two"), Behavior(text="one two"))
        astream = asyncio.run(read_async(server.base_url))
        with chatkit.Client(base_url=server.base_url) as client:
            stream = client.chat.completions.create(messages=MESSAGES, stream=True)
            stream.until_done()
    streams: list[StreamResults] = [astream, stream]
    for made in streams:
        assert made.text == "one two" and made.finish_reason == "stop"
        final = made.get_final_completion()
        assert final.text == "one two" and final.attempts is made.attempts
        assert repr(made).startswith(f"<{type(made).__name__} provider=")
        assert "done" in repr(made)


def test_a_client_that_failed_to_start_is_collected_quietly() -> None:
    with pytest.raises(chatkit.InvalidRequestError):
        chatkit.Client(provider=42)  # type: ignore[arg-type]
    gc.collect()  # __del__ of the half-made client must not raise (warnings are errors)


def test_an_entry_point_that_is_no_provider_class_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_chat.py").write_text(
        textwrap.dedent(
            """
            class NotAProvider:
                name = "Broken"
            """
        )
    )
    dist = tmp_path / "broken_chat-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-chat\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[chatkit.providers]\nbroken = broken_chat:NotAProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "PROVIDERS", dict(providers.PROVIDERS))
    with pytest.raises(chatkit.InvalidRequestError, match=r"NotAProvider.*'broken'") as caught:
        chatkit.AsyncClient("broken")
    assert caught.value.field == "provider"
    assert "broken" not in providers.PROVIDERS
    sys.modules.pop("broken_chat", None)
