"""The circuit breaker against real fake servers, with a controllable clock.

Request counts on the servers say exactly what was sent; time moves by
advancing the breaker's clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from health_support import Clock

import chatkit
from chatkit import CircuitBreaker, InMemoryStore, RetryNoProviderError, Timeout
from chatkit.providers import OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]


def breaker(clock: Clock, **options: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {"failure_threshold": 3, "window": 30.0, "cooldown": 10.0}
    return CircuitBreaker(**(settings | options), clock=clock)


def members_of(*servers: FakeOpenAIServer) -> list[OpenAI]:
    """One OpenAI-compatible member per server, each with a key of its own."""
    return [OpenAI(base_url=s.base_url, api_key=f"sk-{i}") for i, s in enumerate(servers)]


def client_for(server: FakeOpenAIServer, guard: CircuitBreaker) -> chatkit.AsyncClient:
    # A short total: a wait for a half-open circuit (in real seconds) never fits.
    return chatkit.AsyncClient(
        base_url=server.base_url,
        api_key="sk-a",
        max_retries=0,
        breaker=guard,
        timeout=Timeout(total=5),
    )


async def fail_calls(client: chatkit.AsyncClient, n: int, stream: bool = False) -> None:
    for _ in range(n):
        with pytest.raises(chatkit.APIStatusError):
            if stream:
                await client.chat.completions.create(messages=MESSAGES, stream=True)
            else:
                await client.chat.completions.create(messages=MESSAGES)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_provider_is_skipped_then_probed_after_the_cooldown(
    server: FakeOpenAIServer, stream: bool
) -> None:
    clock = Clock()
    server.fail(3, 503)
    async with client_for(server, breaker(clock)) as client:
        await fail_calls(client, 3, stream)
        assert [h.state for h in client.health()] == ["open"]
        with pytest.raises(RetryNoProviderError) as caught:
            await client.chat.completions.create(messages=MESSAGES)
        assert len(server.requests) == 3  # skipped without I/O
        assert "circuit open until" in str(caught.value)
        assert caught.value.attempts[0].skipped
        clock.now += 10.0  # the cooldown has passed: one probe goes through
        reply = await client.chat.completions.create(messages=MESSAGES)
        assert reply.text
        assert len(server.requests) == 4
        (health,) = client.health()
    assert (health.state, health.failures_in_window, health.open_until) == ("closed", 0, None)


async def test_a_failed_probe_reopens_with_the_cooldown_doubled(server: FakeOpenAIServer) -> None:
    clock = Clock()
    server.fail(4, 500)
    async with client_for(server, breaker(clock)) as client:
        await fail_calls(client, 3)
        clock.now += 10.0
        await fail_calls(client, 1)  # the probe fails
        assert len(server.requests) == 4
        clock.now += 10.0  # the first cooldown again: not enough any more
        with pytest.raises(RetryNoProviderError):
            await client.chat.completions.create(messages=MESSAGES)
        assert len(server.requests) == 4
        clock.now += 10.0  # 20 s in all: half-open
        assert (await client.chat.completions.create(messages=MESSAGES)).text
        assert len(server.requests) == 5


async def test_a_cancelled_probe_frees_its_slot_without_closing_the_circuit(
    server: FakeOpenAIServer,
) -> None:
    clock = Clock()
    server.fail(3, 503)
    async with client_for(server, breaker(clock)) as client:
        await fail_calls(client, 3)
        clock.now += 10.0
        server.script(Behavior(stall_after=0, stall_seconds=60))
        probe = asyncio.ensure_future(client.chat.completions.create(messages=MESSAGES))
        # Until the probe reached the server (the fake offers no event for it).
        while len(server.requests) < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert [h.state for h in client.health()] == ["half_open"]  # nothing was learned
        assert (await client.chat.completions.create(messages=MESSAGES)).text  # a new probe
        assert len(server.requests) == 5
        assert [h.state for h in client.health()] == ["closed"]


async def test_failures_outside_the_window_do_not_open_it(server: FakeOpenAIServer) -> None:
    clock = Clock()
    server.fail(5, 502)
    async with client_for(server, breaker(clock)) as client:
        for _ in range(5):  # a flapping provider: never 3 failures within 30 s
            await fail_calls(client, 1)
            clock.now += 16.0
        assert [h.state for h in client.health()] == ["closed"]
        assert len(server.requests) == 5


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_do_not_count(server: FakeOpenAIServer, status: int) -> None:
    clock = Clock()
    server.fail(5, status)
    async with client_for(server, breaker(clock)) as client:
        await fail_calls(client, 5)
        assert len(server.requests) == 5
        assert client.health()[0].state == "closed"


async def test_retry_provider_skips_an_open_member_and_falls_back(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    clock = Clock()
    server.fail(100, 503)
    members = members_of(server, backup)
    provider = RetryProvider(members, shuffle=False, breaker=breaker(clock))
    async with chatkit.AsyncClient(provider) as client:
        for _ in range(5):
            reply = await client.chat.completions.create(messages=MESSAGES)
            assert reply.text
        health = client.health()
    assert len(server.requests) == 3  # then tried last: calls 4 and 5 went to the backup first
    assert len(backup.requests) == 5
    assert [a.provider for a in reply.attempts] == ["OpenAI"] and reply.attempts[0].ok
    assert [h.state for h in health] == ["open", "closed"]
    assert health[0].open_until is not None


async def test_two_keys_of_one_vendor_are_two_breakers(server: FakeOpenAIServer) -> None:
    clock = Clock()
    server.fail(3, 503)
    store = InMemoryStore()
    guard = breaker(clock)
    first = OpenAI(base_url=server.base_url, api_key="sk-a")
    second = OpenAI(base_url=server.base_url, api_key="sk-b")
    async with (
        chatkit.AsyncClient(first, breaker=guard, state=store, max_retries=0) as a,
        chatkit.AsyncClient(second, breaker=guard, state=store, max_retries=0) as b,
    ):
        await fail_calls(a, 3)
        assert a.health()[0].state == "open"
        assert b.health()[0].state == "closed"
        assert (await b.chat.completions.create(messages=MESSAGES)).text
    assert "sk-a" not in repr(store._breakers) and "sk-b" not in repr(store._breakers)


async def test_half_open_lets_only_its_probes_through(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    clock = Clock()
    server.fail(3, 503)
    members = members_of(server, backup)
    provider = RetryProvider(members, shuffle=False, breaker=breaker(clock))
    async with chatkit.AsyncClient(provider) as client:
        for _ in range(3):
            await client.chat.completions.create(messages=MESSAGES)
        clock.now += 10.0
        # The probe's first token is slow; the calls started meanwhile go elsewhere.
        server.script(Behavior(stall_after=0, stall_seconds=0.3))
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        probe = asyncio.ensure_future(stream.until_done())
        await asyncio.sleep(0)  # the probe takes its slot before its first await on I/O
        others = await asyncio.gather(
            *(client.chat.completions.create(messages=MESSAGES) for _ in range(2))
        )
        answered = await probe
    assert len(server.requests) == 4
    assert answered.text and all(r.attempts[0].skipped for r in others)
    assert len(backup.requests) == 3 + 2  # the three failures fell back too
    assert "half-open" in others[0].attempts[0].describe()


async def test_all_open_waits_for_the_half_open_when_the_deadline_allows(
    server: FakeOpenAIServer,
) -> None:
    server.fail(2, 503)
    guard = CircuitBreaker(failure_threshold=2, cooldown=0.2, window=30.0)  # the real clock
    async with chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", max_retries=0, breaker=guard
    ) as client:
        await fail_calls(client, 2)
        reply = await client.chat.completions.create(messages=MESSAGES)
    assert reply.text
    assert len(server.requests) == 3
    assert reply.attempts[0].skipped and reply.attempts[-1].ok


def test_the_sync_client_takes_a_breaker() -> None:
    with FakeOpenAIServer().run_in_thread() as server:
        server.fail(5, 503)
        with chatkit.Client(
            base_url=server.base_url,
            api_key="sk",
            max_retries=0,
            breaker=True,  # the defaults: a 30 s cooldown, longer than the 5 s total
            timeout=Timeout(total=5),
        ) as client:
            for _ in range(5):
                with pytest.raises(chatkit.InternalServerError):
                    client.chat.completions.create(messages=MESSAGES)
            with pytest.raises(RetryNoProviderError):
                for _ in client.chat.completions.create(messages=MESSAGES, stream=True):
                    pass
            (health,) = client.health()
        assert len(server.requests) == 5
    assert health.state == "open" and health.provider == "OpenAI"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"window": 0}, "window"),
        ({"cooldown": float("inf")}, "cooldown"),
        ({"half_open_probes": 1.5}, "half_open_probes"),
        ({"cooldown": 60.0, "max_cooldown": 30.0}, "max_cooldown"),
    ],
)
def test_bad_breaker_settings_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        CircuitBreaker(**options)
    assert caught.value.field == field


def test_breaker_and_state_arguments_are_checked() -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        chatkit.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="k", breaker="yes")  # type: ignore[arg-type]
    assert caught.value.field == "breaker"
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        RetryProvider([OpenAI], state=object())  # type: ignore[arg-type]
    assert caught.value.field == "state"


async def test_an_open_member_left_as_the_only_choice_is_skipped_without_io(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    clock = Clock()
    server.fail(100, 503)
    backup.fail(100, 400)  # the backup answers, but with an error that moves on
    members = members_of(server, backup)
    provider = RetryProvider(members, shuffle=False, breaker=breaker(clock))
    async with chatkit.AsyncClient(provider, timeout=Timeout(total=5)) as client:
        for _ in range(4):
            with pytest.raises(chatkit.RetryProviderError) as caught:
                await client.chat.completions.create(messages=MESSAGES)
    assert len(server.requests) == 3
    last = caught.value.attempts
    assert [a.skipped for a in last] == [False, True]
    assert "circuit open until" in last[1].describe()


@pytest.mark.parametrize("stream", [False, True])
async def test_least_busy_prefers_the_member_with_fewer_calls_in_flight(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    members = members_of(server, backup)
    provider = RetryProvider(members, strategy="least_busy")
    server.script(Behavior(stall_after=0, stall_seconds=0.3))
    async with chatkit.AsyncClient(provider) as client:
        busy = client.chat.completions.create(messages=MESSAGES, stream=True)
        pending = asyncio.ensure_future(busy.until_done())
        await asyncio.sleep(0)  # the first call is in flight on the first member
        if stream:
            reply = await client.chat.completions.create(
                messages=MESSAGES, stream=True
            ).until_done()
        else:
            reply = await client.chat.completions.create(messages=MESSAGES)
        await pending
        assert [h.in_flight for h in client.health()] == [0, 0]
    assert (len(server.requests), len(backup.requests)) == (1, 1)
    assert reply.text


async def test_latency_prefers_the_member_with_the_faster_first_token(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> None:
    members = members_of(server, backup)
    provider = RetryProvider(members, strategy="latency")
    server.default = Behavior(stall_after=0, stall_seconds=0.2)
    async with chatkit.AsyncClient(provider) as client:
        for _ in range(4):  # both get a sample first, then the faster one wins
            await client.chat.completions.create(messages=MESSAGES, stream=True).until_done()
        slow, fast = client.health()
    assert (len(server.requests), len(backup.requests)) == (1, 3)
    assert slow.latency is not None and fast.latency is not None and fast.latency < slow.latency


def test_strategy_is_checked_and_the_list_is_never_reordered() -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        RetryProvider([OpenAI], strategy="fastest")  # type: ignore[arg-type]
    assert caught.value.field == "strategy"
    members: list[Any] = [OpenAI(api_key="a"), OpenAI(api_key="b"), OpenAI(api_key="c")]
    listed = list(members)
    provider = RetryProvider(members, strategy="shuffle")
    for _ in range(20):
        provider._order()
    assert members == listed and list(provider.providers) == listed
