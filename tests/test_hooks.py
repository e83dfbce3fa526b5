"""Call and attempt hooks against real fake servers: what each event says, and
that a hook can neither break a call nor slow one down when none is set."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import chatkit
from chatkit import Attempt
from chatkit.hooks import CallInfo, LoggingHook, request_headers
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
GREETING = "Hello! How can I help you today?"


class Recorder:
    """Every event, as (name, details) tuples; async methods on purpose for some."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.calls: list[CallInfo] = []

    def on_call_start(self, call: CallInfo) -> None:
        self.calls.append(call)
        self.events.append(("call_start", call.model, call.stream))

    async def on_attempt_start(
        self, call: CallInfo, attempt: Attempt, endpoint: str | None
    ) -> None:
        self.events.append(("attempt_start", attempt.provider, endpoint, attempt.hedge))

    def on_attempt_end(self, call: CallInfo, attempt: Attempt) -> None:
        self.events.append(("attempt_end", attempt.provider, attempt.number, attempt.decision))

    async def on_first_content(self, call: CallInfo) -> None:
        assert call.time_to_first_content is not None
        self.events.append(("first_content", call.provider))

    def on_breaker_change(self, call: CallInfo, provider: str, old: str, new: str) -> None:
        self.events.append(("breaker", provider, old, new))

    def on_call_end(self, call: CallInfo) -> None:
        error = type(call.error).__name__ if call.error is not None else None
        self.events.append(("call_end", call.provider, call.finish_reason, call.text, error))


async def ask(client: chatkit.AsyncClient, stream: bool, **options: Any) -> str:
    if stream:
        answer = await client.chat.completions.create(messages=MESSAGES, stream=True, **options)
        async with answer:
            return "".join([chunk.text async for chunk in answer])
    completion = await client.chat.completions.create(messages=MESSAGES, **options)
    return completion.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True])
async def test_a_retry_then_fallback_is_told_event_by_event(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    server.fail(2, 503)
    members = [
        OpenAI(base_url=server.base_url, api_key="sk-a"),
        Groq(base_url=backup.base_url, api_key="sk-b"),
    ]
    provider = RetryProvider(
        members, strategy="ordered", single_provider_retry=True, max_retries=1, backoff_base=0.001
    )
    recorder = Recorder()
    async with chatkit.AsyncClient(provider=provider, hooks=[recorder]) as client:
        assert await ask(client, stream, model="m") == GREETING
    first = [("first_content", "Groq")] if stream else []
    assert recorder.events == [
        ("call_start", "m", stream),
        ("attempt_start", "OpenAI", server.base_url, False),
        ("attempt_end", "OpenAI", 1, "retry"),
        ("attempt_start", "OpenAI", server.base_url, False),
        ("attempt_end", "OpenAI", 2, "next"),
        ("attempt_start", "Groq", backup.base_url, False),
        ("attempt_end", "Groq", 3, "success"),
        *first,
        ("call_end", "Groq", "stop", GREETING, None),
    ]
    (call,) = recorder.calls
    assert call.duration is not None and call.duration > 0
    assert [a.number for a in call.attempts] == [1, 2, 3]


async def test_a_plain_provider_gets_the_same_events(server: FakeOpenAIServer) -> None:
    recorder = Recorder()
    client = chatkit.AsyncClient(base_url=server.base_url, api_key="sk", hooks=[recorder])
    async with client:
        await ask(client, stream=False)
    assert [event[0] for event in recorder.events] == [
        "call_start",
        "attempt_start",
        "attempt_end",
        "call_end",
    ]
    (call,) = recorder.calls
    assert call.usage is not None and call.usage.total_tokens > 0


async def test_hedged_calls_tell_the_hedge_and_the_loser() -> None:
    slow_behavior = Behavior(stall_after=0, stall_seconds=60)
    async with FakeOpenAIServer(slow_behavior) as slow, FakeOpenAIServer() as fast:
        members = [
            OpenAI(base_url=slow.base_url, api_key="sk-a"),
            Groq(base_url=fast.base_url, api_key="sk-b"),
        ]
        provider = RetryProvider(members, strategy="ordered", hedge_after=0.05)
        recorder = Recorder()
        async with chatkit.AsyncClient(provider=provider, hooks=[recorder]) as client:
            await ask(client, stream=True)
        urls = slow.base_url, fast.base_url
    assert recorder.events == [
        ("call_start", "", True),
        ("attempt_start", "OpenAI", urls[0], False),
        ("attempt_start", "Groq", urls[1], True),
        ("attempt_end", "Groq", 1, "success"),
        ("attempt_end", "OpenAI", 2, "lost"),
        ("first_content", "Groq"),
        ("call_end", "Groq", "stop", GREETING, None),
    ]


async def test_a_failed_call_and_an_interrupted_stream_end_with_their_error(
    server: FakeOpenAIServer,
) -> None:
    recorder = Recorder()
    client = chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", max_retries=0, hooks=[recorder]
    )
    async with client:
        server.fail(1, 400)
        with pytest.raises(chatkit.BadRequestError):
            await ask(client, stream=False)
        server.script(Behavior(drop_after=2))
        with pytest.raises(chatkit.StreamInterrupted):
            await ask(client, stream=True)
    ends = [event for event in recorder.events if event[0] == "call_end"]
    assert ends[0] == ("call_end", None, None, "", "BadRequestError")
    assert ends[1][0] == "call_end" and ends[1][4] == "StreamInterrupted"
    assert ends[1][3] == "Hello! How"  # what the caller saw before the drop


