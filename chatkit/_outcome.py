"""What one attempt produced, as the retry loop sees it.

``Opened``: a stream's attempt that reached content (or ended without any);
``empty_answer``: whether an answer had no content at all, for
``RetryProvider(fallback_on_empty=True)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

from chatkit._errors import EmptyAnswerError
from chatkit._types import ChatCompletion, ChatCompletionChunk

__all__ = ["Opened", "empty_answer"]


class Opened(NamedTuple):
    """A stream's attempt that reached content (``agen`` None: ended without)."""

    agen: AsyncIterator[ChatCompletionChunk] | None
    held: list[ChatCompletionChunk]
    name: str


def empty_answer(result: object, name: str) -> EmptyAnswerError | None:
    """The error for an answer with no content at all (no text, reasoning,
    refusal or tool call), or None."""
    if isinstance(result, Opened):
        if result.agen is not None:
            return None  # it reached content
        endings = [c.finish_reason for chunk in result.held for c in chunk.choices]
        finish = next((reason for reason in endings if reason), None)
    elif isinstance(result, ChatCompletion):
        for choice in result.choices:
            message = choice.message
            if message.content or message.tool_calls or message.refusal:
                return None
            if message.reasoning_content:
                return None
        finish = result.choices[0].finish_reason if result.choices else None
    else:
        return None
    return EmptyAnswerError(
        f"{name}: the answer had no content (finish_reason={finish})",
        provider=name,
        finish_reason=finish,
    )
