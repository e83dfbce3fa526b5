"""What an answer cost: token prices per model, and the sum over a call.

A small table ships for the presets' default models (``PRICES_AS_OF`` says
when its numbers were taken); ``AsyncClient(prices={...})`` adds to it or
overrides it. A model that is not in the table costs ``None``, never a guess:
a dated snapshot name (``gpt-4o-mini-2024-07-18``) is looked up as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from chatkit._attempt import Attempt
from chatkit._config import is_number
from chatkit._errors import InvalidRequestError
from chatkit._types import ChatCompletion, CompletionUsage

__all__ = ["PRICES", "PRICES_AS_OF", "Price", "PriceTable"]


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens.

    cached_input: prompt tokens read from the provider's cache (OpenAI's
        ``prompt_tokens_details.cached_tokens``, Anthropic's cache reads);
        None: charged as ``input``.
    cache_write: prompt tokens written to the cache (Anthropic); None: ``input``.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write"):
            value = getattr(self, name)
            if value is None and name in ("cached_input", "cache_write"):
                continue
            if not is_number(value) or not 0 <= value < math.inf:
                raise InvalidRequestError(
                    f"Price.{name} must be a finite number >= 0, got {value!r}", field=name
                )

    def cost(self, usage: CompletionUsage) -> float:
        """The dollars ``usage`` cost at this price."""
        details = usage.prompt_tokens_details
        cached = _count(details.cached_tokens) if details is not None else 0
        written = _count(details.cache_creation_tokens) if details is not None else 0
        fresh = max(usage.prompt_tokens - cached - written, 0)
        total = fresh * self.input + usage.completion_tokens * self.output
        total += cached * (self.input if self.cached_input is None else self.cached_input)
        total += written * (self.input if self.cache_write is None else self.cache_write)
        return total / 1_000_000


PRICES_AS_OF = "2025-07"
"""When the shipped prices were taken from the vendors' published list prices."""

PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "openai:gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075),
        "openrouter:openai/gpt-4o-mini": Price(input=0.15, output=0.60),
        "anthropic:claude-sonnet-4-5": Price(
            input=3.0, output=15.0, cached_input=0.30, cache_write=3.75
        ),
        "gemini:gemini-2.5-flash": Price(input=0.30, output=2.50, cached_input=0.075),
        "groq:llama-3.3-70b-versatile": Price(input=0.59, output=0.79),
        "together:meta-llama/Llama-3.3-70B-Instruct-Turbo": Price(input=0.88, output=0.88),
        "fireworks:accounts/fireworks/models/llama-v3p3-70b-instruct": Price(
            input=0.90, output=0.90
        ),
        "xai:grok-3-mini": Price(input=0.30, output=0.50),
    }
)
"""The shipped table: ``"provider:model"`` (the provider's registry name) -> ``Price``."""


class PriceTable:
    """The shipped prices, with a client's own on top.

    Keys are ``"provider:model"`` (``"openai:gpt-4o-mini"``; the provider as
    its registry name or its display name, in any case) or a bare model name,
    which then applies to every provider.
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        if overrides is not None and not isinstance(overrides, Mapping):
            raise InvalidRequestError(
                f"prices must be a mapping of 'provider:model' to chatkit.Price, "
                f"got {type(overrides).__name__}",
                field="prices",
            )
        table = {key.lower(): price for key, price in PRICES.items()}
        for key, price in (overrides or {}).items():
            if not isinstance(key, str) or not key or not isinstance(price, Price):
                raise InvalidRequestError(
                    f"prices[{key!r}] must map a 'provider:model' string to a chatkit.Price",
                    field="prices",
                )
            table[key.lower()] = price
        self._table = table

    def price(self, provider: str | None, model: str) -> Price | None:
        """The price of ``model`` at ``provider``, or None when unknown."""
        if not model:
            return None
        model = model.lower()
        if provider:
            found = self._table.get(f"{_registry_name(provider)}:{model}")
            if found is not None:
                return found
        return self._table.get(model)

    def call_cost(
        self,
        provider: str | None,
        model: str,
        usage: CompletionUsage | None,
        attempts: Iterable[Attempt] = (),
    ) -> float | None:
        """What a call cost: its answer (``provider``, ``model``, ``usage``),
        plus every other attempt that was billed (an empty answer that was
        moved on from). None when any of them has no known price, or the
        answer no usage."""
        if usage is None:
            return None
        price = self.price(provider, model)
        if price is None:
            return None
        total = price.cost(usage)
        for attempt in attempts:
            if attempt.usage is None or attempt.error is None:
                continue
            other = self.price(attempt.provider, attempt.model or "")
            if other is None:
                return None
            total += other.cost(attempt.usage)
        return total

    def completion_cost(self, completion: ChatCompletion) -> float | None:
        return self.call_cost(
            completion.provider, completion.model, completion.usage, completion.attempts
        )


def _count(value: int | None) -> int:
    return value if value is not None and value > 0 else 0


def _registry_name(provider: str) -> str:
    # "OpenAI" and "openai" alike; "OpenAI#2"-style labels are not providers.
    return "".join(ch for ch in provider.lower() if ch.isalnum() or ch in "-_")
