"""Providers: one module per wire API, and the registry that names them.

``PROVIDERS`` maps a lower-case name (as used in ``"name:model"`` strings and
``provider="name"``) to a provider class.
"""

from __future__ import annotations

from chatkit._errors import ProviderNotFoundError
from chatkit.providers._base import Provider, provider_name
from chatkit.providers.openai import OpenAI

__all__ = ["PROVIDERS", "OpenAI", "Provider", "get_provider_class", "provider_name"]

PROVIDERS: dict[str, type] = {"openai": OpenAI}


def get_provider_class(name: str) -> type:
    """The provider class registered under ``name`` (case-insensitive)."""
    found = PROVIDERS.get(name.lower())
    if found is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ProviderNotFoundError(
            f"provider: unknown provider {name!r}; known providers: {known}", field="provider"
        )
    return found
