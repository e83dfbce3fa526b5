"""The retry engine: ``RetryPolicy`` decisions, ``Attempt`` lines, and
``RetryingCall`` driven with in-process providers (third-party style: no
chatkit base class, no HTTP), so each rule is pinned down without a server.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import anyio
import pytest

import chatkit
from chatkit import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Attempt,
    AuthenticationError,
    InternalServerError,
    InvalidRequestError,
    IterListProvider,
    MissingAuthError,
    ProxyError,
    ResponseDecodeError,
    RetryNoProviderError,
    RetryPolicy,
    RetryProvider,
    RetryProviderError,
    StreamInterrupted,
    Timeout,
    UnsupportedCapabilityError,
)
from chatkit._errors import error_from_status
from chatkit._request import build_request
from chatkit._retry import RetryingCall
from chatkit._transport import Transport
from chatkit._types import ChatCompletionChunk, ChoiceDelta, ChunkChoice, CompletionUsage

MESSAGES = [{"role": "user", "content": "Say hello"}]
pytestmark = pytest.mark.anyio


def status_error(status: int, **headers: str) -> chatkit.APIStatusError:
    return error_from_status(status, b'{"error": {"message": "nope"}}', headers, provider="P")


# -- RetryPolicy.decide ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "decision"),
    [
        (status_error(408), "retry"),
        (status_error(409), "retry"),
        (status_error(429), "retry"),
        (status_error(500), "retry"),
        (status_error(503), "retry"),
        (status_error(529), "retry"),
        (status_error(400), "next"),
        (status_error(401), "next"),
        (status_error(403), "next"),
        (status_error(404), "next"),
        (status_error(422), "next"),
        (status_error(400, **{"x-should-retry": "true"}), "retry"),
        (status_error(503, **{"X-Should-Retry": "false"}), "next"),
        (APIConnectionError("refused"), "retry"),
        (APITimeoutError("slow"), "retry"),
        (ProxyError("proxy said no"), "retry"),
        (StreamInterrupted("ended early"), "retry"),
        (TimeoutError(), "retry"),
        (ConnectionResetError(), "retry"),
        (ResponseDecodeError("garbage"), "next"),
        (MissingAuthError("no key"), "next"),
        (RetryProviderError("inner chain failed"), "next"),
        (ValueError("a bug"), "next"),
    ],
)
def test_decide(error: BaseException, decision: str) -> None:
    assert RetryPolicy().decide(error) == decision


def test_retry_on_overrides_the_rules_and_none_defers_to_them() -> None:
    def classify(error: BaseException) -> bool | None:
        if isinstance(error, ResponseDecodeError):
            return True
        if isinstance(error, InternalServerError):
            return False
        return None

    policy = RetryPolicy(retry_on=classify)
    assert policy.decide(ResponseDecodeError("garbage")) == "retry"
    assert policy.decide(status_error(503)) == "next"
    assert policy.decide(status_error(429)) == "retry"
    assert policy.decide(status_error(401)) == "next"


def test_retry_statuses_are_configurable() -> None:
    policy = RetryPolicy(retry_statuses=frozenset({425}))
    assert policy.decide(status_error(425)) == "retry"
    assert policy.decide(status_error(429)) == "next"


# -- Retry-After and delays --------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    error = status_error(429, **{"retry-after-ms": "250", "Retry-After": "7"})
    assert RetryPolicy().retry_after(error) == 0.25


def test_retry_after_falls_back_when_ms_is_not_a_number() -> None:
    error = status_error(429, **{"retry-after-ms": "soon", "Retry-After": "3"})
    assert RetryPolicy().retry_after(error) == 3.0


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    hint = RetryPolicy().retry_after(status_error(503, **{"Retry-After": when}))
    assert hint is not None
    assert 25 <= hint <= 31


def test_retry_after_in_the_past_or_garbage() -> None:
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert RetryPolicy().retry_after(status_error(503, **{"Retry-After": past})) == 0.0
    assert RetryPolicy().retry_after(status_error(503, **{"Retry-After": "soonish"})) is None
    assert RetryPolicy().retry_after(status_error(503, **{"Retry-After": "-4"})) == 0.0
    assert RetryPolicy().retry_after(status_error(503)) is None
    assert RetryPolicy().retry_after(APIConnectionError("no headers")) is None


def test_delay_honours_the_hint_up_to_the_cap() -> None:
    policy = RetryPolicy(retry_after_max=5)
    assert policy.delay(status_error(429, **{"Retry-After": "2"}), 0, None) == 2.0
    assert policy.delay(status_error(429, **{"Retry-After": "5"}), 0, None) == 5.0
    assert policy.delay(status_error(429, **{"Retry-After": "6"}), 0, None) is None


def test_delay_moves_on_when_the_wait_would_pass_the_deadline() -> None:
    policy = RetryPolicy()
    assert policy.delay(status_error(429, **{"Retry-After": "2"}), 0, 1.5) is None
    assert policy.delay(status_error(429, **{"Retry-After": "1"}), 0, 1.5) == 1.0
    assert RetryPolicy(backoff_base=10, backoff_max=10).delay(status_error(500), 0, 1e-9) is None


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0)
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        draws = [policy.backoff(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # not a constant: jittered over the range
    assert RetryPolicy(backoff_base=0).backoff(5) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": True},
        {"max_retries": 1.5},
        {"backoff_base": -1},
        {"backoff_max": "1"},
        {"retry_after_max": False},
        {"retry_on": "RateLimitError"},
    ],
)
def test_policy_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == next(iter(kwargs))


# -- Attempt lines -------------------------------------------------------------------


def test_attempt_lines() -> None:
    ok = Attempt("P", 3)
    assert ok.describe() == "P (attempt 3): ok"
    assert ok.ok and ok.status_code is None
    retried = Attempt("P", 1, error=status_error(503), delay=0.25)
    assert str(retried) == "P (attempt 1): InternalServerError: 503 nope; retrying in 0.25s"
    assert retried.status_code == 503 and not retried.ok
    skipped = Attempt("Q", 2, error=MissingAuthError("Q needs an API key"), skipped=True)
    assert skipped.describe() == "Q: skipped: MissingAuthError: Q needs an API key"
    assert not skipped.ok


def test_attempt_line_adds_a_missing_status_and_stays_one_short_line() -> None:
    event = chatkit.OverloadedError("P: error event in stream:\nbusy", status_code=529)
    assert Attempt("P", 1, error=event).describe() == (
        "P (attempt 1): OverloadedError: 529 error event in stream: busy"
    )
    line = Attempt("P", 1, error=ValueError("x" * 1000)).describe()
    assert "\n" not in line and len(line) < 400 and line.endswith("...")
    assert Attempt("P", 1, error=TimeoutError()).describe() == "P (attempt 1): TimeoutError"


# -- in-process providers ----------------------------------------------------------


class Stall:
    """A script step: wait this long (before or after ``text``), then answer."""

    def __init__(self, seconds: float, text: str = "", after: bool = False) -> None:
        self.seconds, self.text, self.after = seconds, text, after


class Broken:
    """A script step: stream ``text``, then raise ``error`` (after content)."""

    def __init__(self, text: str, error: BaseException) -> None:
        self.text, self.error = text, error


def chunk(name: str, index: int, **delta: Any) -> ChatCompletionChunk:
    finish = delta.pop("finish", None)
    choice = ChunkChoice(delta=ChoiceDelta(**delta), finish_reason=finish)
    return ChatCompletionChunk(id=f"{name}-{index}", choices=[choice], provider=name)


class Scripted:
    """A provider in the protocol's minimal shape; each call plays the next step.

    A step is an answer (str), an exception raised before any content, a
    ``Stall`` or a ``Broken``; ``default`` plays once the script is used up.
    """

    def __init__(
        self, name: str, *steps: Any, default: Any = None, usage: bool = False, stamp: bool = True
    ) -> None:
        self.name = name
        self.steps = list(steps)
        self.default = default if default is not None else f"Hello from {name}"
        self.usage = usage
        self.stamp = stamp
        self.calls = 0

    def _chunk(self, call: int, **delta: Any) -> ChatCompletionChunk:
        made = chunk(self.name, call, **delta)
        if not self.stamp:
            made.provider = None
        return made

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        self.calls += 1
        call = self.calls
        step = self.steps.pop(0) if self.steps else self.default
        yield self._chunk(call, role="assistant")
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Stall) and not step.after:
            await anyio.sleep(step.seconds)
        text = step if isinstance(step, str) else step.text
        for piece in re.findall(r"\s*\S+", text):
            yield self._chunk(call, content=piece)
        if isinstance(step, Stall) and step.after:
            await anyio.sleep(step.seconds)
        if isinstance(step, Broken):
            raise step.error
        yield self._chunk(call, finish="stop")
        if self.usage:
            usage = CompletionUsage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
            yield ChatCompletionChunk(id=f"{self.name}-{call}", usage=usage, provider=self.name)


class NeedsKey:
    """A provider class whose constructor finds no credentials."""

    name = "NeedsKey"

    def __init__(self) -> None:
        raise MissingAuthError("NeedsKey needs an API key: set NEEDSKEY_API_KEY")

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        raise AssertionError("never called")
        yield  # pragma: no cover


class NoTools(Scripted):
    def check_request(self, request: Any) -> None:
        if request.params.get("tools"):
            raise UnsupportedCapabilityError("NoTools does not support tools", field="tools")


async def complete(provider: Any, **kwargs: Any) -> Any:
    timeout = kwargs.pop("timeout", Timeout(total=10))
    async with AsyncClient(provider, timeout=timeout) as client:
        return await client.chat.completions.create(messages=MESSAGES, **kwargs)


async def stream_all(provider: Any, **kwargs: Any) -> tuple[str, Any, list[ChatCompletionChunk]]:
    timeout = kwargs.pop("timeout", Timeout(total=10))
    async with AsyncClient(provider, timeout=timeout) as client:
        chunks = []
        async with client.chat.completions.create(messages=MESSAGES, stream=True, **kwargs) as chat:
            async for item in chat:
                chunks.append(item)
        return chat.text, chat, chunks


class Backoff(TypedDict):
    """Keyword arguments for ``RetryProvider`` that make retries wait almost nothing."""

    backoff_base: float
    backoff_max: float


FAST: Backoff = {"backoff_base": 0.001, "backoff_max": 0.002}


# -- the client's single provider (no RetryProvider) -------------------------------


async def test_single_provider_retries_then_reraises_the_last_error_with_a_note() -> None:
    provider = Scripted("P", default=status_error(503))
    async with AsyncClient(provider, max_retries=1) as client:
        client._policy = RetryPolicy(max_retries=1, backoff_base=0.001)
        with pytest.raises(InternalServerError) as info:
            await client.chat.completions.create(messages=MESSAGES)
    assert provider.calls == 2
    assert "chatkit made 2 attempts" in "".join(info.value.__notes__)


async def test_single_provider_without_credentials_raises_missing_auth() -> None:
    with pytest.raises(MissingAuthError):
        await complete(Scripted("P", MissingAuthError("P needs a key")))


async def test_single_provider_with_one_failure_has_no_note() -> None:
    with pytest.raises(AuthenticationError) as info:
        await complete(Scripted("P", status_error(401)))
    assert not getattr(info.value, "__notes__", None)


# -- RetryingCall specifics ------------------------------------------------------------


async def test_on_attempt_sees_every_attempt_and_a_failing_hook_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def hook(attempt: Attempt) -> None:
        seen.append(attempt.describe())
        raise RuntimeError("metrics backend is down")

    provider = RetryProvider(
        [NeedsKey, Scripted("A", status_error(500)), Scripted("B")],
        shuffle=False,
        single_provider_retry=True,
        retry_after_max=0,
        on_attempt=hook,
        **FAST,
    )
    with caplog.at_level(logging.DEBUG, logger="chatkit"):
        completion = await complete(provider)
    assert completion.text == "Hello from A"
    assert seen == [a.describe() for a in completion.attempts]
    assert [a.provider for a in completion.attempts] == ["NeedsKey", "A", "A"]
    assert "on_attempt hook failed" in caplog.text
    assert "RetryProvider: A (attempt 2)" in caplog.text


async def test_missing_credentials_at_call_time_is_a_skip() -> None:
    provider = IterListProvider(
        [Scripted("A", MissingAuthError("A: no key")), Scripted("B")], shuffle=False
    )
    completion = await complete(provider)
    assert completion.provider == "B"
    assert completion.attempts[0].skipped


async def test_a_provider_lacking_a_capability_is_skipped() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    provider = IterListProvider([NoTools("A"), Scripted("B")], shuffle=False)
    completion = await complete(provider, tools=tools)
    assert completion.provider == "B"
    skipped = completion.attempts[0]
    assert skipped.skipped and isinstance(skipped.error, UnsupportedCapabilityError)
    with pytest.raises(RetryNoProviderError, match="NoTools does not support tools"):
        await complete(IterListProvider([NoTools("A")]), tools=tools)


async def test_an_empty_answer_is_an_answer() -> None:
    text, chat, chunks = await stream_all(IterListProvider([Scripted("A", "")]))
    assert text == "" and chat.provider == "A"
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


async def test_first_token_timeout_is_retried_per_attempt() -> None:
    slow = Scripted("A", Stall(30, "too late"), "Hello again")
    provider = RetryProvider([slow], single_provider_retry=True, **FAST)
    text, chat, _ = await stream_all(provider, timeout=Timeout(first_token=0.05, total=10))
    assert text == "Hello again"
    assert isinstance(chat.attempts[0].error, APITimeoutError)
    assert "no content within 0.05s" in str(chat.attempts[0].error)


async def test_a_foreign_timeout_error_is_not_mistaken_for_the_deadline() -> None:
    provider = RetryProvider([Scripted("A", TimeoutError("inner"))], single_provider_retry=True)
    text, chat, _ = await stream_all(provider, timeout=Timeout(first_token=5, total=10))
    assert text == "Hello from A"
    assert type(chat.attempts[0].error) is TimeoutError


@pytest.mark.parametrize("budget", [None, 5])
async def test_usage_only_chunks_pass_through(budget: float | None) -> None:
    provider = RetryProvider([Scripted("A", usage=True)], timeout=budget)
    text, chat, chunks = await stream_all(provider)
    assert text == "Hello from A"
    assert chunks[-1].choices == [] and chat.usage is not None
    assert chat.usage.total_tokens == 5


async def test_unstamped_chunks_are_credited_to_the_provider() -> None:
    provider = IterListProvider([Scripted("A", stamp=False)])
    completion = await complete(provider)
    assert completion.provider == "A"
    text, chat, _ = await stream_all(provider)
    assert (text, chat.attempts[-1].provider) == ("Hello from A", "A")


class PlainIterator:
    """A provider whose stream is an async iterator object, not a generator."""

    name = "Plain"

    def stream(self, request: Any, http: Any) -> PlainIterator:
        self.chunks = [chunk("Plain", 1, content="Hi"), chunk("Plain", 1, finish="stop")]
        return self

    def __aiter__(self) -> PlainIterator:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


async def test_a_stream_without_aclose_is_fine() -> None:
    text, _, _ = await stream_all(IterListProvider([PlainIterator()]))
    assert text == "Hi"
    assert (await complete(IterListProvider([PlainIterator()]))).text == "Hi"


async def test_handles_retries_without_retrying_call_is_a_plain_provider() -> None:
    odd = Scripted("A")
    odd.handles_retries = True  # type: ignore[attr-defined]
    completion = await complete(IterListProvider([odd]))
    assert [a.provider for a in completion.attempts] == ["A"]


# -- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_retry_provider_timeout_bounds_all_attempts(stream: bool) -> None:
    provider = RetryProvider(
        [Scripted("A", default=Stall(30)), Scripted("B", default=Stall(30))],
        shuffle=False,
        timeout=0.1,
    )
    with pytest.raises(RetryProviderError) as info:
        if stream:
            await stream_all(provider)
        else:
            await complete(provider)
    error = info.value
    assert "deadline was reached" in str(error)
    assert [a.provider for a in error.attempts] == ["A"]
    assert isinstance(error.exceptions[0], APITimeoutError)


async def test_retry_provider_timeout_also_bounds_the_streamed_answer() -> None:
    provider = RetryProvider([Scripted("A", Stall(30, "Hello there", after=True))], timeout=0.1)
    with pytest.raises(StreamInterrupted) as info:
        await stream_all(provider)
    assert info.value.partial_text == "Hello there"
    assert isinstance(info.value.cause, APITimeoutError)
    assert "deadline" in str(info.value.cause)


async def test_a_provider_timeout_after_content_under_a_deadline_is_interrupted() -> None:
    broken = Broken("Hello there", APITimeoutError("A: timed out reading the response"))
    provider = RetryProvider([Scripted("A", broken)], timeout=5)
    with pytest.raises(StreamInterrupted) as info:
        await stream_all(provider)
    assert info.value.partial_text == "Hello there"
    assert str(info.value.cause) == "A: timed out reading the response"


async def test_client_deadline_and_retry_provider_timeout_the_earlier_wins() -> None:
    provider = RetryProvider([Scripted("A", default=Stall(30))], timeout=20)
    with pytest.raises(RetryProviderError, match="deadline was reached"):
        await complete(provider, timeout=Timeout(total=0.1))


async def test_out_of_time_before_trying_anything() -> None:
    call = RetryingCall(
        [Scripted("A")],
        build_request(model="", messages=MESSAGES, stream=False, params={}),
        Transport().call(timeout=Timeout(total=10)),
        aggregate=True,
        timeout=10,
    )
    call._deadline = 0.0  # already past: nothing may be started
    with pytest.raises(RetryNoProviderError, match="deadline was reached"):
        await call.complete()


# -- nesting ----------------------------------------------------------------------------


async def test_nested_retry_providers_report_every_leaf_attempt() -> None:
    inner_seen: list[int] = []
    outer_seen: list[int] = []
    inner = RetryProvider(
        [Scripted("A", default=status_error(503)), NeedsKey],
        shuffle=False,
        single_provider_retry=True,
        max_retries=1,
        on_attempt=lambda a: inner_seen.append(a.number),
        name="inner",
        **FAST,
    )
    outer = RetryProvider(
        [inner, Scripted("B")],
        shuffle=False,
        on_attempt=lambda a: outer_seen.append(a.number),
    )
    completion = await complete(outer)
    assert completion.provider == "B"
    assert [(a.provider, a.number) for a in completion.attempts] == [
        ("A", 1),
        ("A", 2),
        ("NeedsKey", 3),
        ("B", 4),
    ]
    assert inner_seen == [1, 2, 3]
    assert outer_seen == [1, 2, 3, 4]


async def test_nested_failure_lists_leaf_attempts_once() -> None:
    inner = RetryProvider([Scripted("A", default=status_error(401))], name="inner")
    outer = RetryProvider([inner, Scripted("B", default=status_error(500))], shuffle=False)
    with pytest.raises(RetryProviderError) as info:
        await complete(outer)
    lines = str(info.value).splitlines()
    assert lines[0] == "RetryProvider: all 2 attempts failed:"
    assert lines[1].startswith("  A (attempt 1): AuthenticationError: 401")
    assert lines[2].startswith("  B (attempt 2): InternalServerError: 500")
    assert [type(e) for e in info.value.exceptions] == [AuthenticationError, InternalServerError]


async def test_nested_all_skipped_is_no_provider() -> None:
    outer = RetryProvider([RetryProvider([NeedsKey]), IterListProvider([])])
    with pytest.raises(RetryNoProviderError) as info:
        await complete(outer)
    assert [a.provider for a in info.value.attempts] == ["NeedsKey"]


async def test_nested_stream_commits_once_and_breaks_off_once() -> None:
    inner = RetryProvider(
        [Scripted("A", status_error(503), Broken("Hello there", APIConnectionError("reset")))],
        single_provider_retry=True,
        **FAST,
    )
    outer = RetryProvider([inner, Scripted("B")], shuffle=False)
    with pytest.raises(StreamInterrupted) as info:
        await stream_all(outer)
    assert info.value.partial_text == "Hello there"
    assert info.value.provider == "A"
    assert isinstance(info.value.cause, APIConnectionError)
    assert "the stream broke off" in str(info.value)


async def test_outer_deadline_cuts_a_nested_call_short() -> None:
    inner = RetryProvider([Scripted("A", default=Stall(30))], name="inner")
    outer = RetryProvider([inner, Scripted("B")], shuffle=False, timeout=0.1)
    for stream in (False, True):
        with pytest.raises(RetryProviderError) as info:
            if stream:
                await stream_all(outer)
            else:
                await complete(outer)
        assert [a.provider for a in info.value.attempts] == ["inner"]
        assert isinstance(info.value.exceptions[0], APITimeoutError)


class Delegate:
    """A third-party wrapper that only knows the provider protocol."""

    name = "Delegate"

    def __init__(self, inner: Any, *, with_complete: bool) -> None:
        self.inner = inner
        if with_complete:
            self.complete = inner.complete

    def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        result: AsyncIterator[ChatCompletionChunk] = self.inner.stream(request, http)
        return result


@pytest.mark.parametrize("with_complete", [False, True])
async def test_retry_provider_is_a_plain_provider_too(with_complete: bool) -> None:
    inner = RetryProvider([Scripted("A", status_error(500))], single_provider_retry=True, **FAST)
    wrapped = IterListProvider([Delegate(inner, with_complete=with_complete)])
    completion = await complete(wrapped)
    assert completion.text == "Hello from A"
    assert completion.provider == "A"
    text, _, _ = await stream_all(wrapped)
    assert text == "Hello from A"


# -- construction ---------------------------------------------------------------------


def test_names_resolve_and_repr_shows_no_secrets() -> None:
    provider = RetryProvider(["openai"], shuffle=False, single_provider_retry=True, max_retries=4)
    assert provider.providers == (chatkit.providers.OpenAI,)
    assert repr(provider) == (
        "RetryProvider([OpenAI], shuffle=False, single_provider_retry=True, max_retries=4)"
    )
    keyed = chatkit.providers.OpenAI(api_key="sk-secret-123", base_url="http://127.0.0.1:9/v1")
    assert "sk-secret" not in repr(IterListProvider([keyed]))
    assert repr(IterListProvider([keyed])) == "IterListProvider([OpenAI], shuffle=True)"


def test_defaults_match_g4f_where_it_is_not_wrong() -> None:
    provider = RetryProvider([Scripted("A")])
    assert provider.shuffle is True
    assert provider.single_provider_retry is False
    assert provider.max_retries == 2
    assert provider.handles_retries is True
    assert isinstance(provider, IterListProvider)
    listed = IterListProvider([Scripted("A")], shuffle=False, name="mine")
    assert (listed.single_provider_retry, listed.name, listed.policy.max_retries) == (
        False,
        "mine",
        0,
    )


def test_policy_and_overrides() -> None:
    base = RetryPolicy(max_retries=7, backoff_base=1.0, retry_after_max=9)
    provider = RetryProvider([Scripted("A")], policy=base, backoff_base=0.25)
    assert provider.policy == RetryPolicy(max_retries=7, backoff_base=0.25, retry_after_max=9)
    assert provider.max_retries == 7


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("openai",), {}, "providers"),
        ((None,), {}, "providers"),
        (([object()],), {}, "providers[0]"),
        (([Scripted("A"), 3],), {}, "providers[1]"),
        (([],), {"timeout": 0}, "timeout"),
        (([],), {"timeout": float("nan")}, "timeout"),
        (([],), {"timeout": True}, "timeout"),
        (([],), {"policy": {"max_retries": 1}}, "policy"),
        (([],), {"on_attempt": "print"}, "on_attempt"),
        (([],), {"max_retries": -1}, "max_retries"),
    ],
)
def test_construction_is_validated(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        RetryProvider(*args, **kwargs)
    assert info.value.field == field


def test_an_unknown_provider_name_fails_at_construction() -> None:
    with pytest.raises(chatkit.ProviderNotFoundError):
        RetryProvider(["no-such-vendor"])


async def test_shuffle_varies_the_order_per_call_and_never_mutates_the_list() -> None:
    a, b = Scripted("A", default=status_error(401)), Scripted("B", default=status_error(401))
    providers = [a, b]
    provider = RetryProvider(providers)
    firsts = set()
    for _ in range(40):  # both orders appear unless the odds are 2**-39
        with pytest.raises(RetryProviderError) as info:
            await complete(provider)
        firsts.add(info.value.attempts[0].provider)
    assert firsts == {"A", "B"}
    assert providers == [a, b]
    ordered = RetryProvider(providers, shuffle=False)
    for _ in range(5):
        with pytest.raises(RetryProviderError) as info:
            await complete(ordered)
        assert [x.provider for x in info.value.attempts] == ["A", "B"]
