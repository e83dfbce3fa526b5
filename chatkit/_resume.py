"""Opt-in resume of a stream that broke off after content (``resume=``).

Past the commit point a failure normally ends the stream with
``StreamInterrupted``. With ``Resume``, a retryable failure (a reset
connection, a read timeout, a 5xx error event) instead sends a continuation
request: the original conversation plus the text delivered so far as a final
assistant message (a *prefill*), to a provider that declares
``Capabilities.continue_message``. The continuation's text is joined at the
seam (``_seam``) and handed on as the rest of the same answer: same chunk
id, no second role chunk, usage summed over the pieces.

``resume_stream`` drives it over a ``Resumable`` (``RetryingCall``, a layer
up, which provides the pieces): before its content a continuation is retried
like any call; a continuation that fails before content, a failure that is
not retryable, a provider that cannot continue, or the last of
``max_resumes`` resumes used up ends the stream with ``StreamInterrupted``,
whose ``partial_text`` (filled in by the stream object) is the whole answer
delivered across the pieces.

Not resumed: answers with tool calls, reasoning, refusals or more than one
choice (``n > 1``), and requests with a ``response_format`` (constrained
decoding would start over).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, TypeVar

from pydantic import BaseModel

from chatkit._attempt import Attempt
from chatkit._config import is_number
from chatkit._errors import InvalidRequestError, StreamInterrupted
from chatkit._policy import RetryPolicy
from chatkit._request import ChatRequest
from chatkit._seam import Seam, split_prefill
from chatkit._types import ChatCompletionChunk, CompletionUsage
from chatkit.providers._base import Capabilities

__all__ = [
    "Resumable",
    "Resume",
    "ResumeRecord",
    "can_continue",
    "continuers",
    "prefilled_messages",
    "resume_stream",
]

_DEFAULT_MAX_OVERLAP = 200

UsageKnown: TypeAlias = Literal["all", "prompt", "none"]

L = TypeVar("L")
M = TypeVar("M")


@dataclass(frozen=True)
class Resume:
    """Continue a stream that broke off after content, instead of raising.

    max_resumes: continuations allowed per answer (0: never resume).
    same_provider_only: continue only on the provider that was answering
        (another model would change the voice mid-sentence). With False,
        when it cannot continue or its continuation fails before content,
        the members of its ``RetryProvider`` after it (wrapping around) that
        can continue take over, in order (``continuers``).
    max_overlap: the most characters at the end of the text so far that a
        continuation may repeat and have dropped at the seam.

    ``AsyncClient(resume=True)`` means ``Resume()``. Only providers whose
    ``capabilities.continue_message`` is true can continue (Anthropic, the
    ``vllm`` and ``llamacpp`` presets, ``Local``); others raise
    ``StreamInterrupted`` as without it. See docs/resilience.md.
    """

    max_resumes: int = 2
    same_provider_only: bool = True
    max_overlap: int = _DEFAULT_MAX_OVERLAP

    def __post_init__(self) -> None:
        for name in ("max_resumes", "max_overlap"):
            value = getattr(self, name)
            if not is_number(value, integer=True) or value < 0:
                raise InvalidRequestError(
                    f"resume: {name} must be an integer >= 0, got {value!r}", field="resume"
                )
        if not isinstance(self.same_provider_only, bool):
            raise InvalidRequestError(
                "resume: same_provider_only must be True or False", field="resume"
            )

    @classmethod
    def coerce(cls, value: object) -> Resume | None:
        """``resume=`` as given: None/False (off), True (the defaults) or a ``Resume``."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Resume):
            return value
        raise InvalidRequestError(
            f"resume must be True, False, None or a chatkit.Resume, got {type(value).__name__}",
            field="resume",
        )


