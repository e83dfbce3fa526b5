"""``client.count_tokens()``: a prompt's tokens before it is sent.

Exact where the provider has a counting endpoint (Anthropic's
``/v1/messages/count_tokens``, Gemini's ``countTokens``), otherwise an estimate
(about four characters per token) that says it is one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from chatkit._ratelimit import estimate_prompt_tokens
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall
from chatkit.providers._base import Provider, SupportsCountTokens, provider_name
from chatkit.providers._http import HTTPProvider

__all__ = ["TokenCount", "count_prompt"]


@dataclass(frozen=True)
class TokenCount:
    """How many tokens a prompt takes.

    estimated: True when the provider has no counting endpoint and the number
        is chatkit's estimate (about four characters per token), not the
        provider's tokenizer.
    """

    tokens: int
    estimated: bool
    provider: str
    model: str


async def count_prompt(
    provider: Provider, request: ChatRequest, http: Callable[[], HTTPCall]
) -> TokenCount:
    """``request``'s prompt tokens at ``provider`` (``http`` makes the call's
    HTTP handle, only when there is something to ask)."""
    name = provider_name(provider)
    default = provider.default_model if isinstance(provider, HTTPProvider) else ""
    model = request.model or default
    if isinstance(provider, SupportsCountTokens):
        handle = http()
        handle.start()
        tokens = await provider.count_tokens(request, handle)
        return TokenCount(tokens, estimated=False, provider=name, model=model)
    estimate = estimate_prompt_tokens(request.messages)
    tools = request.params.get("tools")
    if tools:
        estimate += estimate_prompt_tokens(tools)
    return TokenCount(math.ceil(estimate), estimated=True, provider=name, model=model)
