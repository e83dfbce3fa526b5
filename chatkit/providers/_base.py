"""What a provider is, and how chatkit turns the caller's ``provider=`` into one.

A provider needs no chatkit base class: anything with an async-generator
``stream(request, http)`` yielding ``ChatCompletionChunk`` objects will do.
Optional extras chatkit uses when present:

- ``name``: shown in errors, attempts and ``completion.provider``;
- ``default_model``: used when the caller passes ``model=""``;
- ``async complete(request, http) -> ChatCompletion``: a dedicated
  non-streamed call (otherwise the stream is assembled);
- ``async list_models(http) -> list[Model]``;
- ``handles_retries = True``: the provider retries by itself (RetryProvider),
  so the client adds no retry layer of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from chatkit._request import ChatRequest
    from chatkit._transport import HTTPClient
    from chatkit._types import ChatCompletionChunk

__all__ = ["Provider", "provider_name"]


@runtime_checkable
class Provider(Protocol):
    """The one method a provider must have."""

    def stream(self, request: ChatRequest, http: HTTPClient) -> AsyncIterator[ChatCompletionChunk]:
        """Yield the answer's chunks; raise chatkit errors on failure."""
        ...


def provider_name(provider: Any) -> str:
    """A readable name for a provider instance or class."""
    name = getattr(provider, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = provider if isinstance(provider, type) else type(provider)
    return cls.__name__