@dataclass
class ResumeRecord:
    """One continuation of a broken stream (``stream.resumes``).

    number: 1 for the first continuation of the answer, and so on.
    offset: characters of the answer delivered before it (where the seam is).
    cause: the failure that broke the stream off.
    provider: who continued it; None while (or if) no continuation reached content.
    overlap: characters the continuation repeated, dropped at the seam.
    error: why the continuation failed before content (the stream then
        raised ``StreamInterrupted``); None otherwise.
    broken_usage: what is known of the usage of the piece that broke off
        (the one this continues), as counted in the answer's summed usage.
    broken_usage_known: how much of it is known: "all" (the piece reported
        its usage before breaking off), "prompt" (its prompt tokens only,
        from Anthropic's ``message_start``; its completion tokens are not
        counted) or "none" (it reported nothing: left out of the sum, which
        is then short by that piece). chatkit never estimates the rest.
    attempts: the attempts the continuation made (also in ``stream.attempts``).
    """

    number: int
    offset: int
    cause: BaseException
    provider: str | None = None
    overlap: int = 0
    error: BaseException | None = None
    broken_usage: CompletionUsage | None = None
    broken_usage_known: UsageKnown = "none"
    _all: list[Attempt] = field(default_factory=list, repr=False)
    _start: int = field(default=0, repr=False)
    _end: int | None = field(default=None, repr=False)

    @property
    def attempts(self) -> list[Attempt]:
        return self._all[self._start : self._end]

    @property
    def ok(self) -> bool:
        """Whether the continuation reached content."""
        return self.error is None and self.provider is not None


