"""The error tree and the status / event mapping."""

from __future__ import annotations

import pytest

import chatkit
from chatkit import _errors
from chatkit._errors import error_from_event, error_from_status

STATUS_CASES = [
    (400, chatkit.BadRequestError),
    (401, chatkit.AuthenticationError),
    (403, chatkit.PermissionDeniedError),
    (404, chatkit.NotFoundError),
    (409, chatkit.ConflictError),
    (422, chatkit.UnprocessableEntityError),
    (429, chatkit.RateLimitError),
    (500, chatkit.InternalServerError),
    (502, chatkit.InternalServerError),
    (503, chatkit.InternalServerError),
    (529, chatkit.OverloadedError),
    (418, chatkit.APIStatusError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CASES)
def test_status_maps_to_its_class(status: int, cls: type[chatkit.APIStatusError]) -> None:
    body = b'{"error": {"message": "nope", "type": "x", "code": "c"}}'
    error = error_from_status(
        status, body, {"X-Request-Id": "req_1", "Retry-After": "2"}, provider="P"
    )
    assert type(error) is cls
    assert error.status_code == status
    assert error.body == {"message": "nope", "type": "x", "code": "c"}
    assert error.request_id == "req_1"
    assert error.headers["Retry-After"] == "2"
    assert error.provider == "P"
    assert "nope" in str(error) and str(status) in str(error)


def test_non_json_and_empty_error_bodies() -> None:
    error = error_from_status(502, b"<html>bad gateway</html>", None)
    assert error.body == "<html>bad gateway</html>"
    assert "bad gateway" in str(error)
    empty = error_from_status(503, b"", None)
    assert empty.body is None
    assert "HTTP 503" in str(empty)


@pytest.mark.parametrize(
    ("payload", "cls", "status"),
    [
        ({"error": {"type": "rate_limit_error", "message": "slow"}}, chatkit.RateLimitError, 429),
        ({"type": "overloaded_error", "message": "busy"}, chatkit.OverloadedError, 529),
        ({"code": 503, "status": "UNAVAILABLE", "message": "x"}, chatkit.InternalServerError, 503),
        ({"type": "invalid_request_error"}, chatkit.BadRequestError, 400),
        ({"type": "authentication_error"}, chatkit.AuthenticationError, 401),
        ({"type": "something_new"}, chatkit.InternalServerError, 500),
        ("plain text error", chatkit.InternalServerError, 500),
    ],
)
def test_error_events_map_by_type(payload: object, cls: type, status: int) -> None:
    error = error_from_event(payload, provider="P")
    assert type(error) is cls
    assert error.status_code == status


def test_tree_shape() -> None:
    assert issubclass(chatkit.APITimeoutError, TimeoutError)
    assert issubclass(chatkit.APITimeoutError, chatkit.APIConnectionError)
    assert issubclass(chatkit.ProxyError, chatkit.APIConnectionError)
    assert issubclass(chatkit.StreamInterrupted, chatkit.APIError)
    assert issubclass(chatkit.RetryNoProviderError, chatkit.RetryProviderError)
    assert issubclass(chatkit.OverloadedError, chatkit.InternalServerError)
    assert issubclass(chatkit.InvalidRequestError, ValueError)
    assert issubclass(chatkit.ProviderNotFoundError, chatkit.InvalidRequestError)
    for name in _errors.__all__:
        obj = getattr(_errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, chatkit.ChatkitError)
            assert name in (_errors.__doc__ or ""), f"{name} missing from the tree docstring"


def test_stream_interrupted_carries_text_and_cause() -> None:
    cause = chatkit.APIConnectionError("reset", provider="P")
    error = chatkit.StreamInterrupted("broke", partial_text="Hel", provider="P", cause=cause)
    assert error.text == error.partial_text == "Hel"
    assert error.cause is cause


def test_retry_provider_error_exposes_exceptions() -> None:
    first = chatkit.RateLimitError("slow", status_code=429)

    attempts = [chatkit.Attempt("P", 1, error=first), chatkit.Attempt("P", 2)]
    error = chatkit.RetryProviderError("all failed", attempts=attempts)
    assert error.exceptions == [first]
    assert len(error.attempts) == 2
