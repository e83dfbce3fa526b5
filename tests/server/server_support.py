"""Shared by the gateway tests: run ``create_app`` on a loopback port, read SSE bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web

import chatkit
from chatkit.providers import OpenAI
from chatkit.server import create_app, serve
from chatkit.testing import FakeOpenAIServer

if TYPE_CHECKING:  # the openai package is only a test dependency
    from openai.types.chat import ChatCompletionMessageParam

UPSTREAM_KEY = "sk-upstream-7f3a9c1e5b2d4068"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@asynccontextmanager
async def running(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` in this loop (by default on a free loopback port); yield its URL."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(app, host=host, port=port, on_ready=ready.set_result, stop=stop)
    )
    started: set[asyncio.Future[Any]] = {task, ready}
    await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # a start-up failure
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


def upstream_client(upstream: FakeOpenAIServer, **options: Any) -> chatkit.AsyncClient:
    options.setdefault("max_retries", 0)
    provider = OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY)
    return chatkit.AsyncClient(provider=provider, **options)


@asynccontextmanager
async def gateway(
    upstream: FakeOpenAIServer, *, client_options: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[str]:
    """A gateway in front of ``upstream`` (no client retries unless asked); yield its URL."""
    async with (
        upstream_client(upstream, **(client_options or {})) as client,
        running(create_app(client, **options)) as url,
    ):
        yield url


def sse_events(raw: bytes) -> list[str]:
    """The ``data`` of each event in an SSE body (one ``data:`` line per event here)."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if lines:
            assert len(lines) == 1 and lines[0].startswith("data: "), block
            events.append(lines[0][len("data: ") :])
    return events


def streamed_text(events: list[str]) -> str:
    parts = []
    for data in events:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            parts.append(choice["delta"].get("content") or "")
    return "".join(parts)
