"""Hedged first tokens against real fake servers: a slow first token and a fast one.

The slow server stalls before its first content for far longer than any
test runs, so the hedge is the only way to an answer in time; what reached
each server (and which connections were dropped) is counted on the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import test_retry_harness as harness
from aiohttp import web
from health_support import ask, chat_route

import chatkit
from chatkit import InMemoryStore, RateLimit, Timeout
from chatkit._health import provider_identity
from chatkit._hedge import Hedging
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
SLOW = Behavior(text="slow answer", stall_after=0, stall_seconds=60)
FAST = Behavior(text="fast answer")
HEDGE_AFTER = 0.2


@pytest.fixture
async def slow() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(SLOW) as running:
        yield running


@pytest.fixture
async def fast() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(FAST) as running:
        yield running


def hedged(first: FakeOpenAIServer, second: FakeOpenAIServer, **options: Any) -> RetryProvider:
    settings: dict[str, Any] = {"hedge_after": HEDGE_AFTER, "strategy": "ordered"}
    members = [
        OpenAI(base_url=first.base_url, api_key="sk-first"),
        Groq(base_url=second.base_url, api_key="sk-second"),
    ]
    return RetryProvider(members, **(settings | options))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_slow_first_token_is_hedged_and_the_fast_answer_wins(
    slow: FakeOpenAIServer, fast: FakeOpenAIServer, stream: bool
) -> None:
    async with chatkit.AsyncClient(provider=hedged(slow, fast)) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        text, provider, attempts = await ask(client, stream)
        elapsed = loop.time() - started
        health = client.health()
    assert (text, provider) == ("fast answer", "Groq")
    assert HEDGE_AFTER <= elapsed < HEDGE_AFTER + 2.0  # the slow server would take 60 s
    assert [(a.provider, a.hedge, a.lost, a.error) for a in attempts] == [
        ("Groq", True, False, None),
        ("OpenAI", False, True, None),
    ]
    assert [a.number for a in attempts] == [1, 2]
    assert "lost the race" in attempts[1].describe()
    assert await slow.wait_for_disconnects(1)  # the loser's connection was closed
    assert fast.disconnects == 0
    assert [h.in_flight for h in health] == [0, 0]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fast_first_token_is_not_hedged(
    fast: FakeOpenAIServer, slow: FakeOpenAIServer, stream: bool
) -> None:
    async with chatkit.AsyncClient(provider=hedged(fast, slow)) as client:
        text, provider, attempts = await ask(client, stream)
    assert (text, provider) == ("fast answer", "OpenAI")
    assert len(attempts) == 1 and not attempts[0].hedge
    assert len(slow.requests) == 0


async def test_a_failure_before_content_falls_back_at_once_not_as_a_hedge(
    slow: FakeOpenAIServer, fast: FakeOpenAIServer
) -> None:
    slow.fail(1, 503)
    async with chatkit.AsyncClient(provider=hedged(slow, fast, hedge_after=30.0)) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        text, _, attempts = await ask(client, stream=True)
        assert loop.time() - started < 5.0  # not the 30 s hedge delay
    assert text == "fast answer"
    assert [(a.provider, a.status_code, a.hedge) for a in attempts] == [
        ("OpenAI", 503, False),
        ("Groq", None, False),
    ]


async def test_the_hedge_budget_bounds_hedges_under_an_outage(
    slow: FakeOpenAIServer, fast: FakeOpenAIServer
) -> None:
    # Every call finds the first provider stalled; only 10% of the last 100
    # calls may hedge, so 10 of 30 concurrent calls do and the rest wait.
    slow.default = Behavior(text="slow answer", stall_after=0, stall_seconds=0.8)
    provider = hedged(slow, fast, hedge_after=0.05, hedge_budget=0.1)
    async with chatkit.AsyncClient(provider=provider) as client:
        results = await asyncio.gather(*(ask(client, stream=True) for _ in range(30)))
    texts = [text for text, _, _ in results]
    assert texts.count("fast answer") == 10 and texts.count("slow answer") == 20
    assert len(fast.requests) == 10


async def test_auto_uses_the_default_before_samples_then_the_p95() -> None:
    store = InMemoryStore()
    member = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-auto")
    hedging = Hedging("auto", floor=0.05, default=0.7)
    assert hedging.delay(member, store) == 0.7
    identity = provider_identity(member)
    for sample in range(1, 101):  # 0.01 .. 1.00 s
        store.record_latency(identity, sample / 100)
    assert hedging.delay(member, store) == pytest.approx(0.96)
    fast_store = InMemoryStore()
    for _ in range(50):
        fast_store.record_latency(identity, 0.001)
    assert hedging.delay(member, fast_store) == 0.05  # never below the floor


async def test_auto_hedges_a_slow_provider_after_the_default(
    slow: FakeOpenAIServer, fast: FakeOpenAIServer
) -> None:
    provider = hedged(slow, fast, hedge_after="auto", hedge_default=0.1)
    async with chatkit.AsyncClient(provider=provider) as client:
        text, provider_name, attempts = await ask(client, stream=True)
    assert (text, provider_name) == ("fast answer", "Groq")
    assert attempts[0].hedge and attempts[1].lost


async def test_cancelling_a_hedged_call_disconnects_both_and_frees_their_slots(
    slow: FakeOpenAIServer,
) -> None:
    async with FakeOpenAIServer(SLOW) as also_slow:
        provider = hedged(slow, also_slow, hedge_after=0.05)
        async with chatkit.AsyncClient(provider=provider) as client:
            call = asyncio.ensure_future(ask(client, stream=True))
            # Until the hedge has been sent (the fake server offers no event for it).
            while len(also_slow.requests) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await slow.wait_for_disconnects(1)
            assert await also_slow.wait_for_disconnects(1)
            assert [h.in_flight for h in client.health()] == [0, 0]


async def test_a_hedge_respects_the_members_rate_limits(
    slow: FakeOpenAIServer, fast: FakeOpenAIServer
) -> None:
    members = [
        OpenAI(base_url=slow.base_url, api_key="sk-first"),
        Groq(base_url=fast.base_url, api_key="sk-second", rate_limit=RateLimit(max_concurrency=1)),
    ]
    provider = RetryProvider(members, strategy="ordered", hedge_after=0.05)
    async with chatkit.AsyncClient(provider=provider) as client:
        text, _, _ = await ask(client, stream=True)
        left = client.health()[1].rate_budget_left
    assert text == "fast answer"
    assert left is not None and left.concurrency == 1  # the winner's slot came back


@pytest.mark.parametrize("stream", [False, True])
def test_sync_client_hedges_too(stream: bool) -> None:
    with (
        FakeOpenAIServer(SLOW).run_in_thread() as slow,
        FakeOpenAIServer(FAST).run_in_thread() as fast,
    ):
        with chatkit.Client(provider=hedged(slow, fast)) as client:
            if stream:
                chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
                text = "".join(chunk.text for chunk in chunks)
                provider = chunks.provider
            else:
                completion = client.chat.completions.create(messages=MESSAGES)
                text, provider = completion.choices[0].message.content or "", completion.provider
        assert (text, provider) == ("fast answer", "Groq")
        assert slow.wait_for_disconnects_sync(1)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"hedge_after": -1}, "hedge_after"),
        ({"hedge_after": "soon"}, "hedge_after"),
        ({"hedge_after": float("inf")}, "hedge_after"),
        ({"hedge_after": 1, "hedge_budget": 2}, "hedge_budget"),
        ({"hedge_after": "auto", "hedge_floor": -0.1}, "hedge_floor"),
        ({"hedge_after": "auto", "hedge_default": "1s"}, "hedge_default"),
    ],
)
def test_bad_hedge_settings_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        RetryProvider([OpenAI], **options)
    assert caught.value.field == field


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_hedged_call_leaks_no_connection_or_task(kind: str, stream: bool) -> None:
    # Both answer with "Connection: close": an idle keep-alive would count as open.
    slow_closing = harness.answer(text="slow answer", stall_after=0, stall_seconds=60)
    with (
        FakeOpenAIServer(slow_closing).run_in_thread() as slow,
        FakeOpenAIServer(harness.answer(text="fast answer")).run_in_thread() as fast,
    ):
        outcome = await harness.ask(kind, hedged(slow, fast), stream=stream)
        assert (outcome.text, outcome.provider) == ("fast answer", "Groq")
        assert (outcome.open_connections, outcome.leftover_tasks) == (0, 0)
        assert await anyio.to_thread.run_sync(slow.wait_for_disconnects_sync, 1)


@contextlib.asynccontextmanager
async def echoing_server(delay: float) -> AsyncIterator[str]:
    """After ``delay``, answer with an error event that quotes the caller's key."""

    async def handle(request: web.Request) -> web.StreamResponse:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(delay)
        error = {"error": {"message": f"key {key} revoked", "type": "server_error"}}
        await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        await response.write_eof()
        return response

    async with chat_route(handle) as url:
        yield url


