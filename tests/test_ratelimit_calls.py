"""Rate and concurrency budgets on real calls, counted on real fake servers.

Time moves by advancing the store's clock, never by sleeping; what reached
each server is read from its request log.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from health_support import Clock

import chatkit
from chatkit import InMemoryStore, RateBudgetError, RateLimit, Timeout
from chatkit.providers import Anthropic, OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]


def limited(server: FakeOpenAIServer, **limits: Any) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="sk-limited", rate_limit=RateLimit(**limits))


def fallback(primary: OpenAI, backup: FakeOpenAIServer, state: InMemoryStore) -> RetryProvider:
    second = OpenAI(base_url=backup.base_url, api_key="sk-backup")
    return RetryProvider(
        [primary, second], single_provider_retry=False, state=state, strategy="ordered"
    )


async def ask(client: chatkit.AsyncClient, stream: bool, **options: Any) -> chatkit.ChatCompletion:
    if stream:
        answer = await client.chat.completions.create(messages=MESSAGES, stream=True, **options)
        async with answer:
            async for _ in answer:
                pass
        final: chatkit.ChatCompletion = answer.get_final_completion()
        return final
    completion: chatkit.ChatCompletion = await client.chat.completions.create(
        messages=MESSAGES, **options
    )
    return completion


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_out_of_requests_is_passed_over_until_its_budget_refills(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    clock = Clock()
    provider = fallback(limited(server, requests_per_minute=2), backup, InMemoryStore(clock))
    async with chatkit.AsyncClient(provider=provider) as client:
        for _ in range(2):
            await ask(client, stream)
        third = await ask(client, stream)
        assert (len(server.requests), len(backup.requests)) == (2, 1)
        skipped = third.attempts[0]
        assert skipped.skipped and isinstance(skipped.error, RateBudgetError)
        assert "rate limit" in str(skipped.error)
        assert third.attempts[1].error is None and third.provider == "OpenAI"
        health = client.health()[0]
        assert health.rate_budget_left is not None
        assert health.rate_budget_left.requests == pytest.approx(0.0)

        clock.now += 30.0  # half a minute refills one of the two requests
        await ask(client, stream)
        assert (len(server.requests), len(backup.requests)) == (3, 1)


async def test_concurrent_callers_never_exceed_the_requests_per_minute(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    provider = fallback(limited(server, requests_per_minute=3), backup, InMemoryStore(Clock()))
    async with chatkit.AsyncClient(provider=provider) as client:
        answers = await asyncio.gather(*(ask(client, stream=True) for _ in range(10)))
    assert all(answer.choices[0].message.content for answer in answers)
    assert (len(server.requests), len(backup.requests)) == (3, 7)


async def test_the_last_choice_waits_for_a_concurrency_slot(server: FakeOpenAIServer) -> None:
    server.default = Behavior(delay=0.02)
    provider = limited(server, max_concurrency=2)
    async with chatkit.AsyncClient(provider=provider) as client:
        answers = await asyncio.gather(*(ask(client, stream=True) for _ in range(6)))
        left = client.health()[0].rate_budget_left
    assert len(answers) == 6 and len(server.requests) == 6
    assert server.peak_streams == 2  # a stream holds its slot until its end
    assert left is not None and left.concurrency == 2


async def test_a_busy_member_is_passed_over_not_waited_on(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    server.default = Behavior(delay=0.02)
    backup.default = Behavior(delay=0.02)
    provider = fallback(limited(server, max_concurrency=1), backup, InMemoryStore())
    async with chatkit.AsyncClient(provider=provider) as client:
        await asyncio.gather(*(ask(client, stream=True) for _ in range(4)))
    assert server.peak_streams == 1
    assert len(server.requests) >= 1 and len(server.requests) + len(backup.requests) == 4


@pytest.mark.parametrize("limits", [{"requests_per_minute": 1000}, {}])
@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limit_headers_stop_requests_before_a_429(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool, limits: dict[str, Any]
) -> None:
    clock = Clock()
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m"}
    server.script(Behavior(headers=exhausted))
    # RateLimit() with no numbers: only the server's headers set the budget.
    provider = fallback(limited(server, **limits), backup, InMemoryStore(clock))
    async with chatkit.AsyncClient(provider=provider) as client:
        await ask(client, stream)
        second = await ask(client, stream)
        assert isinstance(second.attempts[0].error, RateBudgetError)
        assert (len(server.requests), len(backup.requests)) == (1, 1)
        clock.now += 61.0  # the server's reset has passed
        await ask(client, stream)
    assert (len(server.requests), len(backup.requests)) == (2, 1)


async def test_anthropic_rate_limit_headers_are_learned_too(backup: FakeOpenAIServer) -> None:
    clock = Clock()
    reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
    }
    async with FakeAnthropicServer(Behavior(headers=headers)) as vendor:
        primary = Anthropic(
            base_url=vendor.base_url,
            api_key="sk-ant",
            rate_limit=RateLimit(requests_per_minute=1000),
        )
        second = OpenAI(base_url=backup.base_url, api_key="sk-backup")
        state = InMemoryStore(clock)
        provider = RetryProvider(
            [primary, second], single_provider_retry=False, state=state, strategy="ordered"
        )
        async with chatkit.AsyncClient(provider=provider) as client:
            await ask(client, stream=True, model="claude-test")
            await ask(client, stream=True, model="claude-test")
        assert (len(vendor.requests), len(backup.requests)) == (1, 1)


async def test_a_retry_after_blocks_the_provider_for_that_long(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    clock = Clock()
    server.fail(1, 429, retry_after=30)
    provider = fallback(limited(server, requests_per_minute=1000), backup, InMemoryStore(clock))
    async with chatkit.AsyncClient(provider=provider) as client:
        first = await ask(client, stream=False)
        assert isinstance(first.attempts[0].error, chatkit.RateLimitError)
        second = await ask(client, stream=False)
        assert isinstance(second.attempts[0].error, RateBudgetError)
        clock.now += 31.0
        await ask(client, stream=False)
    assert (len(server.requests), len(backup.requests)) == (2, 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_reported_usage_corrects_the_token_estimate(
    server: FakeOpenAIServer, stream: bool
) -> None:
    state = InMemoryStore(Clock())
    provider = limited(server, tokens_per_minute=100_000)
    async with chatkit.AsyncClient(provider=provider, state=state) as client:
        options: dict[str, Any] = {"max_tokens": 500}
        if stream:
            options["stream_options"] = {"include_usage": True}
        answer = await ask(client, stream, **options)
        left = client.health()[0].rate_budget_left
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert left is not None and left.tokens == pytest.approx(100_000 - answer.usage.total_tokens)


async def test_waiting_for_budget_counts_against_the_deadline(server: FakeOpenAIServer) -> None:
    provider = limited(server, requests_per_minute=1)
    state = InMemoryStore(Clock())
    async with chatkit.AsyncClient(provider=provider, state=state, max_retries=0) as client:
        await ask(client, stream=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RateBudgetError, match="rate limit"):
            await ask(client, stream=False, timeout=Timeout(total=2.0))
        assert loop.time() - started < 1.0  # a 60 s wait does not fit: no wait at all
    assert len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_sync_client_passes_an_exhausted_provider_over(stream: bool) -> None:
    with (
        FakeOpenAIServer().run_in_thread() as server,
        FakeOpenAIServer().run_in_thread() as backup,
    ):
        primary = limited(server, requests_per_minute=1)
        provider = fallback(primary, backup, InMemoryStore(Clock()))
        with chatkit.Client(provider=provider) as client:
            texts = []
            for _ in range(2):
                if stream:
                    chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
                    texts.append("".join(chunk.text for chunk in chunks))
                else:
                    answer = client.chat.completions.create(messages=MESSAGES)
                    texts.append(answer.choices[0].message.content or "")
        assert all(texts)
        assert (len(server.requests), len(backup.requests)) == (1, 1)


@pytest.mark.parametrize("bad", [5, {"requests_per_minute": 5}, "fast"])
def test_rate_limit_must_be_a_rate_limit(bad: object) -> None:
    with pytest.raises(chatkit.InvalidRequestError, match="rate_limit") as caught:
        OpenAI(api_key="sk-x", rate_limit=bad)  # type: ignore[arg-type]
    assert caught.value.field == "rate_limit"


async def test_calls_skipped_by_an_open_circuit_do_not_spend_the_budget(
    server: FakeOpenAIServer,
) -> None:
    clock = Clock()
    server.fail(3, 503)
    guard = chatkit.CircuitBreaker(failure_threshold=3, cooldown=10.0, clock=clock)
    client = chatkit.AsyncClient(
        provider=limited(server, requests_per_minute=5),
        max_retries=0,
        breaker=guard,
        state=InMemoryStore(clock),
        timeout=Timeout(total=2.0),
    )
    async with client:
        for _ in range(3):
            with pytest.raises(chatkit.InternalServerError):
                await ask(client, stream=False)
        for _ in range(5):  # the circuit is open: skipped, nothing sent
            with pytest.raises(chatkit.RetryNoProviderError):
                await ask(client, stream=False)
        clock.now += 10.0  # half-open; 2 of the 5 requests are still there
        probe = await ask(client, stream=False)
    assert probe.attempts[-1].ok and len(server.requests) == 4
