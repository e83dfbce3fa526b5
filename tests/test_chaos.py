"""Chaos matrix: RetryProvider over differently-faulting fake servers.

Every fault x streamed/non-streamed x async/sync client x single_provider_retry
on/off, asserting what the caller receives (exact text, who answered, every
attempt, or the error and its attempts), that the call ends within its
deadline plus a small margin, and that no connection or task is left behind.

P is the faulting primary, B a backup. A *transient* fault hits P's first
request only; a *permanent* one hits every request to both servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_retry_harness import CLIENT_KINDS, answer, ask, named, refused_url, serve

from chatkit import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InternalServerError,
    RateLimitError,
    ResponseDecodeError,
    RetryProvider,
    RetryProviderError,
    StreamInterrupted,
    Timeout,
)
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

P_TEXT = "Primary says hello to you"
B_TEXT = "Backup says hi"
DEADLINE = 5.0
MARGIN = 1.0
TIMEOUT = Timeout(connect=1.0, read=0.15, total=DEADLINE)
MAX_RETRIES = 2
RETRY_AFTER = 0.02


@dataclass(frozen=True)
class Fault:
    """A fault, what the first failed attempt raises, and whether a retry may help."""

    name: str
    behavior: Behavior | None  # None: the server is not even listening
    error: type[BaseException]
    retryable: bool
    stream_error: type[BaseException] | None = None  # when it differs when streamed

    def error_for(self, stream: bool) -> type[BaseException]:
        return self.stream_error if stream and self.stream_error else self.error


FAULTS = [
    Fault("refused", None, APIConnectionError, True),
    Fault("reset-before-headers", answer(reset=True), APIConnectionError, True),
    Fault("429-retry-after", answer(status=429, retry_after=RETRY_AFTER), RateLimitError, True),
    Fault("500", answer(status=500), InternalServerError, True),
    Fault("503", answer(status=503), InternalServerError, True),
    Fault("error-event-first", answer(error_event_after=0), InternalServerError, True),
    Fault(
        "drop-after-2",
        answer(text=P_TEXT, drop_after=2),
        APIConnectionError,
        True,
        stream_error=StreamInterrupted,
    ),
    Fault("stall", answer(stall_after=0, stall_seconds=30), APITimeoutError, True),
    Fault("malformed-chunk", answer(malformed_after=0), ResponseDecodeError, False),
    Fault("401", answer(status=401), AuthenticationError, False),
]
IDS = [f.name for f in FAULTS]
MODES = [pytest.param(True, id="single-retry"), pytest.param(False, id="fallback")]
STREAMS = [pytest.param(True, id="stream"), pytest.param(False, id="complete")]


@contextlib.contextmanager
def endpoint(
    name: str, fault: Fault, *, faulty: bool, transient: bool, text: str
) -> Iterator[tuple[Any, FakeOpenAIServer | None]]:
    """A provider named ``name`` and its server (None when nothing listens)."""
    if faulty and fault.behavior is None:
        yield named(name, refused_url()), None
        return
    healthy = answer(text=text)
    default = fault.behavior if faulty and not transient and fault.behavior else healthy
    with FakeOpenAIServer(default).run_in_thread() as server:
        if faulty and transient and fault.behavior is not None:
            server.script(fault.behavior)
        yield named(name, server.base_url), server


def requests_to(server: FakeOpenAIServer | None) -> int:
    return len(server.requests) if server is not None else 0


def check_clean(outcome: Any) -> None:
    assert outcome.elapsed < DEADLINE + MARGIN
    assert outcome.open_connections == 0
    assert outcome.leftover_tasks == 0


@pytest.mark.parametrize("single", MODES)
@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
async def test_one_fault_on_the_primary(
    fault: Fault, stream: bool, kind: str, single: bool
) -> None:
    """P fails (once when the fault can pass, always when it cannot); B is healthy."""
    transient = fault.behavior is not None and fault.retryable
    with (
        endpoint("P", fault, faulty=True, transient=transient, text=P_TEXT) as (p, p_server),
        endpoint("B", fault, faulty=False, transient=False, text=B_TEXT) as (b, b_server),
    ):
        provider = RetryProvider(
            [p, b],
            shuffle=False,
            single_provider_retry=single,
            max_retries=MAX_RETRIES,
            backoff_base=0.001,
            backoff_max=0.002,
        )
        outcome = await ask(kind, provider, stream=stream, limits=TIMEOUT)
    check_clean(outcome)
    first = outcome.attempts[0]

    if fault.error_for(stream) is StreamInterrupted:
        # Past the commit point: no retry, no fallback, the partial text and its cause.
        error = outcome.error
        assert isinstance(error, StreamInterrupted)
        assert (error.partial_text, error.provider) == ("Primary says", "P")
        assert isinstance(error.cause, APIConnectionError)
        assert outcome.text == "Primary says"
        assert outcome.providers_tried == ["P"]
        assert (requests_to(p_server), requests_to(b_server)) == (1, 0)
        return

    assert outcome.error is None
    assert type(first.error) is fault.error_for(stream)
    if single and transient:
        expected_text, expected_tried = P_TEXT, ["P", "P"]
    elif single and fault.retryable:
        expected_text, expected_tried = B_TEXT, ["P"] * (MAX_RETRIES + 1) + ["B"]
    else:
        expected_text, expected_tried = B_TEXT, ["P", "B"]
    assert (outcome.text, outcome.provider) == (expected_text, expected_tried[-1])
    assert outcome.providers_tried == expected_tried
    assert outcome.attempts[-1].ok
    if fault.name == "429-retry-after" and single:
        assert first.delay == RETRY_AFTER
    if stream:
        assert outcome.chunk_providers == {expected_tried[-1]}
        assert len(outcome.chunk_ids) == 1  # one answer, never two spliced
    assert requests_to(b_server) == expected_tried.count("B")
    if p_server is not None:
        assert requests_to(p_server) == expected_tried.count("P")


@pytest.mark.parametrize("single", MODES)
@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
async def test_the_same_fault_everywhere(
    fault: Fault, stream: bool, kind: str, single: bool
) -> None:
    """P and B both fail every time: which error, with which attempts."""
    with (
        endpoint("P", fault, faulty=True, transient=False, text=P_TEXT) as (p, p_server),
        endpoint("B", fault, faulty=True, transient=False, text=B_TEXT) as (b, b_server),
    ):
        provider = RetryProvider(
            [p, b],
            shuffle=False,
            single_provider_retry=single,
            max_retries=MAX_RETRIES,
            backoff_base=0.001,
            backoff_max=0.002,
        )
        outcome = await ask(kind, provider, stream=stream, limits=TIMEOUT)
    check_clean(outcome)
    error = outcome.error

    if fault.error_for(stream) is StreamInterrupted:
        assert isinstance(error, StreamInterrupted)
        assert (error.partial_text, error.provider) == ("Primary says", "P")
        assert requests_to(b_server) == 0
        return

    assert type(error) is RetryProviderError
    per_provider = MAX_RETRIES + 1 if single and fault.retryable else 1
    expected = ["P"] * per_provider + ["B"] * per_provider
    assert [a.provider for a in error.attempts] == expected
    assert all(type(e) is fault.error_for(stream) for e in error.exceptions)
    lines = str(error).splitlines()
    assert lines[0] == f"RetryProvider: all {len(expected)} attempts failed:"
    assert [line.split(" (attempt")[0].strip() for line in lines[1:]] == expected
    assert all(fault.error.__name__ in line for line in lines[1:])
    assert requests_to(p_server) == (0 if p_server is None else per_provider)
    assert requests_to(b_server) == (0 if b_server is None else per_provider)


# -- the deadline ------------------------------------------------------------------------------

STALL = answer(stall_after=0, stall_seconds=30)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("where", ["client-total", "retry-provider-timeout"])
async def test_one_deadline_covers_every_attempt(kind: str, stream: bool, where: str) -> None:
    deadline = 0.4
    with serve(STALL, STALL) as (p, b):
        own = deadline if where == "retry-provider-timeout" else None
        provider = RetryProvider(
            [named("P", p.base_url), named("B", b.base_url)],
            shuffle=False,
            single_provider_retry=True,
            timeout=own,
        )
        total = deadline if where == "client-total" else 30.0
        timeout = Timeout(connect=1.0, read=None, total=total)
        outcome = await ask(kind, provider, stream=stream, limits=timeout)
    assert outcome.elapsed < deadline + MARGIN
    assert type(outcome.error) is RetryProviderError
    assert "deadline was reached" in str(outcome.error)
    # The stalled attempt used the whole budget: nothing else was started.
    assert [type(a.error) for a in outcome.attempts] == [APITimeoutError]
    assert (len(p.requests), len(b.requests)) == (1, 0)
    assert outcome.open_connections == 0
    assert outcome.leftover_tasks == 0


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_a_retry_after_longer_than_what_is_left_falls_back_at_once(
    kind: str, stream: bool
) -> None:
    with serve(answer(status=429, retry_after=3), answer(text=B_TEXT)) as (p, b):
        provider = RetryProvider(
            [named("P", p.base_url), named("B", b.base_url)],
            shuffle=False,
            single_provider_retry=True,
        )
        outcome = await ask(kind, provider, stream=stream, limits=Timeout(total=1.0))
    assert outcome.elapsed < 1.0 + MARGIN
    assert (outcome.text, outcome.provider) == (B_TEXT, "B")
    assert [a.delay for a in outcome.attempts] == [None, None]
    assert (len(p.requests), len(b.requests)) == (1, 1)
