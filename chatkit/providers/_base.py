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
  so the client adds no retry layer of its own;
- ``capabilities: Capabilities``: what its API can do; without it, chatkit
  assumes nothing (``parse()`` sends a plain, non-strict schema).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from chatkit._errors import UnsupportedCapabilityError

if TYPE_CHECKING:
    from chatkit._request import ChatRequest
    from chatkit._transport import HTTPCall
    from chatkit._types import ChatCompletionChunk

__all__ = ["Capabilities", "Provider", "provider_name", "supports_strict_schema"]


@runtime_checkable
class Provider(Protocol):
    """The one method a provider must have."""

    def stream(self, request: ChatRequest, http: HTTPCall) -> AsyncIterator[ChatCompletionChunk]:
        """Yield the answer's chunks; raise chatkit errors on failure."""
        ...


def provider_name(provider: Any) -> str:
    """A readable name for a provider instance or class."""
    name = getattr(provider, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = provider if isinstance(provider, type) else type(provider)
    return cls.__name__


@dataclass(frozen=True)
class Capabilities:
    """What a provider's API can do; requests needing more fail before any I/O."""

    streaming: bool = True
    tools: bool = True
    vision: bool = True
    json_object: bool = True
    json_schema: bool = True
    system_message: bool = True
    # Enforces OpenAI's strict Structured Outputs: ``parse()`` then sends
    # ``"strict": true`` with the schema in strict form (every object closed,
    # every property required). The strict form is a valid JSON Schema for
    # any reader, so this is on unless a provider turns it off.
    strict_json_schema: bool = True

    def missing_for(self, request: ChatRequest) -> str | None:
        """The first capability ``request`` needs and this provider lacks, or None."""
        if request.params.get("tools") and not self.tools:
            return "tools"
        response_format = request.params.get("response_format") or {}
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_schema" and not self.json_schema:
            return "json_schema"
        if kind == "json_object" and not self.json_object:
            return "json_object"
        roles = {m.get("role") for m in request.messages}
        if roles & {"system", "developer"} and not self.system_message:
            return "system_message"
        if not self.vision and any(_has_image(m) for m in request.messages):
            return "vision"
        return None

    def check(self, request: ChatRequest, provider: str) -> None:
        """Raise ``UnsupportedCapabilityError`` if ``request`` needs what is missing."""
        missing = self.missing_for(request)
        if missing is not None:
            raise UnsupportedCapabilityError(
                f"{provider} does not support {missing}, which this request needs",
                field=missing,
            )


def supports_strict_schema(provider: Any) -> bool:
    """Whether ``provider`` declares strict JSON schemas (third-party providers do not)."""
    capabilities = getattr(provider, "capabilities", None)
    return isinstance(capabilities, Capabilities) and capabilities.strict_json_schema


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if not isinstance(content, list):
        return False
    return any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)
