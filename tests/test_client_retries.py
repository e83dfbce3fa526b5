"""The client's own ``max_retries`` for its single provider (the RetryPolicy unit)."""

from __future__ import annotations

from typing import Any

import pytest

import chatkit
from chatkit import Timeout
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"


@pytest.fixture
async def server() -> Any:
    async with FakeOpenAIServer() as running:
        yield running


def client_for(server: FakeOpenAIServer, **kwargs: Any) -> chatkit.AsyncClient:
    return chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test", **kwargs)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
@pytest.mark.parametrize("stream", [False, True])
async def test_retryable_statuses_are_retried(
    server: FakeOpenAIServer, status: int, stream: bool
) -> None:
    server.fail(2, status, retry_after_ms=1)
    async with client_for(server, max_retries=2) as client:
        if stream:
            result = client.chat.completions.create(messages=HELLO, stream=True)
            async for _ in result:
                pass
            text, attempts = result.text, result.attempts
        else:
            reply = await client.chat.completions.create(messages=HELLO)
            text, attempts = reply.text, reply.attempts
    assert text == ANSWER
    assert [a.status_code for a in attempts] == [status, status, None]
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(server: FakeOpenAIServer, status: int) -> None:
    server.fail(1, status)
    async with client_for(server, max_retries=3) as client:
        with pytest.raises(chatkit.APIStatusError) as caught:
            await client.chat.completions.create(messages=HELLO)
    assert caught.value.status_code == status
    assert len(server.requests) == 1


async def test_exhausted_retries_raise_the_last_error_with_a_note(server: FakeOpenAIServer) -> None:
    server.fail(5, 503, retry_after_ms=1)
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(chatkit.InternalServerError) as caught:
            await client.chat.completions.create(messages=HELLO)
    assert len(server.requests) == 3
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "3 attempts" in notes


async def test_retry_after_longer_than_the_cap_is_not_slept(server: FakeOpenAIServer) -> None:
    server.fail(1, 429, retry_after=3600)
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(chatkit.RateLimitError):
            await client.chat.completions.create(messages=HELLO)
    assert len(server.requests) == 1


async def test_retry_after_beyond_the_deadline_is_not_slept(server: FakeOpenAIServer) -> None:
    server.fail(1, 503, retry_after=5)
    async with client_for(server, max_retries=2, timeout=Timeout(total=1)) as client:
        with pytest.raises(chatkit.InternalServerError):
            await client.chat.completions.create(messages=HELLO)
    assert len(server.requests) == 1


async def test_connection_errors_before_headers_are_retried(server: FakeOpenAIServer) -> None:
    server.script(Behavior(reset=True))
    async with client_for(server, max_retries=1) as client:
        reply = await client.chat.completions.create(messages=HELLO)
    assert reply.text == ANSWER
    assert isinstance(reply.attempts[0].error, chatkit.APIConnectionError)


async def test_drop_before_content_is_retried_transparently(server: FakeOpenAIServer) -> None:
    server.script(Behavior(drop_after=0))
    async with client_for(server, max_retries=1) as client:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        pieces = [chunk.text async for chunk in stream]
    assert "".join(pieces) == ANSWER
    roles = [p for p in pieces if p == ""]
    assert len(roles) <= 2, "the failed attempt's opening chunk leaked to the caller"


async def test_never_retried_after_the_first_content(server: FakeOpenAIServer) -> None:
    server.script(Behavior(drop_after=2))
    async with client_for(server, max_retries=3) as client:
        with pytest.raises(chatkit.StreamInterrupted) as caught:
            async for _ in client.chat.completions.create(messages=HELLO, stream=True):
                pass
    assert caught.value.partial_text == "Hello! How"
    assert len(server.requests) == 1


async def test_first_token_timeout_retries_a_silent_attempt(server: FakeOpenAIServer) -> None:
    server.script(Behavior(stall_after=0, stall_seconds=30))
    timeout = Timeout(first_token=0.3, read=30)
    async with client_for(server, max_retries=1, timeout=timeout) as client:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        async for _ in stream:
            pass
    assert stream.text == ANSWER
    assert isinstance(stream.attempts[0].error, chatkit.APITimeoutError)
    assert await server.wait_for_disconnects(1, timeout=5)


async def test_x_should_retry_header_overrides_the_status(server: FakeOpenAIServer) -> None:
    server.script(Behavior(status=400, headers={"x-should-retry": "true"}))
    async with client_for(server, max_retries=1) as client:
        assert (await client.chat.completions.create(messages=HELLO)).text == ANSWER
    server.script(Behavior(status=503, headers={"x-should-retry": "false"}))
    async with client_for(server, max_retries=1) as client:
        with pytest.raises(chatkit.InternalServerError):
            await client.chat.completions.create(messages=HELLO)


async def test_max_retries_zero_makes_one_attempt(server: FakeOpenAIServer) -> None:
    server.fail(1, 500)
    async with client_for(server, max_retries=0) as client:
        assert client.max_retries == 0
        with pytest.raises(chatkit.InternalServerError):
            await client.chat.completions.create(messages=HELLO)
    assert len(server.requests) == 1
