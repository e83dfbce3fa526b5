"""The type aliases users see in chatkit's signatures (as httpx's ``_types.py``).

Exported from ``chatkit`` so that code wrapping a client can annotate what it
passes through: ``def make(provider: chatkit.ProviderSpec) -> chatkit.Client``.
One layer above ``providers`` because a ``ProviderSpec`` names the protocol.
"""

from __future__ import annotations

from typing import TypeAlias

from chatkit._config import Timeout
from chatkit.providers._base import Provider

__all__ = ["ProviderSpec", "TimeoutTypes"]

ProviderSpec: TypeAlias = Provider | type[Provider] | str
"""A provider instance, a provider class (the client makes and owns one
instance of it), or a registered name such as ``"openai"``."""

TimeoutTypes: TypeAlias = Timeout | float | None
"""A ``Timeout``, a number of seconds for every phase of the call, or None
for the default."""