async def test_each_hedged_attempt_is_scrubbed_of_its_own_key() -> None:
    # The first attempt's error arrives after the hedge was sent with another
    # key: the call's secrets are every request's, not only the last one's.
    first_key, second_key = "sk-first-5f0c2a9e71d4", "sk-second-8b3e6d1f0a27"
    async with echoing_server(0.3) as first, echoing_server(0.6) as second:
        members = [
            OpenAI(base_url=first, api_key=first_key),
            Groq(base_url=second, api_key=second_key),
        ]
        provider = RetryProvider(members, strategy="ordered", hedge_after=0.05)
        async with chatkit.AsyncClient(provider=provider) as client:
            with pytest.raises(chatkit.RetryProviderError) as caught:
                await ask(client, stream=True)
    error = caught.value
    seen = [str(error)] + [repr(a.error) + str(a.error) for a in error.attempts]
    assert len(error.attempts) == 2 and error.attempts[1].hedge
    assert not [text for text in seen if first_key in text or second_key in text]


@contextlib.asynccontextmanager
async def timed_server(
    header_delay: float, content_delay: float, headers: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """Sends its response headers after ``header_delay``, one content chunk
    ``content_delay`` later, then ends the stream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(header_delay)
        sent = {"Content-Type": "text/event-stream", **(headers or {})}
        response = web.StreamResponse(headers=sent)
        await response.prepare(request)
        await asyncio.sleep(content_delay)
        for delta, finish in (({"content": "timed answer"}, None), ({}, "stop")):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [choice],
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with chat_route(handle) as url:
        yield url


async def test_the_winner_learns_its_own_rate_limit_headers_not_the_losers() -> None:
    # The loser's headers (its budget exhausted) arrive after the winner's and
    # before the winner's content: they must not be taken for the winner's.
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m"}
    async with (
        timed_server(0.2, 60.0, exhausted) as loser,
        timed_server(0.0, 0.4) as winner,
    ):
        members = [
            OpenAI(base_url=loser, api_key="sk-loser", rate_limit=RateLimit()),
            Groq(base_url=winner, api_key="sk-winner", rate_limit=RateLimit()),
        ]
        provider = RetryProvider(members, strategy="ordered", hedge_after=0.05)
        async with chatkit.AsyncClient(provider=provider, timeout=Timeout(total=5)) as client:
            text, name, _ = await ask(client, stream=True)
            assert (text, name) == ("timed answer", "Groq")
            # Still open for the next call: nothing said the winner is exhausted.
            second = await client.chat.completions.create(messages=MESSAGES, stream=True)
            async with second:
                assert "".join([chunk.text async for chunk in second]) == "timed answer"
            assert not any(a.skipped for a in second.attempts)
