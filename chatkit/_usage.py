"""Token usage types, below ``Attempt`` so that an attempt can carry its usage.

Re-exported by ``chatkit._types`` with the other response types.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["CompletionTokensDetails", "CompletionUsage", "PromptTokensDetails"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class PromptTokensDetails(_Wire):
    """What the prompt tokens were. ``cached_tokens``: read from the provider's
    cache; ``cache_creation_tokens``: written to it (Anthropic)."""

    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(_Wire):
    """What the completion tokens were. ``reasoning_tokens``: spent thinking, not shown."""

    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class CompletionUsage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
