"""How a failure becomes an HTTP answer: a status, an OpenAI-shaped body, headers.

Before a stream is committed an error is an ordinary HTTP response
(``failure_from(exc).response()``); after it, the same body goes out as one
SSE event (``sse_event()``). Messages are chatkit's own (they never carry
keys), except that an upstream 401/403 message is replaced: it is about the
gateway's credentials, not the caller's, and vendors echo key fragments in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

import chatkit

__all__ = ["INTERNAL_FAILURE", "Failure", "Refusal", "error_type", "failure_from"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}

# Upstream hints a caller needs to back off correctly; nothing else is copied.
# Only where HTTP gives them a meaning (RFC 9110, RFC 6585).
_PASSED_HEADERS = ("retry-after", "retry-after-ms")
_BACKOFF_STATUSES = (429, 503)


def error_type(status: int) -> str:
    """The OpenAI ``error.type`` that goes with an HTTP status."""
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


@dataclass(frozen=True)
class Failure:
    """One error as the gateway reports it."""

    status: int
    message: str
    type: str = ""
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type or error_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, extra_headers: Mapping[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        response = web.json_response(self.body(), status=self.status, headers=headers)
        if self.status == 408:
            # The rest of a body that did not arrive in time is not waited for.
            response.force_close()
        return response

    def sse_event(self) -> bytes:
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


INTERNAL_FAILURE = Failure(
    500, "the gateway failed to handle this request; see its log", code="internal_error"
)
"""The answer to a bug (an exception chatkit does not raise): compared by identity,
since an upstream 500 may carry the same code."""


class Refusal(Exception):
    """The gateway refuses a request itself (bad body, foreign host); carries the answer."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def failure_from(exc: BaseException) -> Failure:
    """The gateway's answer to an exception raised while serving a request."""
    if isinstance(exc, Refusal):
        return exc.failure
    if isinstance(exc, chatkit.InvalidRequestError):
        code = "model_not_found" if isinstance(exc, chatkit.ModelNotFoundError) else None
        return Failure(400, str(exc), code=code, param=exc.field)
    if isinstance(exc, chatkit.MissingAuthError):
        # The gateway's configuration lacks a key: not the caller's fault.
        return Failure(503, str(exc), code="provider_not_configured")
    if isinstance(exc, chatkit.RetryProviderError):
        return _all_failed(exc)
    if isinstance(exc, chatkit.APIStatusError):
        return _upstream_status(exc)
    if isinstance(exc, chatkit.StreamInterrupted):
        return Failure(502, str(exc), code="stream_interrupted")
    if isinstance(exc, chatkit.APITimeoutError):
        return Failure(504, str(exc), code="upstream_timeout")
    if isinstance(exc, chatkit.APIConnectionError):
        return Failure(502, str(exc), code="upstream_unreachable")
    if isinstance(exc, chatkit.APIError):
        return Failure(502, str(exc), code="upstream_bad_response")
    return INTERNAL_FAILURE


def _upstream_status(exc: chatkit.APIStatusError) -> Failure:
    status = exc.status_code if 400 <= exc.status_code <= 599 else 502
    upstream = exc.body if isinstance(exc.body, dict) else {}
    kind, code, param = (upstream.get(k) for k in ("type", "code", "param"))
    message = str(exc)
    if status in (401, 403):
        who = exc.provider or "the upstream provider"
        message = f"{who} rejected the gateway's credentials (HTTP {status})"
        kind, code = None, "upstream_authentication_failed"
    headers = {}
    if status in _BACKOFF_STATUSES:
        headers = {k: v for k, v in exc.headers.items() if k.lower() in _PASSED_HEADERS}
    return Failure(
        status,
        message,
        type=kind if isinstance(kind, str) and kind else "",
        code=code if isinstance(code, str) else None,
        param=param if isinstance(param, str) else None,
        headers=headers,
    )


def _all_failed(exc: chatkit.RetryProviderError) -> Failure:
    """Every attempt failed: their common status if they agree, else 502."""
    tried = [a for a in exc.attempts if not a.skipped and a.error is not None]
    if not tried:
        reasons = "; ".join(f"{a.provider}: {a.error}" for a in exc.attempts)
        detail = f": {reasons}" if reasons else ""
        return Failure(503, f"no provider could be tried{detail}", code="no_provider_available")
    failures = [failure_from(a.error) for a in tried if a.error is not None]
    lines = "; ".join(
        f"{a.provider} (attempt {a.number}): {f.message}"
        for a, f in zip(tried, failures, strict=True)
    )
    message = f"all {len(tried)} attempts failed: {lines}"
    last = failures[-1]
    if len({f.status for f in failures}) == 1:
        return Failure(last.status, message, type=last.type, code=last.code, headers=last.headers)
    return Failure(502, message, code="all_providers_failed")
