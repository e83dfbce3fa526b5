"""``Attempt``: one try of one provider, as every result and error reports it.

At the bottom layer so that completions, streams and errors can all say
``list[Attempt]`` without importing the retry engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatkit._usage import CompletionUsage

__all__ = ["Attempt"]

_MAX_REASON = 300


@dataclass
class Attempt:
    """One try of one provider, or a provider skipped before trying.

    number: 1-based position among every attempt of the call (skips included).
    retry: 0 for a provider's first attempt, n for its n-th retry.
    delay: the backoff slept before the next attempt of the same provider;
        None when the call moved on (or ended) after this attempt.
    hedge: started in parallel because an earlier attempt had no content
        after ``hedge_after`` seconds.
    lost: a hedged race was won by another attempt; this one was cancelled
        (or its content discarded) and the connection closed.
    breaker: the provider's circuit when the attempt was admitted
        ("closed", "half_open": a probe, "open": skipped); None without a breaker.
    usage, model: what an attempt that was billed but not delivered used (an
        empty answer moved on from); None otherwise: the answer has its own.
    """

    provider: str
    number: int
    retry: int = 0
    error: BaseException | None = None
    delay: float | None = None
    skipped: bool = False
    duration: float = 0.0
    hedge: bool = False
    lost: bool = False
    breaker: str | None = None
    usage: CompletionUsage | None = None
    model: str | None = None

    @property
    def status_code(self) -> int | None:
        return getattr(self.error, "status_code", None)

    @property
    def decision(self) -> str:
        """What came of it: "success", "retry" (the same provider, after
        ``delay``), "next" (moved on, or the call gave up), "skipped", "lost"
        (a hedge race won by another attempt), "cancelled" (the call was)."""
        if self.skipped:
            return "skipped"
        if self.lost:
            return "lost"
        if self.error is None:
            return "success"
        if type(self.error).__name__ == "CancelledError":
            return "cancelled"
        return "retry" if self.delay is not None else "next"

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped and not self.lost

    def describe(self) -> str:
        """One line: provider, attempt number, and the status or exception."""
        label = f"attempt {self.number}, hedge" if self.hedge else f"attempt {self.number}"
        if self.lost:
            return f"{self.provider} ({label}): lost the race"
        if self.error is None:
            return f"{self.provider} ({label}): ok"
        reason = self._reason(self.error)
        if self.skipped:
            return f"{self.provider}: skipped: {reason}"
        wait = f"; retrying in {self.delay:.3g}s" if self.delay is not None else ""
        return f"{self.provider} ({label}): {reason}{wait}"

    def _reason(self, error: BaseException) -> str:
        message = " ".join(str(error).split())
        prefix = f"{self.provider}: "
        if message.startswith(prefix):
            message = message[len(prefix) :]
        status = self.status_code
        if status is not None and not message.startswith(f"{status} "):
            message = f"{status} {message}"
        if len(message) > _MAX_REASON:
            message = message[: _MAX_REASON - 3] + "..."
        return f"{type(error).__name__}: {message}" if message else type(error).__name__

    __str__ = describe
