"""OpenAI-compatible presets and Azure: base URLs, keys, routing, exact requests."""

from __future__ import annotations

from typing import Any

import pytest

import chatkit
from chatkit import providers
from chatkit.providers import PRESETS, AzureOpenAI, Groq, OpenAI, vLLM
from chatkit.providers.presets import preset
from chatkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"


@pytest.fixture
async def server() -> Any:
    async with FakeOpenAIServer() as running:
        yield running


def test_every_required_preset_is_registered() -> None:
    for name in (
        "groq",
        "openrouter",
        "deepseek",
        "together",
        "mistral",
        "fireworks",
        "xai",
        "cerebras",
        "deepinfra",
        "perplexity",
        "vllm",
        "llamacpp",
        "lmstudio",
        "azure",
    ):
        cls = providers.get_provider_class(name)
        assert issubclass(cls, OpenAI), name
    for cls in PRESETS.values():
        assert cls.default_base_url.startswith(("https://", "http://localhost"))


@pytest.mark.parametrize("name", sorted(n for n, c in PRESETS.items() if c.requires_key))
def test_keyed_presets_need_their_key(name: str) -> None:
    cls = PRESETS[name]
    with pytest.raises(chatkit.MissingAuthError) as caught:
        cls()
    assert caught.value.env_var == cls.api_key_env[0]
    assert cls.api_key_env[0] in str(caught.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("stream", [False, True])
async def test_each_preset_speaks_the_openai_wire_format(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, name: str, stream: bool
) -> None:
    cls = PRESETS[name]
    monkeypatch.setenv(cls.base_url_env[0], server.base_url)
    for variable in cls.api_key_env:
        monkeypatch.setenv(variable, f"key-for-{name}")
    async with chatkit.AsyncClient(provider=name) as client:
        if stream:
            result = client.chat.completions.create(messages=HELLO, stream=True)
            async for _ in result:
                pass
            text, answered = result.text, result.provider
        else:
            reply = await client.chat.completions.create(messages=HELLO)
            text, answered = reply.text, reply.provider
    assert text == ANSWER
    assert answered == cls.name
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    # Local servers have no default of their own: they are asked (GET /v1/models).
    assert sent.json["model"] == (cls.default_model or "fake-model")
    if cls.requires_key:
        assert sent.headers["Authorization"] == f"Bearer key-for-{name}"
    else:
        assert "Authorization" not in sent.headers


async def test_prefix_routing_and_env_selection(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test")
    monkeypatch.setenv("GROQ_BASE_URL", server.base_url)
    monkeypatch.setattr(
        providers, "PROVIDERS", {k: v for k, v in providers.PROVIDERS.items() if k != "local"}
    )
    assert providers.default_provider_class() is Groq
    async with chatkit.AsyncClient() as client:
        reply = await client.chat.completions.create(
            model="groq:llama-3.3-70b-versatile", messages=HELLO
        )
    assert reply.provider == "Groq"
    assert server.requests[-1].json["model"] == "llama-3.3-70b-versatile"


async def test_local_server_presets_are_never_picked_automatically() -> None:
    assert not providers.is_configured(vLLM)


async def test_capabilities_are_checked_before_io(server: FakeOpenAIServer) -> None:
    perplexity = PRESETS["perplexity"](api_key="k", base_url=server.base_url)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    async with chatkit.AsyncClient(provider=perplexity) as client:
        with pytest.raises(chatkit.UnsupportedCapabilityError, match="tools"):
            async for _ in client.chat.completions.create(messages=HELLO, tools=tools, stream=True):
                pass
    assert server.requests == []


def test_a_new_preset_is_one_declaration() -> None:
    acme = preset("Acme AI", "https://api.acme.test/v1", "ACME_API_KEY", "acme-1")
    assert acme.name == "Acme AI"
    assert acme.__name__ == "AcmeAI"
    assert acme.base_url_env == ("ACME_AI_BASE_URL",)
    provider = acme(api_key="k")
    assert provider.base_url == "https://api.acme.test/v1"
    assert "k" not in repr(provider).replace("api_key", "")


async def test_azure_uses_api_key_header_and_api_version(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-secret")
    azure = AzureOpenAI(base_url=server.base_url, api_version="2024-10-21")
    async with chatkit.AsyncClient(provider=azure) as client:
        reply = await client.chat.completions.create(messages=HELLO)
        stream = client.chat.completions.create(messages=HELLO, stream=True, extra_query={"x": "1"})
        async for _ in stream:
            pass
    assert reply.provider == "AzureOpenAI" == stream.provider
    for sent in server.requests[-2:]:
        assert sent.headers["api-key"] == "az-secret"
        assert "Authorization" not in sent.headers
        assert sent.query["api-version"] == "2024-10-21"
    assert server.requests[-1].query["x"] == "1"
    assert "az-secret" not in repr(azure)


def test_azure_builds_the_deployment_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(chatkit.MissingAuthError, match="AZURE_OPENAI_ENDPOINT"):
        AzureOpenAI(api_key="k")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt4o")
    with pytest.raises(chatkit.MissingAuthError, match="AZURE_OPENAI_API_KEY"):
        AzureOpenAI()
    assert not AzureOpenAI.is_configured()
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    assert AzureOpenAI.is_configured()
    azure = AzureOpenAI()
    assert azure.base_url == "https://res.openai.azure.com/openai/deployments/gpt4o"
    assert azure.api_version == AzureOpenAI.default_api_version
