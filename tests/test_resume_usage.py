"""Usage of a resumed answer: summed over the pieces, with what is known of a broken one.

A piece that breaks off often reports no usage: Anthropic's ``message_start``
still said how many prompt tokens it took (counted, its completion tokens
not); an OpenAI-compatible piece that reported nothing is left out, and the
record says so. Token details are summed too, never dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from resume_support import KINDS, MESSAGES, TEXT, anthropic_at, ask, chunk, threaded, vllm_at

import chatkit
from chatkit._resume import _plus
from chatkit.providers.base import Capabilities
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("kind", KINDS)
async def test_a_broken_anthropic_piece_counts_its_prompt_tokens(kind: str) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=6))
        seen = await ask(kind, anthropic_at(server), model="claude-fake")
    assert seen.error is None and seen.text == TEXT
    (record,) = seen.resumes
    # The fake counts words as tokens: the first request's prompt is the question.
    question = _words(MESSAGES[0]["content"])
    assert record.broken_usage_known == "prompt"
    assert record.broken_usage is not None
    assert (record.broken_usage.prompt_tokens, record.broken_usage.completion_tokens) == (
        question,
        0,
    )
    prefill = "The quick brown fox jumps over"
    rest = _words(TEXT) - _words(prefill)
    usage = seen.final.usage if seen.final else None
    assert usage is not None
    # The continuation: the question and the prefill in, the rest out.
    assert usage.prompt_tokens == question + (question + _words(prefill))
    assert usage.completion_tokens == rest
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("kind", KINDS)
async def test_a_broken_piece_that_reported_nothing_is_left_out_and_said_so(kind: str) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        seen = await ask(kind, vllm_at(server))
    assert seen.error is None and seen.text == TEXT
    (record,) = seen.resumes
    assert record.broken_usage_known == "none" and record.broken_usage is None
    usage = seen.final.usage if seen.final else None
    assert usage is not None
    # Only the continuation's: nothing estimated for the broken piece.
    prefill = "The quick brown fox jumps"
    assert usage.prompt_tokens == _words(MESSAGES[0]["content"]) + _words(prefill)


class _Detailed:
    """A third-party provider reporting usage with token details on every chunk
    (continuous usage), breaking off once after three words."""

    name = "Detailed"
    capabilities = Capabilities(continue_message=True)

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: chatkit.ChatRequest, http: Any) -> AsyncIterator[Any]:
        self.calls += 1
        first = self.calls == 1
        words = ["One", " two", " three"] if first else [" four", " five."]
        for i, word in enumerate(words):
            last = not first and i == len(words) - 1
            usage = {
                "prompt_tokens": 10,
                "completion_tokens": i + 1,
                "total_tokens": 11 + i,
                "prompt_tokens_details": {"cached_tokens": 4 if first else 6},
                "completion_tokens_details": {"reasoning_tokens": i},
            }
            yield chunk(
                {"content": word},
                "stop" if last else None,
                id=f"d{self.calls}",
                model="detailed",
                usage=usage,
            )
        if first:
            raise chatkit.APIConnectionError("Detailed: connection reset", provider="Detailed")


@pytest.mark.parametrize("kind", KINDS)
async def test_token_details_are_summed_over_the_pieces(kind: str) -> None:
    seen = await ask(kind, _Detailed())
    assert seen.error is None and seen.text == "One two three four five."
    (record,) = seen.resumes
    assert record.broken_usage_known == "all"
    assert record.broken_usage is not None and record.broken_usage.completion_tokens == 3
    usage = seen.final.usage if seen.final else None
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 5, 25)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 10
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2 + 1


def test_plus_sums_details_field_by_field_and_keeps_one_sided_ones() -> None:
    before = chatkit.CompletionUsage.model_validate(
        {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 3, "cache_creation_tokens": 1},
        }
    )
    after = chatkit.CompletionUsage.model_validate(
        {
            "prompt_tokens": 8,
            "completion_tokens": 4,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 1},
            "completion_tokens_details": {"reasoning_tokens": 3},
        }
    )
    total = _plus(before, after)
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (13, 6, 19)
    assert total.prompt_tokens_details is not None
    details = total.prompt_tokens_details
    assert (details.cached_tokens, details.cache_creation_tokens, details.audio_tokens) == (5, 1, 1)
    assert total.completion_tokens_details is not None
    assert total.completion_tokens_details.reasoning_tokens == 3
    only_before = _plus(before, chatkit.CompletionUsage(prompt_tokens=1, total_tokens=1))
    assert only_before.prompt_tokens_details == before.prompt_tokens_details
    # Neither input is changed.
    assert before.prompt_tokens_details is not None
    assert before.prompt_tokens_details.cached_tokens == 3


def test_every_api_error_declares_partial_usage() -> None:
    """Declared on the class: code may read it from any provider's error."""
    for error in (
        chatkit.APIError("x"),
        chatkit.StreamInterrupted("x", partial_text=""),
        chatkit.RateLimitError("x", status_code=429),
    ):
        assert error.partial_usage is None
