"""RetryProvider / IterListProvider against real fake servers: the eight
semantics of the retry issue, one group of tests each, through the async
and the sync client (see docs/retries.md)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anyio
import pytest
import transport_probe
from test_retry_harness import (
    CLIENT_KINDS,
    MESSAGES,
    SYNC_MISSING,
    Client,
    answer,
    ask,
    failing,
    leftover_tasks,
    named,
    refused_url,
    serve,
    wait_until,
)

import chatkit
from chatkit import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    Attempt,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    MissingAuthError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    RetryNoProviderError,
    RetryProvider,
    RetryProviderError,
    StreamInterrupted,
    Timeout,
    UnprocessableEntityError,
)
from chatkit.providers import IterListProvider, OpenAI
from chatkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.anyio
STREAMS = [pytest.param(True, id="stream"), pytest.param(False, id="complete")]
P_TEXT = "Primary says hello to you"
B_TEXT = "Backup says hi"
FAST = {"backoff_base": 0.001, "backoff_max": 0.002}


def pair(p_url: str, b_url: str, **options: Any) -> RetryProvider:
    options.setdefault("shuffle", False)
    options.update(FAST)
    return RetryProvider([named("P", p_url), named("B", b_url)], **options)


# -- 1. retried on the same provider ---------------------------------------------------

RETRYABLE = [
    pytest.param([answer(reset=True)], APIConnectionError, id="reset"),
    pytest.param(failing(1, 408), APIStatusError, id="408"),
    pytest.param(failing(1, 409), ConflictError, id="409"),
    pytest.param(failing(1, 429), RateLimitError, id="429"),
    pytest.param(failing(1, 500), InternalServerError, id="500"),
    pytest.param(failing(1, 502), InternalServerError, id="502"),
    pytest.param(failing(1, 503), InternalServerError, id="503"),
    pytest.param(failing(1, 529), OverloadedError, id="529"),
    pytest.param([answer(error_event_after=0)], InternalServerError, id="error-event"),
    pytest.param(
        [answer(error_event_after=0, error_event_type="overloaded_error")],
        OverloadedError,
        id="overloaded-event",
    ),
    pytest.param(
        [answer(error_event_after=0, error_event_type="rate_limit_error")],
        RateLimitError,
        id="rate-limit-event",
    ),
    pytest.param([answer(stall_after=0, stall_seconds=30)], APITimeoutError, id="stall"),
]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize(("fault", "error_type"), RETRYABLE)
async def test_retryable_errors_are_retried_on_the_same_provider(
    kind: str, stream: bool, fault: list[chatkit.testing.Behavior], error_type: type
) -> None:
    with serve(answer(text=P_TEXT), answer(text=B_TEXT)) as (p, b):
        p.script(*fault)
        provider = pair(p.base_url, b.base_url, single_provider_retry=True)
        outcome = await ask(kind, provider, stream=stream, limits=Timeout(read=0.3, total=10))
    assert (outcome.text, outcome.provider, outcome.error) == (P_TEXT, "P", None)
    first, second = outcome.attempts
    assert type(first.error) is error_type
    assert first.delay is not None
    assert (second.provider, second.ok) == ("P", True)
    assert len(b.requests) == 0
    assert (outcome.open_connections, outcome.leftover_tasks) == (0, 0)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_connection_refused_is_retried_then_falls_back(kind: str) -> None:
    with serve(answer(text=B_TEXT)) as (b,):
        provider = pair(refused_url(), b.base_url, single_provider_retry=True, max_retries=2)
        outcome = await ask(kind, provider, stream=True)
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    assert outcome.providers_tried == ["P", "P", "P", "B"]
    assert all(isinstance(a.error, APIConnectionError) for a in outcome.attempts[:3])
    assert [a.delay is not None for a in outcome.attempts[:3]] == [True, True, False]


# -- 2. not retried, moved on ------------------------------------------------------------

NOT_RETRYABLE = [
    pytest.param(400, BadRequestError, id="400"),
    pytest.param(401, AuthenticationError, id="401"),
    pytest.param(403, PermissionDeniedError, id="403"),
    pytest.param(404, NotFoundError, id="404"),
    pytest.param(422, UnprocessableEntityError, id="422"),
]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize(("status", "error_type"), NOT_RETRYABLE)
async def test_client_errors_move_on_to_the_next_provider(
    kind: str, stream: bool, status: int, error_type: type
) -> None:
    with serve(answer(status=status), answer(text=B_TEXT)) as (p, b):
        provider = pair(p.base_url, b.base_url, single_provider_retry=True, max_retries=3)
        outcome = await ask(kind, provider, stream=stream)
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    assert outcome.providers_tried == ["P", "B"]
    assert type(outcome.attempts[0].error) is error_type
    assert outcome.attempts[0].delay is None
    assert len(p.requests) == 1


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_wrong_api_key_moves_on(kind: str) -> None:
    keyed = FakeOpenAIServer(answer(text=P_TEXT), api_key="sk-right")
    with keyed.run_in_thread() as p, serve(answer(text=B_TEXT)) as (b,):
        provider = RetryProvider(
            [named("P", p.base_url, api_key="sk-wrong"), named("B", b.base_url)],
            shuffle=False,
            single_provider_retry=True,
        )
        outcome = await ask(kind, provider, stream=True)
    assert outcome.provider == "B"
    assert isinstance(outcome.attempts[0].error, AuthenticationError)
    assert "sk-wrong" not in outcome.attempts[0].describe()
    assert len(p.requests) == 1


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_a_provider_class_without_credentials_is_skipped(kind: str, stream: bool) -> None:
    with serve(answer(text=B_TEXT)) as (b,):
        keyed = type("Keyed", (OpenAI,), {"name": "Keyed", "default_base_url": b.base_url})
        provider = RetryProvider([keyed, named("B", b.base_url)], shuffle=False)
        outcome = await ask(kind, provider, stream=stream)
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    skipped, answered = outcome.attempts
    assert skipped.skipped and isinstance(skipped.error, MissingAuthError)
    assert skipped.describe().startswith("Keyed: skipped: MissingAuthError:")
    assert "OPENAI_API_KEY" in skipped.describe()
    assert answered.ok
    assert len(b.requests) == 1


# -- 3. Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize(
    ("hint", "delay"),
    [({"retry_after_ms": 30}, 0.03), ({"retry_after": 0.05}, 0.05), ({"retry_after": 0}, 0.0)],
)
async def test_retry_after_is_honoured(kind: str, hint: dict[str, Any], delay: float) -> None:
    with serve(answer(text=P_TEXT), answer(text=B_TEXT)) as (p, b):
        p.script(answer(status=429, **hint))
        provider = pair(p.base_url, b.base_url, single_provider_retry=True)
        outcome = await ask(kind, provider, stream=True)
    assert outcome.provider == "P"
    assert outcome.attempts[0].delay == delay


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_a_hint_over_the_cap_moves_on_at_once(kind: str, stream: bool) -> None:
    with serve(answer(text=P_TEXT), answer(text=B_TEXT)) as (p, b):
        p.script(answer(status=503, retry_after=30))
        provider = pair(p.base_url, b.base_url, single_provider_retry=True, retry_after_max=1)
        outcome = await ask(kind, provider, stream=stream)
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    assert outcome.attempts[0].delay is None
    assert len(p.requests) == 1


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_hint_past_the_deadline_moves_on_at_once(kind: str) -> None:
    with serve(answer(text=P_TEXT), answer(text=B_TEXT)) as (p, b):
        p.script(answer(status=429, retry_after=5))
        provider = pair(p.base_url, b.base_url, single_provider_retry=True)
        outcome = await ask(kind, provider, stream=True, limits=Timeout(total=2))
    assert outcome.provider == "B"
    assert outcome.attempts[0].delay is None
    assert len(p.requests) == 1


# -- 4. the commit point ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_failures_before_content_leave_no_trace(kind: str) -> None:
    with serve(answer(error_event_after=0), answer(text=B_TEXT)) as (p, b):
        outcome = await ask(kind, pair(p.base_url, b.base_url), stream=True)
    assert outcome.text == B_TEXT
    # P's role chunk was held back and dropped: every chunk seen is from B's one answer.
    assert outcome.chunk_providers == {"B"}
    assert len(outcome.chunk_ids) == 1


COMMITTED = [
    pytest.param(answer(text=P_TEXT, drop_after=2), APIConnectionError, "Primary says", id="drop"),
    pytest.param(
        answer(text=P_TEXT, error_event_after=3),
        InternalServerError,
        "Primary says hello",
        id="error-event",
    ),
    pytest.param(
        answer(text=P_TEXT, malformed_after=1), ResponseDecodeError, "Primary", id="malformed"
    ),
    pytest.param(
        answer(text=P_TEXT, reasoning=["Thinking..."], drop_after=1),
        APIConnectionError,
        "",
        id="reasoning-first",
    ),
    pytest.param(
        answer(
            text="", tool_calls=[{"name": "lookup", "arguments": '{"q": "weather"}'}], drop_after=1
        ),
        APIConnectionError,
        "",
        id="tool-call-first",
    ),
]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize(("fault", "cause", "partial"), COMMITTED)
async def test_after_the_first_content_a_failure_is_stream_interrupted(
    kind: str, single: bool, fault: chatkit.testing.Behavior, cause: type, partial: str
) -> None:
    with serve(fault, answer(text=B_TEXT)) as (p, b):
        provider = pair(p.base_url, b.base_url, single_provider_retry=single)
        outcome = await ask(kind, provider, stream=True)
    error = outcome.error
    assert isinstance(error, StreamInterrupted)
    assert (error.partial_text, error.provider) == (partial, "P")
    assert isinstance(error.cause, cause)
    assert error.__cause__ is not None
    assert outcome.text == partial  # what the caller got is exactly the partial text
    assert outcome.chunk_providers == {"P"}
    assert (len(p.requests), len(b.requests)) == (1, 0)  # no re-run, no splice
    assert outcome.providers_tried == ["P"]
    assert (outcome.open_connections, outcome.leftover_tasks) == (0, 0)


# -- 5. when everything fails -------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_all_attempts_failed_lists_each_one(kind: str, stream: bool) -> None:
    with serve(answer(status=503), answer(status=401)) as (p, b):
        provider = pair(p.base_url, b.base_url, single_provider_retry=True, max_retries=1)
        outcome = await ask(kind, provider, stream=stream)
    error = outcome.error
    assert type(error) is RetryProviderError
    lines = str(error).splitlines()
    assert lines[0] == "RetryProvider: all 3 attempts failed:"
    assert lines[1].startswith("  P (attempt 1): InternalServerError: 503 ")
    assert lines[1].endswith("s") and "retrying in" in lines[1]
    assert lines[2].startswith("  P (attempt 2): InternalServerError: 503 ")
    assert lines[3].startswith("  B (attempt 3): AuthenticationError: 401 ")
    assert len(lines) == 4
    assert [type(e) for e in error.exceptions] == [
        InternalServerError,
        InternalServerError,
        AuthenticationError,
    ]
    assert [a.provider for a in error.attempts] == ["P", "P", "B"]
    assert all(isinstance(a, Attempt) for a in error.attempts)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_no_provider_to_try(kind: str, stream: bool) -> None:
    empty = await ask(kind, RetryProvider([]), stream=stream)
    assert type(empty.error) is RetryNoProviderError
    assert "the provider list is empty" in str(empty.error)
    assert empty.attempts == []
    one = type("One", (OpenAI,), {"name": "One"})
    two = type("Two", (OpenAI,), {"name": "Two"})
    skipped = await ask(kind, IterListProvider([one, two], shuffle=False), stream=stream)
    assert type(skipped.error) is RetryNoProviderError
    assert str(skipped.error).splitlines()[1:] == [
        f"  {name}: skipped: MissingAuthError: {name} needs an API key: set OPENAI_API_KEY"
        " or pass api_key=..."
        for name in ("One", "Two")
    ]
    assert [type(e) for e in skipped.error.exceptions] == [MissingAuthError, MissingAuthError]


# -- 6. who answered ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_the_answer_says_who_answered_and_how(kind: str, stream: bool) -> None:
    with serve(answer(status=500), answer(text=B_TEXT)) as (p, b):
        outcome = await ask(kind, pair(p.base_url, b.base_url), stream=stream)
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    assert [(a.provider, a.number, a.ok) for a in outcome.attempts] == [
        ("P", 1, False),
        ("B", 2, True),
    ]
    assert outcome.attempts[1].duration > 0


# -- 7. cancellation -----------------------------------------------------------------------------


async def _consume(client: AsyncClient, stream: bool) -> None:
    if stream:
        async for _ in client.chat.completions.create(messages=MESSAGES, stream=True):
            pass
    else:
        await client.chat.completions.create(messages=MESSAGES)


@pytest.mark.parametrize("stream", STREAMS)
async def test_cancel_during_backoff_sleep(stream: bool) -> None:
    sleeping = anyio.Event()

    def on_attempt(attempt: Attempt) -> None:
        if attempt.delay is not None:
            sleeping.set()

    with serve(answer(status=503, retry_after=30), answer(text=B_TEXT)) as (p, b):
        provider = pair(p.base_url, b.base_url, single_provider_retry=True, on_attempt=on_attempt)
        before = asyncio.all_tasks()
        async with AsyncClient(provider, timeout=Timeout(total=60)) as client:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_consume, client, stream)
                    await sleeping.wait()
                    tg.cancel_scope.cancel()
            assert transport_probe.open_connections(client._transport) == 0
        assert await leftover_tasks(before) == 0
    assert (len(p.requests), len(b.requests)) == (1, 0)


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("stall_after", [0, 1])
async def test_cancel_during_an_attempt_drops_its_connection(
    stream: bool, stall_after: int
) -> None:
    with serve(answer(text=P_TEXT, stall_after=stall_after, stall_seconds=30)) as (p,):
        before = asyncio.all_tasks()
        provider = RetryProvider([named("P", p.base_url)], single_provider_retry=True)
        async with AsyncClient(provider, timeout=Timeout(total=60)) as client:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_consume, client, stream)
                    await wait_until(lambda: len(p.requests) == 1)
                    tg.cancel_scope.cancel()
            assert await p.wait_for_disconnects(1)
            assert transport_probe.open_connections(client._transport) == 0
        assert await leftover_tasks(before) == 0
    assert len(p.requests) == 1


@pytest.mark.parametrize("how", ["aclose", "async-with", "garbage"])
async def test_leaving_a_stream_early_closes_the_upstream(how: str) -> None:
    with serve(answer(text=P_TEXT, stall_after=2, stall_seconds=30)) as (p,):
        before = asyncio.all_tasks()
        async with AsyncClient(RetryProvider([named("P", p.base_url)])) as client:
            chat = client.chat.completions.create(messages=MESSAGES, stream=True)
            if how == "async-with":
                async with chat:
                    async for _ in chat:
                        break
            else:
                async for _ in chat:
                    break
                if how == "aclose":
                    await chat.aclose()
                else:
                    del chat
                    gc.collect()
            assert await p.wait_for_disconnects(1)
            assert transport_probe.open_connections(client._transport) == 0
        assert await leftover_tasks(before) == 0


@pytest.mark.skipif(Client is None, reason=SYNC_MISSING)
@pytest.mark.parametrize("how", ["close", "with"])
async def test_leaving_a_sync_stream_early_closes_the_upstream(how: str) -> None:
    def run(base_url: str) -> None:
        assert Client is not None
        with Client(RetryProvider([named("P", base_url)])) as client:
            chat = client.chat.completions.create(messages=MESSAGES, stream=True)
            if how == "with":
                with chat:
                    for _ in chat:
                        break
            else:
                for _ in chat:
                    break
                chat.close()

    with serve(answer(text=P_TEXT, stall_after=2, stall_seconds=30)) as (p,):
        await anyio.to_thread.run_sync(run, p.base_url)
        assert await p.wait_for_disconnects(1)


# -- 8. the same results everywhere --------------------------------------------------------------

SCENARIOS = [
    pytest.param([failing(1, 500), []], {"single_provider_retry": False}, id="fallback-after-500"),
    pytest.param([failing(2, 503), []], {"single_provider_retry": True}, id="retry-503-twice"),
    pytest.param(
        [failing(5, 503), failing(5, 401)],
        {"single_provider_retry": True, "max_retries": 1},
        id="all-fail",
    ),
    pytest.param([[answer(malformed_after=0)], []], {}, id="malformed-moves-on"),
]


@pytest.mark.parametrize(("scripts", "options"), SCENARIOS)
async def test_streamed_and_not_sync_and_async_agree(
    scripts: list[list[chatkit.testing.Behavior]], options: dict[str, Any]
) -> None:
    kinds = ["async", "sync"] if Client is not None else ["async"]
    summaries = {}
    for kind in kinds:
        for stream in (True, False):
            with serve(answer(text=P_TEXT), answer(text=B_TEXT)) as (p, b):
                p.script(*scripts[0])
                b.script(*scripts[1])
                outcome = await ask(kind, pair(p.base_url, b.base_url, **options), stream=stream)
            summaries[kind, stream] = outcome.summary()
    assert len(set(summaries.values())) == 1, summaries
