"""Provider resolution, the registry and its entry points, and parse()."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import chatkit
from chatkit import providers
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def server() -> Any:
    async with FakeOpenAIServer() as running:
        yield running


async def test_env_key_selects_the_provider(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    assert providers.default_provider_class() is OpenAI
    async with chatkit.AsyncClient() as client:
        reply = await client.chat.completions.create(messages=HELLO)
    assert reply.provider == "OpenAI"
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-env"


async def test_nothing_configured_says_how_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "PROVIDERS", {"openai": OpenAI})
    client = chatkit.AsyncClient()  # constructing does no I/O and needs no provider yet
    with pytest.raises(chatkit.MissingAuthError) as caught:
        # Raises while building the call, before a coroutine exists: nothing to await.
        client.chat.completions.create(messages=HELLO)  # type: ignore[unused-coroutine]
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message and "base_url" in message and "chatkit[local]" in message
    await client.aclose()


def test_is_configured_uses_a_class_hook() -> None:
    class Ready:
        @classmethod
        def is_configured(cls) -> bool:
            return True

    class NoKeys:
        api_key_env = ()

    assert providers.is_configured(Ready)
    assert not providers.is_configured(NoKeys)


async def test_prefix_routes_and_is_stripped(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    async with chatkit.AsyncClient() as client:
        await client.chat.completions.create(model="OpenAI:gpt-4.1", messages=HELLO)
    assert server.requests[-1].json["model"] == "gpt-4.1"


async def test_a_colon_that_names_no_provider_is_kept(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        await client.chat.completions.create(model="llama3:8b", messages=HELLO)
    assert server.requests[-1].json["model"] == "llama3:8b"


def test_entry_point_providers_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "acme_chat.py"
    package.write_text(
        textwrap.dedent(
            """
            class AcmeProvider:
                name = "Acme"

                async def stream(self, request, http):
                    yield None
            """
        )
    )
    dist = tmp_path / "acme_chat-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-chat\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[chatkit.providers]\nacme = acme_chat:AcmeProvider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "PROVIDERS", dict(providers.PROVIDERS))
    cls = providers.get_provider_class("acme")
    assert cls.__name__ == "AcmeProvider"
    assert providers.PROVIDERS["acme"] is cls
    with pytest.raises(chatkit.ProviderNotFoundError, match="acme"):
        providers.get_provider_class("still-unknown")
    sys.modules.pop("acme_chat", None)


class City(BaseModel):
    name: str
    population: int


async def test_parse_returns_the_validated_object(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text='{"name": "Paris", "population": 2100000}'))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        completion = await client.chat.completions.parse(messages=HELLO, response_format=City)
    assert isinstance(completion, chatkit.ParsedChatCompletion)
    assert completion.parsed == City(name="Paris", population=2100000)
    assert completion.choices[0].message.parsed is completion.parsed
    sent = server.requests[-1].json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "City"
    assert sent["json_schema"]["schema"]["properties"]["population"]["type"] == "integer"


async def test_parse_tolerates_a_code_fence(server: FakeOpenAIServer) -> None:
    server.script(Behavior(chunks=["```json\n", '{"name": "Oslo", "population": 1}', "\n```"]))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        city = (await client.chat.completions.parse(messages=HELLO, response_format=City)).parsed
    assert city is not None and city.name == "Oslo"


async def test_parse_rejects_an_answer_that_does_not_validate(server: FakeOpenAIServer) -> None:
    server.script(Behavior(text='{"name": "Paris"}'))
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.ResponseDecodeError, match="City"):
            await client.chat.completions.parse(messages=HELLO, response_format=City)


async def test_parse_argument_checks(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(chatkit.InvalidRequestError, match="response_format"):
            await client.chat.completions.parse(messages=HELLO, response_format=dict)  # type: ignore[type-var]
        with pytest.raises(chatkit.InvalidRequestError, match="stream"):
            client.chat.completions.parse(messages=HELLO, response_format=City, stream="yes")  # type: ignore[call-overload]
    assert server.requests == []


async def test_the_client_makes_one_instance_per_class_and_closes_it(
    server: FakeOpenAIServer,
) -> None:
    closed: list[str] = []

    class Closing(OpenAI):
        name = "Closing"

        async def aclose(self) -> None:
            closed.append(self.name)

    client = chatkit.AsyncClient(base_url=server.base_url)
    first = client._instantiate(Closing)
    assert client._instantiate(Closing) is first
    reply = await client.chat.completions.create(messages=HELLO, provider=Closing)
    assert reply.provider == "Closing"
    await client.aclose()
    assert closed == ["Closing"]
    await client.aclose()
    assert closed == ["Closing"]