class Resumable(Protocol):
    """What ``resume_stream`` needs of a call (``RetryingCall`` provides it)."""

    request: ChatRequest
    policy: RetryPolicy
    attempts: list[Attempt]
    resumes: list[ResumeRecord]
    provider: str | None  # who answered, once one reached content

    def piece(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The stream up to its end, or to ``StreamInterrupted`` after content."""
        ...

    def continuation(self, prefill: str, others: bool) -> Resumable | None:
        """A call continuing the answer from ``prefill`` on the provider that was
        answering if it can continue (then, with ``others``, its siblings that
        can: ``continuers``), or None when none of them can."""
        ...


def can_continue(provider: object) -> bool:
    """Whether ``provider`` declares that it continues a final assistant message."""
    capabilities = getattr(provider, "capabilities", None)
    return isinstance(capabilities, Capabilities) and capabilities.continue_message


def continuers(leaf: L, members: Sequence[M], *, others: bool) -> list[L | M]:
    """Who is asked to continue an answer ``leaf`` gave, in order.

    ``leaf`` itself when it can continue; then, with ``others``, the
    ``members`` (the provider list ``leaf`` was chosen from, in this call's
    order) after it, wrapping around, that can continue. Empty: nobody can.
    Members with an open circuit stay in the list: the call skips them, as
    an attempt that says so.
    """

    def is_leaf(member: object) -> bool:
        return member is leaf or (isinstance(member, type) and type(leaf) is member)

    chosen: list[L | M] = [leaf] if can_continue(leaf) else []
    if not others:
        return chosen
    at = next((i for i, member in enumerate(members) if is_leaf(member)), -1)
    after = [*members[at + 1 :], *members[: max(at, 0)]]
    chosen.extend(m for m in after if not is_leaf(m) and can_continue(m))
    return chosen


def prefilled_messages(messages: list[dict[str, Any]], prefill: str) -> list[dict[str, Any]] | None:
    """``messages`` with ``prefill`` as the final assistant message (a new list).

    A conversation that already ends in the caller's own assistant text gets
    ``prefill`` appended to it (one final assistant message, as servers
    require; without doubling whitespace between them); one ending in other
    assistant content (parts, tool calls) cannot be continued: None.
    """
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "assistant":
        return [*messages, {"role": "assistant", "content": prefill}]
    content = last.get("content")
    if not isinstance(content, str) or last.get("tool_calls"):
        return None
    if prefill[:1].isspace():
        # The model wrote the space itself: its prefill was sent without one
        # (Anthropic's is trimmed), so the two must not be doubled.
        content = content.rstrip()
    return [*messages[:-1], {**last, "content": content + prefill}]


def _eligible(request: ChatRequest) -> bool:
    params = request.params
    n = params.get("n")
    return (n is None or n == 1) and params.get("response_format") is None


_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def _counts(details: BaseModel | None) -> dict[str, int]:
    if details is None:
        return {}
    return {k: v for k, v in details.model_dump().items() if is_number(v, integer=True)}


def _plus(before: CompletionUsage | None, usage: CompletionUsage) -> CompletionUsage:
    """``before`` and ``usage`` summed, their token details field by field."""
    if before is None:
        return usage
    update: dict[str, Any] = {
        "prompt_tokens": before.prompt_tokens + usage.prompt_tokens,
        "completion_tokens": before.completion_tokens + usage.completion_tokens,
        "total_tokens": before.total_tokens + usage.total_tokens,
    }
    for name in _DETAILS:
        mine, theirs = getattr(before, name), getattr(usage, name)
        if mine is None or theirs is None:
            update[name] = theirs if mine is None else mine
            continue
        summed = _counts(theirs)
        for key, value in _counts(mine).items():
            summed[key] = summed.get(key, 0) + value
        update[name] = theirs.model_copy(update=summed)
    return usage.model_copy(update=update)


def _broken_usage(
    reported: CompletionUsage | None, cause: BaseException
) -> tuple[CompletionUsage | None, UsageKnown]:
    """What is known of the usage of a piece that broke off, and how much.

    The usage it reported (vLLM's ``continuous_usage_stats``, a usage chunk
    before the break): "all". Otherwise a provider that knows part of it sets
    the error's ``partial_usage``, its prompt tokens (Anthropic's
    ``message_start``): "prompt", its completion tokens not counted. Else
    "none": the piece is left out of the sum. Nothing is estimated.
    """
    if reported is not None:
        return reported, "all"
    partial = getattr(cause, "partial_usage", None)
    if isinstance(partial, CompletionUsage):
        return partial, "prompt"
    return None, "none"


class _Answer:
    """The answer as delivered across pieces, and the seam being joined."""

    def __init__(self, request: ChatRequest) -> None:
        self.parts: list[str] = []
        self.blocked = not _eligible(request)
        self.seam: Seam | None = None
        self.id: str | None = None
        self.created = 0
        self.before: CompletionUsage | None = None  # usage of the finished pieces
        self.usage: CompletionUsage | None = None  # usage of this piece
        self.held: ChatCompletionChunk | None = None  # the last chunk held at the seam
        self.record: ResumeRecord | None = None
        self.continuing: Resumable | None = None  # the call of the current continuation
        self.reached = False  # whether the current continuation reached content

    def watch(self, chunk: ChatCompletionChunk) -> None:
        """Note what ``chunk`` delivers: its text, and whatever rules a resume out."""
        if self.id is None:
            self.id, self.created = chunk.id, chunk.created
        for choice in chunk.choices:
            delta = choice.delta
            if choice.index != 0 or delta.tool_calls or delta.reasoning_content or delta.refusal:
                self.blocked = True
            elif delta.content:
                self.parts.append(delta.content)

    def rejoin(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk | None:
        """A continuation's chunk as part of the answer; None when nothing of it is left."""
        seam = self.seam
        assert seam is not None and self.id is not None
        if not self.reached:
            self.reached = True
            if self.record is not None and self.continuing is not None:
                self.record.provider = chunk.provider or self.continuing.provider
        chunk.id, chunk.created = self.id, self.created
        if chunk.usage is not None:
            self.usage = chunk.usage
            chunk.usage = _plus(self.before, chunk.usage)
        ends = chunk.usage is not None
        for choice in chunk.choices:
            delta = choice.delta
            if delta.role is not None:
                delta.role = None  # the answer's role chunk came with the first piece
            if choice.index == 0 and delta.content and not seam.decided:
                delta.content = seam.feed(delta.content) or None
                if not seam.decided:
                    self.held = chunk
            ends = ends or choice.finish_reason is not None
        if ends and not seam.decided and chunk.choices:
            first = chunk.choices[0].delta
            first.content = (seam.finish() + (first.content or "")) or None
        if seam.decided and self.record is not None:
            self.record.overlap = seam.dropped
        if chunk.has_content or chunk.usage is not None:
            return chunk
        return chunk if any(c.finish_reason is not None for c in chunk.choices) else None

    def leftover(self) -> ChatCompletionChunk | None:
        """What the seam still holds when a continuation ended without a finishing chunk."""
        if self.seam is None or self.seam.decided or self.held is None:
            return None
        text = self.seam.finish()
        if self.record is not None:
            self.record.overlap = self.seam.dropped
        if not text:
            return None
        chunk = self.held.model_copy(deep=True)
        chunk.choices[0].delta.content = text
        return chunk

    def resume_point(
        self, cause: BaseException, call: Resumable, resume: Resume
    ) -> tuple[str, str] | None:
        """``(prefill, trimmed)`` to continue from, or None when this break is not resumed."""
        if self.blocked or len(call.resumes) >= resume.max_resumes:
            return None
        if call.policy.decide(cause) != "retry":
            return None
        prefill, trimmed = split_prefill("".join(self.parts))
        return (prefill, trimmed) if prefill else None


