"""client.count_tokens(): the provider's counting endpoint where it has one
(Anthropic, Gemini), otherwise an estimate that says it is one."""

from __future__ import annotations

import pytest

import chatkit
from chatkit.providers import Anthropic, Gemini
from chatkit.testing import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
WORDS = 2 + 6  # the fakes count words: the system prompt and the question
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


async def test_anthropic_counts_with_its_endpoint() -> None:
    async with FakeAnthropicServer(api_key="sk-ant") as server:
        provider = Anthropic(base_url=server.base_url, api_key="sk-ant")
        async with chatkit.AsyncClient(provider=provider) as client:
            count = await client.count_tokens(MESSAGES, "claude-x", tools=TOOLS)
        sent = server.requests[-1]
    assert count == chatkit.TokenCount(
        WORDS, estimated=False, provider="Anthropic", model="claude-x"
    )
    assert sent.path == "/v1/messages/count_tokens"
    assert set(sent.json) == {"model", "messages", "system", "tools"}  # no max_tokens, no stream
    assert sent.json["system"] == "Be brief." and sent.json["tools"][0]["name"] == "lookup"


async def test_gemini_counts_with_its_endpoint() -> None:
    async with FakeGeminiServer(api_key="g-key") as server:
        provider = Gemini(base_url=server.base_url, api_key="g-key")
        async with chatkit.AsyncClient(provider=provider) as client:
            count = await client.count_tokens(MESSAGES)
        sent = server.requests[-1]
    assert (count.tokens, count.estimated, count.model) == (WORDS, False, "gemini-2.5-flash")
    assert sent.path.endswith("/models/gemini-2.5-flash:countTokens")
    request = sent.json["generateContentRequest"]
    assert request["model"] == "models/gemini-2.5-flash" and "systemInstruction" in request


async def test_a_provider_without_an_endpoint_gets_an_estimate_and_no_request(
    server: FakeOpenAIServer,
) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
        plain = await client.count_tokens(MESSAGES, "gpt-4o-mini")
        with_tools = await client.count_tokens(MESSAGES, "gpt-4o-mini", tools=TOOLS)
    assert plain.estimated and plain.provider == "OpenAI" and plain.tokens > 0
    assert with_tools.tokens > plain.tokens
    assert server.requests == []


async def test_a_routing_prefix_picks_the_provider(server: FakeOpenAIServer) -> None:
    async with FakeAnthropicServer(api_key="sk-ant") as anthropic:
        provider = Anthropic(base_url=anthropic.base_url, api_key="sk-ant")
        async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
            count = await client.count_tokens(MESSAGES, provider=provider)
    assert (count.provider, count.estimated) == ("Anthropic", False)
    assert count.model == provider.default_model


async def test_bad_input_fails_before_any_request(server: FakeOpenAIServer) -> None:
    async with FakeAnthropicServer(api_key="sk-ant") as anthropic:
        provider = Anthropic(base_url=anthropic.base_url, api_key="sk-ant")
        async with chatkit.AsyncClient(provider=provider) as client:
            with pytest.raises(chatkit.InvalidRequestError) as caught:
                await client.count_tokens([{"role": "user"}])
        assert anthropic.requests == []
    assert caught.value.field is not None and "messages" in caught.value.field


async def test_an_upstream_error_is_the_typed_error() -> None:
    async with FakeAnthropicServer(api_key="sk-ant") as server:
        provider = Anthropic(base_url=server.base_url, api_key="wrong")
        async with chatkit.AsyncClient(provider=provider) as client:
            with pytest.raises(chatkit.AuthenticationError):
                await client.count_tokens(MESSAGES)


def test_the_sync_client_counts_too() -> None:
    with (
        FakeOpenAIServer().run_in_thread() as server,
        chatkit.Client(base_url=server.base_url, api_key="sk") as client,
    ):
        count = client.count_tokens(MESSAGES)
    assert count.estimated and count.tokens > 0
