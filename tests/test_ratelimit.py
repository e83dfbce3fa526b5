"""The rate budget's arithmetic, driven by a controllable clock (no sleeping).

On real calls: tests/test_ratelimit_calls.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from health_support import Clock

from chatkit import InvalidRequestError
from chatkit._ratelimit import RateBudget, RateLimit, estimate_tokens


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"tokens_per_minute": math.inf}, "tokens_per_minute"),
        ({"tokens_per_minute": math.nan}, "tokens_per_minute"),
        ({"requests_per_minute": True}, "requests_per_minute"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 1.5}, "max_concurrency"),
    ],
)
def test_bad_limits_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RateLimit(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(requests_per_minute=60), clock=clock)
    assert all(budget.try_reserve(0) for _ in range(60))
    for _ in range(60):
        budget.settle(0, None)
    assert not budget.try_reserve(0)
    assert budget.wait_time(0) == pytest.approx(1.0)  # one request per second
    clock.now += 1.0
    assert budget.try_reserve(0)
    assert not budget.try_reserve(0)


def test_max_concurrency_waits_for_a_finishing_call_not_for_time() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(max_concurrency=2), clock=clock)
    assert budget.try_reserve(10) and budget.try_reserve(10)
    assert budget.wait_time(10) == math.inf
    clock.now += 3600
    assert not budget.try_reserve(10)
    budget.settle(10, None)
    assert budget.try_reserve(10)
    assert budget.in_flight == 2


def test_token_estimates_are_corrected_by_the_reported_usage() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(tokens_per_minute=1000), clock=clock)
    assert budget.try_reserve(800)
    budget.settle(800, 100)  # over-estimated: 700 given back
    assert budget.remaining()[1] == pytest.approx(900)
    assert budget.try_reserve(900)
    budget.settle(900, 1500)  # under-estimated: the bucket goes below zero
    assert budget.remaining()[1] == pytest.approx(-600)
    assert budget.wait_time(100) == pytest.approx(42.0)  # 700 tokens at 1000/min
    clock.now += 42.0
    assert budget.try_reserve(100)


def test_openai_headers_lower_the_remaining_budget() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(requests_per_minute=500, tokens_per_minute=10_000), clock=clock)
    budget.learn({"X-RateLimit-Remaining-Requests": "0", "x-ratelimit-remaining-tokens": "50"})
    assert budget.remaining() == (0, 50)
    assert not budget.try_reserve(10)


def test_exhausted_server_budget_blocks_until_its_reset_when_unlimited_here() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(max_concurrency=8), clock=clock)
    budget.learn({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"})
    assert budget.wait_time(0) == pytest.approx(90.0)
    clock.now += 90
    assert budget.try_reserve(0)


def test_anthropic_headers_and_an_rfc3339_reset() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(max_concurrency=8), clock=clock)
    reset = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    budget.learn(
        {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": reset}
    )
    assert 25 < budget.wait_time(0) <= 30


@pytest.mark.parametrize(("value", "seconds"), [("20ms", 0.02), ("6m0s", 360.0), ("1.5s", 1.5)])
def test_openai_reset_durations(value: str, seconds: float) -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(), clock=clock)
    budget.learn({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": value})
    assert budget.wait_time(0) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["nan", "inf", "soon", ""])
def test_unusable_headers_are_ignored(value: str) -> None:
    budget = RateBudget(RateLimit(requests_per_minute=10), clock=Clock())
    budget.learn({"retry-after": value, "x-ratelimit-remaining-requests": value})
    assert budget.wait_time(0) == 0


def test_retry_after_blocks_every_call_until_it_passed() -> None:
    clock = Clock()
    budget = RateBudget(RateLimit(), clock=clock)
    budget.learn({"Retry-After": "12"})
    assert budget.wait_time(0) == pytest.approx(12.0)
    clock.now += 12
    assert budget.wait_time(0) == 0


def test_token_estimate_counts_the_prompt_and_the_answer_bound() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, 50) == pytest.approx(len(repr(messages)) / 4 + 50)
    assert estimate_tokens(messages, None) == pytest.approx(len(repr(messages)) / 4 + 1024)
    assert estimate_tokens(messages, True) == pytest.approx(len(repr(messages)) / 4 + 1024)


def test_a_refund_gives_back_the_request_the_tokens_and_the_slot() -> None:
    clock = Clock()
    limit = RateLimit(requests_per_minute=2, tokens_per_minute=1000, max_concurrency=1)
    budget = RateBudget(limit, clock=clock)
    assert budget.try_reserve(600)
    assert not budget.try_reserve(100)  # the only slot is taken
    budget.refund(600)  # never sent (its circuit was open)
    assert budget.remaining() == (2.0, 1000.0) and budget.in_flight == 0
    assert budget.try_reserve(600)