async def resume_stream(
    call: Resumable, resume: Resume
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """``call``'s stream, continued after each resumable break (see the module docstring)."""
    answer = _Answer(call.request)
    piece = call.piece()
    try:
        while True:
            try:
                async for chunk in piece:
                    if answer.seam is None:
                        if chunk.usage is not None:
                            answer.usage = chunk.usage
                        answer.watch(chunk)
                        yield chunk
                        continue
                    joined = answer.rejoin(chunk)
                    if joined is not None:
                        answer.watch(joined)
                        yield joined
                leftover = answer.leftover()
                if leftover is not None:
                    answer.watch(leftover)
                    yield leftover
                return
            except StreamInterrupted as exc:
                piece = await _next_piece(call, resume, answer, exc)
            except Exception as exc:
                if answer.record is None or answer.reached:
                    raise
                raise _unresumed(call, answer.record, exc) from exc
    finally:
        await piece.aclose()


async def _next_piece(
    call: Resumable, resume: Resume, answer: _Answer, interrupted: StreamInterrupted
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """The continuation after ``interrupted``, or ``interrupted`` raised unchanged."""
    cause = interrupted.cause or interrupted.__cause__ or interrupted
    start = answer.resume_point(cause, call, resume)
    continuation = (
        None if start is None else call.continuation(start[0], not resume.same_provider_only)
    )
    if start is None or continuation is None:
        raise interrupted
    prefill, trimmed = start
    broken, known = _broken_usage(answer.usage, cause)
    if broken is not None:
        answer.before = _plus(answer.before, broken)
    answer.usage = None
    if answer.record is not None:
        answer.record._end = len(call.attempts)
    offset = len(prefill) + len(trimmed)
    record = ResumeRecord(len(call.resumes) + 1, offset, cause, _all=call.attempts)
    record.broken_usage, record.broken_usage_known = broken, known
    record._start = len(call.attempts)
    call.resumes.append(record)
    answer.record = record
    answer.seam = Seam(prefill, trimmed, max_overlap=resume.max_overlap)
    answer.held, answer.continuing, answer.reached = None, continuation, False
    return continuation.piece()


def _unresumed(call: Resumable, record: ResumeRecord, error: Exception) -> StreamInterrupted:
    """The error when a continuation failed before content: the stream ends here."""
    record.error = error
    record._end = len(call.attempts)
    interrupted = StreamInterrupted(
        f"the stream broke off after content had been delivered ({record.cause}) and"
        f" could not be resumed: {error}",
        provider=getattr(error, "provider", None),
        cause=error,
    )
    interrupted.attempts = call.attempts
    return interrupted
