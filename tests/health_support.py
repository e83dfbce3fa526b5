"""What the provider-health tests share: a clock they move by hand, one call
read whole, and a one-route chat-completions server for scripted answers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

import chatkit

MESSAGES = [{"role": "user", "content": "Hi"}]


class Clock:
    """Seconds that pass only when a test says so (``clock.now += 10``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def ask(client: chatkit.AsyncClient, stream: bool) -> tuple[str, str | None, list[Any]]:
    """(text, provider, attempts) of one call, streamed or not."""
    if stream:
        answer = await client.chat.completions.create(messages=MESSAGES, stream=True)
        async with answer:
            text = "".join([chunk.text async for chunk in answer])
        return text, answer.provider, answer.attempts
    completion = await client.chat.completions.create(messages=MESSAGES)
    return completion.choices[0].message.content or "", completion.provider, completion.attempts


@contextlib.asynccontextmanager
async def chat_route(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve ``handle`` at ``POST /v1/chat/completions`` on loopback; yield the
    base URL. Handlers are cancelled when their client leaves."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()