async def test_closing_a_stream_early_ends_the_call_without_an_error(
    server: FakeOpenAIServer,
) -> None:
    recorder = Recorder()
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", hooks=[recorder]) as c:
        answer = await c.chat.completions.create(messages=MESSAGES, stream=True)
        async for _ in answer:
            break
        await answer.aclose()
    # The first chunk (the role) was all the caller took: no text, no finish.
    assert recorder.events[-1] == ("call_end", "OpenAI", None, "", None)


async def test_a_failing_hook_is_logged_and_the_call_goes_on(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def on_call_start(self, call: CallInfo) -> None:
            raise RuntimeError("hook bug")

        async def on_attempt_end(self, call: CallInfo, attempt: Attempt) -> None:
            raise ValueError("async hook bug")

    recorder = Recorder()
    hooks = [Broken(), recorder]
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", hooks=hooks) as client:
        with caplog.at_level(logging.ERROR, logger="chatkit"):
            assert await ask(client, stream=True) == GREETING
    failures = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(failures) == 2
    assert recorder.events[-1][0] == "call_end"  # later hooks still ran


async def test_a_hook_adds_headers_to_the_upstream_request(server: FakeOpenAIServer) -> None:
    class Stamp:
        def on_attempt_start(self, call: CallInfo, attempt: Attempt, endpoint: str | None) -> None:
            request_headers.set({"x-trace": f"{call.id}/{attempt.retry}"})

    async with chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", hooks=[Stamp()]
    ) as client:
        await ask(client, stream=False)
    assert server.requests[-1].headers["x-trace"].endswith("/0")
    assert request_headers.get() == {}  # set back once the attempt was sent


def test_the_sync_client_tells_its_hooks_too() -> None:
    recorder = Recorder()
    with (
        FakeOpenAIServer().run_in_thread() as server,
        chatkit.Client(base_url=server.base_url, api_key="sk", hooks=[recorder]) as client,
    ):
        chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
        assert "".join(chunk.text for chunk in chunks) == GREETING
    assert [event[0] for event in recorder.events] == [
        "call_start",
        "attempt_start",
        "attempt_end",
        "first_content",
        "call_end",
    ]


async def test_on_attempt_keeps_working_next_to_hooks(server: FakeOpenAIServer) -> None:
    seen: list[Attempt] = []
    provider = RetryProvider(
        [OpenAI(base_url=server.base_url, api_key="sk")], on_attempt=seen.append
    )
    recorder = Recorder()
    async with chatkit.AsyncClient(provider=provider, hooks=[recorder]) as client:
        await ask(client, stream=False)
    assert len(seen) == 1 and seen[0].ok
    assert ("attempt_end", "OpenAI", 1, "success") in recorder.events


async def test_breaker_changes_are_told(server: FakeOpenAIServer) -> None:
    recorder = Recorder()
    guard = chatkit.CircuitBreaker(failure_threshold=2, window=30, cooldown=30)
    client = chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", max_retries=0, breaker=guard, hooks=[recorder]
    )
    server.fail(2, 503)
    async with client:
        for _ in range(2):
            with pytest.raises(chatkit.InternalServerError):
                await ask(client, stream=False)
    assert ("breaker", "OpenAI", "closed", "open") in recorder.events


async def test_the_logging_hook_writes_one_line_per_call_and_attempt(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(1, 429)
    hook = LoggingHook()
    secret = "sk-logging-7c1d0e9f3a"
    client = chatkit.AsyncClient(base_url=server.base_url, api_key=secret, hooks=[hook])
    async with client:
        with caplog.at_level(logging.INFO, logger="chatkit.calls"):
            await ask(client, stream=True, model="m", extra_body={"backoff": None})
    lines = [r for r in caplog.records if r.name == "chatkit.calls"]
    assert [r.chatkit["event"] for r in lines] == ["attempt", "attempt", "call"]  # type: ignore[attr-defined]
    first, second, call = (r.chatkit for r in lines)  # type: ignore[attr-defined]
    assert (first["outcome"], first["status"], first["error"]) == ("retry", 429, "RateLimitError")
    assert second["outcome"] == "success"
    assert (call["outcome"], call["attempts"], call["model"]) == ("ok", 2, "m")
    assert "ttft_ms" in call and "answer" not in call and "messages" not in call
    assert not [r for r in lines if secret in r.getMessage()]


async def test_the_logging_hook_logs_content_only_when_asked(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = LoggingHook(log_content=True)
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", hooks=[hook]) as client:
        with caplog.at_level(logging.INFO, logger="chatkit.calls"):
            await ask(client, stream=False)
    (call,) = [r.chatkit for r in caplog.records if r.chatkit["event"] == "call"]  # type: ignore[attr-defined]
    assert call["answer"] == GREETING and call["messages"] == MESSAGES


@pytest.mark.parametrize("hooks", [object(), "LoggingHook", [object()]])
def test_bad_hooks_are_refused_before_any_call(hooks: Any) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        chatkit.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="sk", hooks=hooks)
    assert caught.value.field == "hooks"


async def test_cancelling_a_call_ends_it_with_the_cancellation() -> None:
    recorder = Recorder()
    async with FakeOpenAIServer(Behavior(stall_after=0, stall_seconds=60)) as slow:
        client = chatkit.AsyncClient(base_url=slow.base_url, api_key="sk", hooks=[recorder])
        async with client:
            task = asyncio.ensure_future(ask(client, stream=True))
            # Until the request reached the server (the fake offers no event for it).
            while not slow.requests:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert recorder.events[-1] == ("call_end", None, None, "", "CancelledError")
