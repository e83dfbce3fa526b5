"""What a provider is, and how chatkit turns the caller's ``provider=`` into one.

A provider needs no chatkit base class: anything with an async-generator
``stream(request, http)`` yielding ``ChatCompletionChunk`` objects will do.
Optional extras chatkit uses when present:

- ``name``: shown in errors, attempts and ``completion.provider``;
- ``default_model``: used when the caller passes ``model=""``;
- ``async complete(request, http) -> ChatCompletion``: a dedicated
  non-streamed call (otherwise the stream is assembled);
- ``async list_models(http) -> list[Model]``;
- ``check_request(request)``: raise ``UnsupportedCapabilityError`` before any I/O;
- ``async aclose()``: release what the provider holds (the client calls it
  for the providers it created);
- ``handles_retries = True`` and ``retrying_call(request, http)``: the
  provider retries by itself (RetryProvider), so the client adds no retry
  layer of its own (``chatkit._retry.RetryingProvider``, a layer up, since it
  returns a ``RetryingCall``);
- ``capabilities: Capabilities``: what its API can do; without it, chatkit
  assumes nothing (``parse()`` sends a plain, non-strict schema).

Each optional ability is a small runtime-checkable protocol below, so the
core asks ``isinstance(provider, SupportsComplete)`` instead of probing with
``getattr`` and calling whatever it found untyped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from chatkit._errors import UnsupportedCapabilityError
from chatkit._ratelimit import RateLimit

if TYPE_CHECKING:
    from chatkit._request import ChatRequest
    from chatkit._transport import HTTPCall
    from chatkit._types import ChatCompletion, ChatCompletionChunk, Model

__all__ = [
    "Capabilities",
    "Provider",
    "SupportsAclose",
    "SupportsCheckRequest",
    "SupportsComplete",
    "SupportsListModels",
    "is_provider_class",
    "provider_name",
    "rate_limit_of",
    "supports_strict_schema",
]


@runtime_checkable
class Provider(Protocol):
    """The one method a provider must have."""

    def stream(self, request: ChatRequest, http: HTTPCall) -> AsyncIterator[ChatCompletionChunk]:
        """Yield the answer's chunks; raise chatkit errors on failure."""
        ...


def is_provider_class(value: type) -> TypeGuard[type[Provider]]:
    """Whether ``value`` is a class whose instances are providers (it has ``stream``).

    ``isinstance(cls, Provider)`` answers that at run time, but a type checker
    reads it as "an instance", so classes are narrowed here.
    """
    return isinstance(value, Provider)


@runtime_checkable
class SupportsComplete(Protocol):
    """A provider with a dedicated non-streamed call (otherwise the stream is assembled)."""

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        """The whole answer in one call; raise chatkit errors on failure."""
        ...


@runtime_checkable
class SupportsCountTokens(Protocol):
    """A provider with a token counting endpoint (``client.count_tokens()``)."""

    async def count_tokens(self, request: ChatRequest, http: HTTPCall) -> int:
        """The tokens ``request``'s prompt (messages, system, tools) takes."""
        ...


@runtime_checkable
class SupportsListModels(Protocol):
    """A provider with a model list endpoint (``client.models.list()``)."""

    async def list_models(self, http: HTTPCall) -> list[Model]:
        """The models the provider offers."""
        ...


@runtime_checkable
class SupportsCheckRequest(Protocol):
    """A provider that refuses, before any I/O, a request its API cannot serve."""

    def check_request(self, request: ChatRequest) -> None:
        """Raise ``UnsupportedCapabilityError`` (the provider is then skipped)."""
        ...


@runtime_checkable
class SupportsAclose(Protocol):
    """Anything chatkit closes when done with it: a provider, a chunk iterator."""

    async def aclose(self) -> None:
        """Release what it holds. Idempotent."""
        ...


@runtime_checkable
class RateLimited(Protocol):
    """A provider with a request/token/concurrency budget (``rate_limit=``)."""

    rate_limit: RateLimit | None


def rate_limit_of(provider: object) -> RateLimit | None:
    """``provider``'s budget (see ``RateLimited``), or None: checked once per call,
    so by attribute rather than by the protocol (see ``provider_name``)."""
    limit = getattr(provider, "rate_limit", None)
    return limit if isinstance(limit, RateLimit) else None


@runtime_checkable
class ReportsConfigured(Protocol):
    """A provider class that says itself whether it can be used as it is."""

    def is_configured(self) -> bool: ...


@runtime_checkable
class ReportsAvailable(Protocol):
    """The same, for a provider that needs no key but something local (``Local``)."""

    def is_available(self) -> bool: ...


@runtime_checkable
class DeclaresKeyVariables(Protocol):
    """A provider class whose key comes from one of these environment variables."""

    api_key_env: tuple[str, ...]


@runtime_checkable
class _Declared(Protocol):
    capabilities: Capabilities


def provider_name(provider: object) -> str:
    """A readable name for a provider instance or class."""
    # A class's ``name`` attribute counts too: the registry names classes.
    # getattr, not a runtime protocol: this runs several times per call, and
    # isinstance() against a Protocol costs 7 us on Python 3.11 (it walks the
    # protocol's attributes every time), a plain lookup a tenth of that.
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
    # Streams can end with a usage chunk (OpenAI's ``stream_options:
    # {"include_usage": true}``): chatkit asks for it itself, so every
    # answer carries usage, and folds it into the finishing chunk.
    stream_usage: bool = True
    # A final assistant message is continued, not answered: the model writes
    # on from its last character (Anthropic's prefill; vLLM and llama.cpp
    # servers with ``continue_final_message``). Needed to resume a stream
    # that broke off (``chatkit.Resume``); off unless the API really does it.
    continue_message: bool = False

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


def supports_strict_schema(provider: object) -> bool:
    """Whether ``provider`` declares strict JSON schemas (third-party providers do not)."""
    if not isinstance(provider, _Declared):
        return False
    capabilities = provider.capabilities
    return isinstance(capabilities, Capabilities) and capabilities.strict_json_schema


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if not isinstance(content, list):
        return False
    return any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)
