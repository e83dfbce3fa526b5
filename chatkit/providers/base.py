"""Everything a third-party provider needs, in one public module.

A provider is any object with one method::

    async def stream(self, request, http):  # -> AsyncIterator[ChatCompletionChunk]

No base class is needed (``Provider`` is a runtime-checkable protocol). The
contract, which chatkit's own providers follow too:

Input
    ``request`` is a validated, deep-copied :class:`ChatRequest`: ``model``
    (``""`` means the provider's ``default_model``), ``messages`` (OpenAI
    style), ``params`` (only the OpenAI parameters the caller set),
    ``extra_headers``, ``extra_query``, ``extra_body``. Do not mutate it.
    ``http`` is the :class:`HTTPCall` for this one call: send every request
    through ``async with http.open(method, url, provider=self.name, ...) as
    response`` so that the call's timeouts, deadline, proxies, connection
    limits and cancellation apply, and secrets are scrubbed from errors.

Output
    Yield :class:`ChatCompletionChunk` objects, stamped with
    ``set_provider(chunk, self.name)``. The first chunk that carries content
    (text, reasoning or a tool call) is the *commit point*: until then a
    failure may be retried on this provider or handed to the next one; after
    it, chatkit never retries (the caller gets ``StreamInterrupted`` carrying
    the partial text and your error as its cause). So raise before yielding
    content whenever you can tell early that the answer will fail.

Errors
    Raise chatkit's errors, never foreign ones (translate with ``raise ...
    from exc``); they decide what is retried:

    - a non-2xx status is raised by ``http.open`` itself (built by
      :func:`error_from_status`); 408/409/429/5xx are retried, other 4xx move
      on to the next provider;
    - an error reported inside a 200 stream: ``raise error_from_event(payload,
      provider=self.name)``, which maps ``{"error": {"type"/"code": ...}}``
      to the same status classes (``rate_limit_error`` -> ``RateLimitError``);
    - a body that ends before your end marker: ``raise
      stream_ended_early(self.name, "its end marker")`` (an
      ``APIConnectionError``, retried before content);
    - something that does not parse: ``ResponseDecodeError``;
    - a request your API cannot serve: ``UnsupportedCapabilityError`` from
      ``check_request`` (before any I/O), or declare :class:`Capabilities`.

Optional members chatkit uses when present: ``name``, ``default_model``,
``capabilities: Capabilities``, ``check_request(request)`` (raise before any
I/O), ``async complete(request, http) -> ChatCompletion`` (otherwise the
stream is assembled), ``async list_models(http) -> list[Model]``.

Register a provider class under the ``chatkit.providers`` entry-point group
(see ``docs/writing-a-provider.md``); ``provider="<entry point name>"`` then
finds it (entry points are read on a registry miss, never at import time).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from chatkit._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ChatkitError,
    InternalServerError,
    InvalidRequestError,
    MissingAuthError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    UnsupportedCapabilityError,
    error_from_event,
    error_from_status,
)
from chatkit._request import ChatRequest
from chatkit._sse import SSEDecoder, SSEEvent
from chatkit._transport import HTTPCall, HTTPResponse
from chatkit._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChunkChoice,
    CompletionUsage,
    Model,
    set_provider,
)
from chatkit.providers._base import (
    Capabilities,
    Provider,
    SupportsCheckRequest,
    SupportsComplete,
    SupportsListModels,
)
from chatkit.providers._common import sse_batches, stream_ended_early, truncated

__all__ = [
    # the protocol
    "Capabilities",
    "ChatRequest",
    "Provider",
    "SupportsCheckRequest",
    "SupportsComplete",
    "SupportsListModels",
    # HTTP for one call
    "HTTPCall",
    "HTTPResponse",
    # SSE
    "SSEDecoder",
    "SSEEvent",
    "sse_batches",
    "sse_events",
    # results
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChunkChoice",
    "CompletionUsage",
    "Model",
    "set_provider",
    # errors
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatkitError",
    "InternalServerError",
    "InvalidRequestError",
    "MissingAuthError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseDecodeError",
    "UnsupportedCapabilityError",
    "error_from_event",
    "error_from_status",
    "stream_ended_early",
    "truncated",
]


async def sse_events(response: HTTPResponse, provider: str) -> AsyncGenerator[SSEEvent]:
    """The SSE events of ``response``'s body, one at a time, as they arrive.

    The body is read in pieces of any size (never line by line, so no line
    length limit but the decoder's 16 MiB cap) and yields to the event loop
    while a hostile server sends only blank lines or comments. The last event
    may be unterminated (the body ended without its blank line); when it does
    not parse, the body was cut off: raise ``truncated(provider)``, which is
    retried like a dropped connection. A 200 body with no event at all that is
    a JSON error object raises that error; any other non-SSE body raises
    ``ResponseDecodeError``. Use :func:`sse_batches` on a hot path: one step
    per network read, with a flag for the unterminated tail.
    """
    async with aclosing(sse_batches(response, provider)) as batches:
        async for events, _tail in batches:
            for event in events:
                yield event
