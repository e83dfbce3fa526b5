"""Every exception chatkit raises, in one place.

Names follow openai-python so ported ``except`` clauses keep working, plus the
g4f names users already catch::

    ChatkitError (alias OpenAIError)
    ├── ClientClosedError (RuntimeError)              the client was closed; not retried
    ├── InvalidRequestError (ValueError, TypeError)   bad input, raised before any I/O
    │   ├── ProviderNotFoundError
    │   ├── ModelNotFoundError
    │   ├── UnsupportedCapabilityError
    │   └── ProxyConfigError
    ├── MissingAuthError                              no API key; names the variable
    └── APIError                                      something went wrong talking to a provider
        ├── APIStatusError                            HTTP status or in-stream error event
        │   ├── BadRequestError            400
        │   ├── AuthenticationError        401
        │   ├── PermissionDeniedError      403
        │   ├── NotFoundError              404
        │   ├── ConflictError              409
        │   ├── UnprocessableEntityError   422
        │   ├── RateLimitError             429
        │   └── InternalServerError        >= 500
        │       └── OverloadedError        529 / overloaded_error
        ├── APIConnectionError                        no usable response
        │   ├── APITimeoutError (TimeoutError)
        │   │   └── PoolTimeoutError                  no free connection in time (Timeout.pool)
        │   ├── ProxyError
        │   └── StreamInterrupted                     the stream broke off; carries partial text
        ├── EmptyAnswerError                          no content at all (fallback_on_empty)
        ├── ContentRefusedError                       parse(): the model refused; carries why
        ├── ResponseDecodeError                       the provider sent something unparseable
        │   ├── SSEDecodeError                        an SSE line or event over the size cap
        │   └── ResponseTooLargeError                 a body over its size cap
        └── RetryProviderError                        every attempt failed; carries them all
            └── RetryNoProviderError                  nothing to try: empty list, all skipped

Foreign exceptions (aiohttp, aiohttp_socks, json) are translated once, at the
transport or provider edge, with ``raise ... from exc``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chatkit._public import public

if TYPE_CHECKING:
    from chatkit._attempt import Attempt
    from chatkit._usage import CompletionUsage

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatkitError",
    "ClientClosedError",
    "ConflictError",
    "EmptyAnswerError",
    "InternalServerError",
    "InvalidRequestError",
    "MissingAuthError",
    "ModelNotFoundError",
    "NotFoundError",
    "OpenAIError",
    "OverloadedError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "ProviderNotFoundError",
    "ProxyConfigError",
    "ProxyError",
    "RateLimitError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RetryNoProviderError",
    "RetryProviderError",
    "SSEDecodeError",
    "StreamInterrupted",
    "UnprocessableEntityError",
    "UnsupportedCapabilityError",
    "error_from_event",
    "error_from_status",
]


class ChatkitError(Exception):
    """Base class of every chatkit exception.

    ``attempts``: when the error ended a call, every attempt the call made
    (``chatkit.Attempt``); empty for an error raised before any attempt.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.attempts: list[Attempt] = []

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles as cls(*args), which loses (or, for a status
        # error, refuses) the keyword-only constructor arguments: rebuild
        # without __init__ and restore the attributes instead.
        return (_unpickle, (type(self), self.args, self.__dict__))


def _unpickle(cls: type[ChatkitError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


# Ported ``except openai.OpenAIError`` clauses keep working.
OpenAIError = ChatkitError


class ClientClosedError(ChatkitError, RuntimeError):
    """The client was closed; a closed client makes no more calls (never retried)."""


class InvalidRequestError(ChatkitError, ValueError, TypeError):
    """The caller passed something chatkit cannot send; raised before any I/O.

    ``field`` names the offending argument (``"messages[2].role"``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ProviderNotFoundError(InvalidRequestError):
    """No provider is registered under the given name."""


class ModelNotFoundError(InvalidRequestError):
    """The model string names nothing chatkit can route to."""


class UnsupportedCapabilityError(InvalidRequestError):
    """The request needs a capability (tools, vision, ...) the provider lacks."""


class ProxyConfigError(InvalidRequestError):
    """A proxy setting is malformed or has no entry for the target's scheme."""


class MissingAuthError(ChatkitError):
    """A provider needs credentials and none were given or found in the environment."""

    def __init__(self, message: str, *, provider: str | None = None, env_var: str | None = None):
        super().__init__(message)
        self.provider = provider
        self.env_var = env_var


class APIError(ChatkitError):
    """A failure while talking to a provider. ``provider`` names it when known.

    ``attempts``: when this error ended a call, every attempt the call made
    (``chatkit.Attempt``), this one's included; empty until then.

    ``partial_usage``: for a stream that broke off, the part of its usage the
    provider had reported before the break (Anthropic's prompt tokens from
    ``message_start``; the completion tokens are then 0, not counted), or
    None. A resumed stream adds it up (``ResumeRecord.broken_usage``).
    """

    partial_usage: CompletionUsage | None = None

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider


class APIStatusError(APIError):
    """The provider answered with an error status (or an error event in a stream).

    ``code``, ``param`` and ``type`` come from the vendor's error object when it
    has them (OpenAI's ``{"error": {"code", "param", "type"}}``), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        lowered = {k.lower(): v for k, v in self.headers.items()}
        self.request_id: str | None = lowered.get("x-request-id") or lowered.get("request-id")
        fields = body if isinstance(body, dict) else {}
        self.code: str | None = _text_field(fields, "code")
        self.param: str | None = _text_field(fields, "param")
        self.type: str | None = _text_field(fields, "type") or _text_field(fields, "status")


def _text_field(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class OverloadedError(InternalServerError):
    pass


class APIConnectionError(APIError):
    """No usable response: refused, reset, DNS, TLS, or the stream broke off."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """A connect, read, first-token or total timeout expired."""


class PoolTimeoutError(APITimeoutError):
    """Every connection of the pool stayed busy for longer than ``Timeout.pool``."""


class ProxyError(APIConnectionError):
    """The proxy was unreachable, refused the credentials or refused the tunnel."""


class EmptyAnswerError(APIError):
    """An answer that ended with no content at all: no text, reasoning,
    refusal or tool call (``finish_reason`` says how it ended). Recorded on the
    attempt when ``RetryProvider(fallback_on_empty=True)`` moved on from it."""

    def __init__(
        self, message: str, *, provider: str | None = None, finish_reason: str | None = None
    ) -> None:
        super().__init__(message, provider=provider)
        self.finish_reason = finish_reason


class StreamInterrupted(APIConnectionError):
    """A stream broke off before it finished.

    ``partial_text`` is what had reached the caller, ``cause`` the underlying
    error (also chained as ``__cause__``). Past the commit point chatkit raises
    this instead of retrying, so no token is ever repeated or spliced.
    """

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        provider: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.partial_text = partial_text
        self.cause = cause

    @property
    def text(self) -> str:
        return self.partial_text


class ResponseDecodeError(APIError):
    """The provider sent bytes that are not the format its API promises."""


class SSEDecodeError(ResponseDecodeError):
    """An SSE line or event exceeded the size cap."""


class ResponseTooLargeError(ResponseDecodeError):
    """A response body (after decompression) exceeded its size cap."""


class RetryProviderError(APIError):
    """Every attempt failed. ``attempts`` holds each one; ``exceptions`` their errors."""

    def __init__(
        self, message: str, *, attempts: Sequence[Attempt] = (), provider: str | None = None
    ) -> None:
        super().__init__(message, provider=provider)
        self.attempts = list(attempts)

    @property
    def exceptions(self) -> list[BaseException]:
        return [a.error for a in self.attempts if a.error is not None]


class RetryNoProviderError(RetryProviderError):
    """There was nothing to try: the provider list was empty or every one was skipped."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    529: OverloadedError,
}

# Error "type" strings used by OpenAI, Anthropic and Gemini in bodies and stream events.
_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "invalid_argument": 400,
    "authentication_error": 401,
    "unauthenticated": 401,
    "permission_error": 403,
    "permission_denied": 403,
    "not_found_error": 404,
    "not_found": 404,
    "conflict": 409,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "resource_exhausted": 429,
    "insufficient_quota": 429,
    "overloaded_error": 529,
    "overloaded": 529,
    "unavailable": 503,
    "server_error": 500,
    "api_error": 500,
    "internal": 500,
    "timeout_error": 504,
    "deadline_exceeded": 504,
}


def _status_class(status: int) -> type[APIStatusError]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    return InternalServerError if status >= 500 else APIStatusError


def _error_object(body: Any) -> Any:
    """The vendor's error object: ``{"error": {...}}`` unwrapped, anything else as is."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body


def _describe(error_object: Any, fallback: str) -> str:
    if isinstance(error_object, dict):
        message = error_object.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(error_object, str) and error_object:
        return error_object[:500]
    return fallback


def error_from_status(
    status: int,
    raw_body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    provider: str | None = None,
) -> APIStatusError:
    """Build the typed error for an HTTP error response."""
    try:
        parsed: Any = json.loads(raw_body) if raw_body else None
    except (ValueError, RecursionError):
        parsed = raw_body.decode("utf-8", "replace")
    error_object = _error_object(parsed)
    message = _describe(error_object, f"HTTP {status}")
    label = f"{provider}: " if provider else ""
    return _status_class(status)(
        f"{label}{status} {message}",
        status_code=status,
        body=error_object,
        headers=headers,
        provider=provider,
    )


def error_from_event(payload: Any, *, provider: str | None = None) -> APIStatusError:
    """Build the typed error for an ``{"error": ...}`` event inside a 200 stream."""
    error_object = _error_object(payload)
    status = 500
    if isinstance(error_object, dict):
        code = error_object.get("code")
        kind = error_object.get("type") or error_object.get("status") or code
        if isinstance(code, int) and 400 <= code < 600:
            status = code
        elif isinstance(kind, str):
            status = _TYPE_STATUS.get(kind.lower(), 500)
    message = _describe(error_object, "error event in stream")
    label = f"{provider}: " if provider else ""
    return _status_class(status)(
        f"{label}error event in stream: {message}",
        status_code=status,
        body=error_object,
        provider=provider,
    )


# Every class in __all__ is exported by chatkit (OpenAIError is ChatkitError).
public(*{value for value in map(globals().get, __all__) if isinstance(value, type)})


class ContentRefusedError(APIError):
    """``parse()``: the model refused instead of answering (OpenAI's
    ``message.refusal``), or the provider stopped the answer with a content
    filter (``finish_reason="content_filter"``: Anthropic's ``refusal`` stop
    reason, Gemini's safety stop). ``refusal`` is the model's refusal text; a
    filtered answer has none, so it holds a fixed explanation instead (the
    partial answer is never put there); ``finish_reason`` says which case it
    was. Not retried: asking again is the caller's choice."""

    def __init__(
        self,
        message: str,
        *,
        refusal: str = "",
        provider: str | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.refusal = refusal
        self.finish_reason = finish_reason


__all__.append("ContentRefusedError")
public(ContentRefusedError)
