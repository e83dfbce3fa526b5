"""The errors that end a call, built from its attempts (for ``_retry``).

``call_failure``: every provider failed (or none could be tried);
``interrupted_error``: a stream broke off after content (the commit point);
``attach_attempts``: every error that ends a call carries the call's attempts.
"""

from __future__ import annotations

import contextlib

from chatkit._attempt import Attempt
from chatkit._errors import (
    APIConnectionError,
    RetryNoProviderError,
    RetryProviderError,
    StreamInterrupted,
)
from chatkit._health import CircuitOpenError

__all__ = ["attach_attempts", "call_failure", "interrupted_error"]


def attach_attempts(error: BaseException, attempts: list[Attempt]) -> None:
    """Every error that ends a call carries the call's attempts."""
    with contextlib.suppress(AttributeError):  # a foreign exception with __slots__
        error.attempts = attempts  # type: ignore[attr-defined]


def call_failure(
    attempts: list[Attempt], first: int, *, aggregate: bool, label: str, timed_out: bool
) -> BaseException:
    """The error when no attempt from ``attempts[first:]`` answered.

    aggregate: a ``RetryProviderError`` listing every attempt; otherwise the
    last error itself, with the attempts as a note.
    """
    mine = attempts[first:]
    tried = [a for a in mine if not a.skipped]
    lines = "\n".join(f"  {a.describe()}" for a in mine)
    if not aggregate and tried and tried[-1].error is not None:
        error = tried[-1].error
        if len(mine) > 1:
            error.add_note(f"chatkit made {len(mine)} attempts:\n{lines}")
        attach_attempts(error, attempts)
        return error
    if not tried:
        # Every provider's circuit open: say when each half-opens (below).
        circuits_open = bool(mine) and all(isinstance(a.error, CircuitOpenError) for a in mine)
        if not aggregate and mine and mine[-1].error is not None and not circuits_open:
            attach_attempts(mine[-1].error, attempts)
            return mine[-1].error
        if lines:
            reason = f":\n{lines}"
        elif timed_out:
            reason = ": the call's deadline was reached"
        else:
            reason = ": the provider list is empty"
        return RetryNoProviderError(f"{label}: no provider could be tried{reason}", attempts=mine)
    deadline = " (the call's deadline was reached)" if timed_out else ""
    return RetryProviderError(
        f"{label}: all {len(tried)} attempts failed{deadline}:\n{lines}", attempts=mine
    )


def interrupted_error(exc: Exception, name: str, attempts: list[Attempt]) -> StreamInterrupted:
    """The error for a failure after content, carrying the call's attempts."""
    if isinstance(exc, StreamInterrupted) and exc.attempts is attempts:
        return exc  # already built by a nested RetryingCall sharing the attempts
    cause: BaseException = exc
    if isinstance(exc, StreamInterrupted):
        # A provider that raised StreamInterrupted itself: keep its cause,
        # or the connection failure it stands for, never a nested one.
        inner = exc.cause or exc.__cause__
        if inner is None or isinstance(inner, StreamInterrupted):
            inner = APIConnectionError(exc.message, provider=exc.provider or name)
        cause = inner
    interrupted = StreamInterrupted(
        f"{name}: the stream broke off after content had been delivered: {cause}",
        provider=name,
        cause=cause,
    )
    attach_attempts(interrupted, attempts)
    return interrupted
