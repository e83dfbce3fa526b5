"""Shared by the vendor provider tests (Anthropic, Gemini, Ollama).

Each of those test files drives one provider class against its fake server.
``VendorCalls`` holds what differs between them (the provider class, its
default model and API key) and makes the calls the tests check: one reply,
the request the server recorded, a call refused before any I/O, a finished
stream. ``fake_server_fixture`` builds the ``server`` fixture, and
``raw_server`` serves a hand-written aiohttp handler for byte sequences the
fakes never produce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import chatkit
from chatkit.providers import Provider
from chatkit.testing import FakeOpenAIServer, RecordedRequest

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"  # what every fake server says by default
PNG = "iVBORw0KGgoAAAANSUhEUg=="
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def fake_server_fixture(server_class: Callable[..., FakeOpenAIServer], **options: Any) -> Any:
    """A ``server`` fixture: a running ``server_class(**options)`` for each test."""

    @pytest.fixture(name="server")
    async def server() -> AsyncIterator[FakeOpenAIServer]:
        async with server_class(**options) as running:
            yield running

    return server


async def collect(stream: chatkit.AsyncChatStream) -> list[chatkit.ChatCompletionChunk]:
    return [chunk async for chunk in stream]


@dataclass(frozen=True)
class VendorCalls:
    """Clients and calls for one provider class, against a fake server or a raw URL."""

    provider_class: Callable[..., Provider]
    model: str
    api_key: str | None = None

    def client_for(self, server: FakeOpenAIServer | str, **kwargs: Any) -> chatkit.AsyncClient:
        """A client without retries (unless ``max_retries`` is given); other options go to
        the provider, except ``timeout`` which goes to the client."""
        retries = kwargs.pop("max_retries", 0)
        timeout = kwargs.pop("timeout", None)
        if self.api_key is not None:
            kwargs.setdefault("api_key", self.api_key)
        url = server if isinstance(server, str) else server.base_url
        provider = self.provider_class(base_url=url, **kwargs)
        return chatkit.AsyncClient(provider=provider, max_retries=retries, timeout=timeout)

    async def sent(self, server: FakeOpenAIServer, **create: Any) -> RecordedRequest:
        """Make one non-streamed call and return the request the server received."""
        create.setdefault("messages", HELLO)
        create.setdefault("model", self.model)
        async with self.client_for(server) as client:
            await client.chat.completions.create(**create)
        return server.requests[-1]

    async def sent_body(self, server: FakeOpenAIServer, **create: Any) -> dict[str, Any]:
        body: dict[str, Any] = (await self.sent(server, **create)).json
        return body

    async def refused(
        self, server: FakeOpenAIServer, error: type[Exception], **create: Any
    ) -> Exception:
        """The call fails with ``error`` before anything reaches the server."""
        create.setdefault("messages", HELLO)
        before = len(server.requests)
        async with self.client_for(server) as client:
            with pytest.raises(error) as caught:
                await client.chat.completions.create(model=self.model, **create)
        assert len(server.requests) == before
        return caught.value

    async def stream(
        self, server: FakeOpenAIServer | str, **create: Any
    ) -> chatkit.AsyncChatStream:
        """A finished stream (iterated to the end) from a fresh client."""
        create.setdefault("messages", HELLO)
        create.setdefault("model", self.model)
        retries = create.pop("max_retries", 0)
        async with (
            self.client_for(server, max_retries=retries) as client,
            client.chat.completions.create(stream=True, **create) as result,
        ):
            result.chunks = await collect(result)  # type: ignore[attr-defined]
        return result


@asynccontextmanager
async def raw_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    method: str = "*",
    path: str = "/{tail:.*}",
) -> AsyncIterator[str]:
    """A bare aiohttp server answering ``method`` on ``path`` (by default every request)
    with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
