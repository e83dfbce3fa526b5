"""Retries and fallback, with a commit point.

``RetryPolicy`` decides (pure, no I/O): is this error worth retrying on the
same provider, how long to wait. ``RetryingCall`` drives one call through a
list of providers with that policy. The client uses it for its single
provider's ``max_retries``; ``RetryProvider`` uses it for many.

The commit point: a stream is retried or falls back only until the first
content (text, reasoning, tool call) is handed to the caller. Chunks before
it (the role-only opener) are held back, so a failed attempt leaves no trace.
After it, any failure raises ``StreamInterrupted`` with the text so far.

Nesting: when a candidate is itself a retrying provider (``handles_retries``),
its ``RetryingCall`` is adopted: it shares this call's ``http`` (so the same
overall deadline) and attempt list, so the caller sees every leaf attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, TypeVar, runtime_checkable

import anyio

from chatkit._assemble import CompletionBuilder
from chatkit._attempt import Attempt
from chatkit._call_errors import attach_attempts, call_failure, interrupted_error
from chatkit._errors import (
    ClientClosedError,
    InvalidRequestError,
    MissingAuthError,
    RetryProviderError,
    StreamInterrupted,
    UnsupportedCapabilityError,
)
from chatkit._gate import CLOSED_GATE, Gate, HealthChecks, breaker_state, tokens_used
from chatkit._health import (
    CircuitBreaker,
    CircuitOpenError,
    StateStore,
)
from chatkit._hedge import NOTHING as _NOTHING
from chatkit._hedge import Hedging, Lane, Won, race
from chatkit._hooks import CallInfo, HookRunner, request_headers, with_headers
from chatkit._outcome import (
    Opened,
    billed,
    close_quietly,
    empty_answer,
    min_seconds,
    next_chunk,
    time_limit,
)
from chatkit._policy import RetryPolicy
from chatkit._prices import PriceTable
from chatkit._request import ChatRequest
from chatkit._resume import Resume, ResumeRecord, continuers, prefilled_messages, resume_stream
from chatkit._transport import DEADLINE_OWNER, HTTPCall
from chatkit._types import ChatCompletion, ChatCompletionChunk, set_provider
from chatkit.providers import model_for
from chatkit.providers._base import (
    Provider,
    provider_name,
)
from chatkit.providers._http import HTTPProvider

__all__ = ["Attempt", "RetryPolicy", "RetryingCall", "RetryingProvider"]

logger = logging.getLogger("chatkit")

T = TypeVar("T")


# Nothing was sent: the provider cannot take this call at all, so it is skipped.
_SKIP_ERRORS = (MissingAuthError, UnsupportedCapabilityError)


@runtime_checkable
class RetryingProvider(Provider, Protocol):
    """A provider that retries by itself (``RetryProvider``, ``IterListProvider``).

    The client adds no retry layer over it, and a ``RetryingCall`` with it
    among its candidates adopts its ``retrying_call`` (one deadline, one
    attempt list). ``handles_retries`` lets a subclass turn that off.
    """

    @property
    def handles_retries(self) -> bool: ...

    def retrying_call(self, request: ChatRequest, http: HTTPCall) -> RetryingCall: ...


def own_retrying_call(
    provider: Provider, request: ChatRequest, http: HTTPCall
) -> RetryingCall | None:
    """``provider``'s own ``RetryingCall`` when it retries by itself, else None."""
    # The attribute first: the protocol check costs 11 us and nearly every
    # provider is a plain one (see provider_name).
    if getattr(provider, "handles_retries", False) and isinstance(provider, RetryingProvider):
        return provider.retrying_call(request, http)
    return None


# What one candidate becomes for the loop: a provider tried attempt by
# attempt, or a nested provider's whole call, adopted.
_Runnable: TypeAlias = "Provider | RetryingCall"


@dataclass
class RetryingCall(HealthChecks):
    """One chat call driven through ``candidates`` under ``policy``.

    candidates: provider instances, or classes instantiated on the spot (a
        class that raises ``MissingAuthError`` is skipped, its reason recorded).
    retry_same: whether a retryable error is retried on the same provider
        (up to ``policy.max_retries`` times) before moving on.
    aggregate: raise ``RetryProviderError`` listing every attempt when all fail;
        otherwise re-raise the last error, with the attempts as a note.
    timeout: seconds for this call from its start, every attempt, backoff and
        the streamed answer included; the earlier of it and ``http``'s own
        deadline (the client's ``Timeout.total``) wins.
    route_models: give each candidate the model as ``model_for`` has it (a
        ``RetryProvider``'s members: ``"anthropic:claude-x"`` reaches Anthropic
        as ``claude-x``, and a vendor it cannot be meant for is skipped).
    """

    candidates: Sequence[Provider | type[Provider]]
    request: ChatRequest
    http: HTTPCall
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    retry_same: bool = True
    aggregate: bool = False
    on_attempt: Callable[[Attempt], object] | None = None
    label: str = "chatkit"
    attempts: list[Attempt] = field(default_factory=list)
    provider: str | None = None
    timeout: float | None = None
    route_models: bool = False
    breaker: CircuitBreaker | None = None
    state: StateStore | None = None
    hedging: Hedging | None = None
    fallback_on_empty: bool = False
    prices: PriceTable | None = None
    hooks: HookRunner | None = None
    info: CallInfo | None = None
    resume: Resume | None = None
    resumes: list[ResumeRecord] = field(default_factory=list)
    _parent: RetryingCall | None = field(default=None, init=False, repr=False)
    # Who answered (the leaf provider and the call that ran it), for a resume.
    _leaf: tuple[Provider, RetryingCall] | None = field(default=None, init=False, repr=False)
    _continuing: RetryingCall | None = field(default=None, init=False, repr=False)
    _openers: dict[int, _Runnable] = field(default_factory=dict, init=False, repr=False)
    _deadline: float | None = field(default=None, init=False, repr=False)
    _first: int = field(default=0, init=False, repr=False)
    _timed_out: bool = field(default=False, init=False, repr=False)
    _half_opens: float | None = field(default=None, init=False, repr=False)
    _stream_gate: object = field(default=None, init=False, repr=False)

    # -- bookkeeping ---------------------------------------------------------

    def _root(self) -> RetryingCall:
        """The outermost call: the one the client made, holding the hooks."""
        call = self
        while call._parent is not None:
            call = call._parent
        return call

    async def _breaker_changed(self, name: str, old: str, new: str) -> None:
        root = self._root()
        if root.hooks is not None and root.info is not None:
            await root.hooks.emit("on_breaker_change", root.info, name, old, new)

    async def _tell_ended(self, attempt: Attempt) -> None:
        root = self._root()
        if root.hooks is not None and root.info is not None:
            await root.hooks.emit("on_attempt_end", root.info, attempt)

    async def _record(self, attempt: Attempt) -> None:
        # Numbered as recorded: hedged attempts end in another order than they began.
        attempt.number = len(self.attempts) + 1
        self.attempts.append(attempt)
        await self._tell_ended(attempt)
        logger.debug("%s: %s", self.label, attempt)  # formatted only when logged
        call: RetryingCall | None = self
        while call is not None:
            if call.on_attempt is not None:
                try:
                    call.on_attempt(attempt)
                except Exception:
                    # A logging or metrics hook must not change the call's outcome.
                    logger.exception("%s: on_attempt hook failed", call.label)
            call = call._parent

    def _remaining(self) -> float | None:
        """Seconds left before the earlier of this call's and the http deadline."""
        remaining = self.http.remaining()
        if self._deadline is not None:
            own = self._deadline - asyncio.get_running_loop().time()
            remaining = own if remaining is None else min(remaining, own)
        return remaining

    def _out_of_time(self) -> bool:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            self._timed_out = True
        return self._timed_out

    def _resolve(self, candidate: Provider | type[Provider]) -> tuple[_Runnable, ChatRequest]:
        """The provider to try for ``candidate``, and the request it gets."""
        provider = candidate() if isinstance(candidate, type) else candidate
        request = self._request_for(provider)
        # By attribute, as ``SupportsCheckRequest`` checks on 3.11 (present, not
        # None): a runtime protocol isinstance costs 4 us, once per candidate.
        check = getattr(provider, "check_request", None)
        if check is not None:
            check(request)
        nested = own_retrying_call(provider, request, self.http)
        if nested is not None:
            return self._adopt(nested), request
        return provider, request

    def _request_for(self, provider: Provider) -> ChatRequest:
        """With ``route_models``, each member gets the model as ``model_for`` has it:
        a ``"name:"`` prefix is stripped for the provider it names, and a
        provider it cannot be meant for is skipped."""
        if not self.route_models:
            return self.request
        try:
            model = model_for(provider, self.request.model)
        except InvalidRequestError as exc:
            raise UnsupportedCapabilityError(str(exc), field="model") from None
        if model == self.request.model:
            return self.request
        return dataclasses.replace(self.request, model=model)

    def _nested(self, provider: object) -> bool:
        return isinstance(provider, RetryingCall)

    def _adopt(self, inner: RetryingCall) -> RetryingCall:
        # The nested call records into our list, so numbering continues and
        # the caller sees every leaf attempt; its hooks and ours both fire.
        inner.attempts = self.attempts
        inner._parent = self
        return inner

    # -- the loop ------------------------------------------------------------

    async def _run(self, try_once: Callable[[_Runnable, str, ChatRequest], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        self.http.start()
        if self.timeout is not None and self._deadline is None:
            self._deadline = loop.time() + self.timeout
        self._first = len(self.attempts)
        for _ in range(2):  # a second round only after waiting for a circuit to half-open
            result = await self._round(try_once)
            if result is not _NOTHING:
                return result  # type: ignore[return-value]
            wait = self._wait_for_half_open()
            if wait is None:
                break
            await anyio.sleep(wait)
        raise self._failure()

    async def _round(
        self, try_once: Callable[[_Runnable, str, ChatRequest], Awaitable[T]]
    ) -> T | object:
        """Every candidate once (with its retries); ``_NOTHING`` when none answered."""
        self._half_opens = None
        if self.hedging is not None:
            won = await race(self, try_once, self.hedging)
        else:
            won = _NOTHING
            last = len(self.candidates) - 1
            for index, candidate in enumerate(self.candidates):
                if self._out_of_time():
                    break
                lane = await self.lane(candidate, index == last)
                if lane is not None:
                    won = await self.run_lane(lane, try_once)
                    if won is not _NOTHING:
                        break
        if not isinstance(won, Won):
            return _NOTHING
        result = won.result
        if isinstance(result, ChatCompletion):
            self.provider = result.provider
        elif isinstance(result, Opened):
            self.provider = result.name
            if result.agen is not None:
                self._stream_gate = won.gate  # the stream holds it until its end
                opener = self._openers.pop(id(result.agen))  # set when it reached content
                self._leaf = opener._leaf if isinstance(opener, RetryingCall) else (opener, self)
        return result

    async def discard(self, won: Won) -> None:
        """A lane that reached content too, but lost the race: close it."""
        won.attempt.lost = True
        result = won.result
        if isinstance(result, Opened) and result.agen is not None:
            await close_quietly(result.agen)
            await self._end(won.gate)

    async def lane(
        self, candidate: Provider | type[Provider], last: bool
    ) -> Lane[_Runnable] | None:
        """``candidate`` made ready to try, or None when it is skipped (recorded)."""
        try:
            provider, request = self._resolve(candidate)
        except _SKIP_ERRORS as exc:
            await self._skip(provider_name(candidate), exc)
            return None
        name = provider.label if isinstance(provider, RetryingCall) else provider_name(provider)
        return Lane(provider, request, name, last)

    async def run_lane(
        self,
        lane: Lane[_Runnable],
        try_once: Callable[[_Runnable, str, ChatRequest], Awaitable[T]],
    ) -> Won | object:
        """Try ``lane``'s provider, with its retries: a ``Won``, or ``_NOTHING``."""
        loop = asyncio.get_running_loop()
        provider, request, name = lane.provider, lane.request, lane.name
        retry = 0
        while True:
            gate = await self._admit(provider, name, request, lane.last)
            if gate is CLOSED_GATE:
                return _NOTHING
            attempt = Attempt(name, 0, retry, hedge=lane.hedge, breaker=breaker_state(gate))
            root = self._root()
            hooks, info = root.hooks, root.info
            told = hooks is not None and info is not None and not self._nested(provider)
            if told and hooks is not None:
                headers = request_headers.get()  # a hook may add its own for this attempt
                endpoint = provider.base_url if isinstance(provider, HTTPProvider) else None
                await hooks.emit("on_attempt_start", info, attempt, endpoint)
            started = loop.time()
            try:
                if told:
                    result = await with_headers(headers, try_once(provider, name, request))
                else:
                    result = await try_once(provider, name, request)
            except asyncio.CancelledError as exc:
                await self._abandon(gate)
                attempt.duration = loop.time() - started
                if lane.lost:  # another lane won the race
                    attempt.lost = True
                    await self._record(attempt)
                elif not self._nested(provider):
                    # Told to the hooks only: the call's attempts (and its
                    # error, when a deadline did this) say what cut it short.
                    attempt.error = exc
                    attempt.number = len(self.attempts) + 1
                    await self._tell_ended(attempt)
                raise
            except _SKIP_ERRORS as exc:
                # Refused before any I/O: the attempt that started ends skipped.
                await self._abandon(gate)
                attempt.error, attempt.skipped = exc, True
                await self._record(attempt)
                return _NOTHING
            except ClientClosedError as exc:
                # Nothing can succeed on a closed client: no retry, no fallback.
                await self._abandon(gate)
                attempt.error = exc
                attempt.duration = loop.time() - started
                await self._record(attempt)
                attach_attempts(exc, self.attempts)
                raise
            except Exception as exc:
                error: Exception = exc
                attempt.duration = loop.time() - started
                self.http.scrub(error)
                await self._release(gate, error)
            else:
                streaming = isinstance(result, Opened) and result.agen is not None
                latency = loop.time() - started
                await self._release(gate, None, latency, tokens_used(result), streaming)
                if not isinstance(provider, RetryingCall):
                    attempt.duration = latency
                    empty = empty_answer(result, name) if self.fallback_on_empty else None
                    if empty is not None:  # nothing was delivered: the next provider
                        attempt.error = empty
                        attempt.usage, attempt.model = billed(result)
                        await self._record(attempt)
                        return _NOTHING
                    if not lane.racing:
                        await self._record(attempt)
                return Won(result, attempt, gate)
            if isinstance(provider, RetryingCall):
                # Its attempts are already in our list; it is never retried whole.
                if not isinstance(error, RetryProviderError):
                    attempt.error = error
                    await self._record(attempt)
                return _NOTHING
            attempt.error = error
            remaining = self._remaining()
            can_retry = self.retry_same and retry < self.policy.max_retries
            if not self._out_of_time() and can_retry and self.policy.decide(error) == "retry":
                attempt.delay = self.policy.delay(error, retry, remaining)
            await self._record(attempt)
            if attempt.delay is None:
                return _NOTHING
            await anyio.sleep(attempt.delay)
            retry += 1

    async def _skip(self, name: str, error: BaseException) -> None:
        breaker = "open" if isinstance(error, CircuitOpenError) else None
        attempt = Attempt(name, 0, error=error, skipped=True, breaker=breaker)
        await self._record(attempt)

    def _failure(self) -> BaseException:
        timed_out, label = self._timed_out, self.label
        return call_failure(
            self.attempts, self._first, aggregate=self.aggregate, label=label, timed_out=timed_out
        )

    # -- non-streamed --------------------------------------------------------

    async def complete(self) -> ChatCompletion:
        completion = await self._run(self._complete_once)
        attempts = completion._attempts = self.attempts
        if self.prices is not None:
            # completion_cost(completion) with the attempts at hand: reading
            # them back through the model's private-attribute property costs
            # 2-4 us a call (pydantic's __getattr__), the whole pricing 1.8.
            completion._cost = self.prices.call_cost(
                completion.provider, completion.model, completion.usage, attempts
            )
        return completion

    async def _complete_once(
        self, provider: _Runnable, name: str, request: ChatRequest
    ) -> ChatCompletion:
        limit = self._remaining()
        message = "no answer within the {limit:.3g}s left before the call's deadline"
        # This timeout is the call's deadline for the whole attempt: the
        # transport arms no total timer of its own for this task's requests.
        owner = DEADLINE_OWNER.set(asyncio.current_task())
        try:
            async with time_limit(limit, name, message):
                completion = await self._complete_unbounded(provider, request)
        finally:
            DEADLINE_OWNER.reset(owner)
        if completion.provider is None:
            set_provider(completion, name)
        self.provider = completion.provider
        return completion

    async def _complete_unbounded(
        self, provider: _Runnable, request: ChatRequest
    ) -> ChatCompletion:
        if isinstance(provider, RetryingCall):
            return await provider.complete()
        # By attribute, as ``SupportsComplete`` checks (see ``_resolve``).
        complete = getattr(provider, "complete", None)
        if complete is not None:
            result: ChatCompletion = await complete(request, self.http)
            return result
        builder = CompletionBuilder()
        agen = provider.stream(request, self.http)
        try:
            async for chunk in agen:
                builder.add(chunk)
        finally:
            await close_quietly(agen)
        return builder.build()

    # -- streamed ------------------------------------------------------------

    def stream(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The answer's chunks; with ``resume`` (on the outermost call), continued
        after a resumable break (``_resume``), otherwise ``piece()``."""
        if self.resume is not None and self._parent is None:
            return resume_stream(self, self.resume)
        return self.piece()

    def continuation(self, prefill: str, others: bool) -> RetryingCall | None:
        """A call continuing this answer from ``prefill`` (see ``_resume.Resumable``):
        on the provider that answered last (the last continuation's, after a
        resume) if it can continue, then, with ``others``, on the members of
        its provider list after it that can (``continuers``)."""
        last = self._continuing if self._continuing is not None else self
        if self._leaf is None or last._leaf is None:
            return None
        # The first answer's owner holds the conversation and the member list.
        leaf, owner = last._leaf[0], self._leaf[1]
        candidates = continuers(leaf, owner.candidates, others=others)
        messages = prefilled_messages(owner.request.messages, prefill)
        if not candidates or messages is None:
            return None
        call = dataclasses.replace(
            owner,
            candidates=candidates,
            request=dataclasses.replace(owner.request, messages=messages),
            on_attempt=None,
            hedging=None,
            timeout=None,
            resume=None,
            # A continuation that adds nothing is the end of the answer (the
            # model had finished), not an empty answer to move on from.
            fallback_on_empty=False,
        )
        self._adopt(call)
        call._deadline = self._deadline
        self._continuing = call
        return call

    async def piece(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The chunks of the first attempt that reaches content, then the rest of it.

        After content, a failure raises ``StreamInterrupted`` whose
        ``partial_text`` is left for the consumer (``AsyncChatStream``) to fill
        in: it holds the only copy of the text.
        """
        agen, held, name = await self._run(self._open_stream)
        # The http deadline is enforced by the transport; a tighter one of our
        # own must be enforced here, chunk by chunk.
        http_deadline = self.http.deadline
        own = self._deadline
        bounded = own is not None and (http_deadline is None or own < http_deadline)
        used: float | None = None
        # Usage is looked for only when a rate budget will settle by it.
        gate = self._stream_gate
        settles = isinstance(gate, Gate) and gate.limit is not None
        try:
            for chunk in held:
                yield chunk
            del held[:]
            if agen is not None and (bounded or settles):
                while (chunk_or_none := await self._next_bounded(agen, name, bounded)) is not None:
                    if chunk_or_none.usage is not None:
                        used = float(chunk_or_none.usage.total_tokens)
                    yield chunk_or_none
            elif agen is not None:
                async for chunk in agen:  # the hot path: nothing per chunk
                    yield chunk
        except Exception as exc:
            self.http.scrub(exc)
            raise self._interrupted(exc, name) from exc
        finally:
            await self._end(self._stream_gate, used)
            if agen is not None:
                await close_quietly(agen)

    def _interrupted(self, exc: Exception, name: str) -> StreamInterrupted:
        """The error for a failure after content, carrying the call's attempts."""
        return interrupted_error(exc, name, self.attempts)

    async def _next_bounded(
        self, agen: AsyncIterator[ChatCompletionChunk], name: str, bounded: bool = True
    ) -> ChatCompletionChunk | None:
        if not bounded:
            return await next_chunk(agen)
        async with time_limit(self._remaining(), name, "the call's deadline was reached"):
            return await next_chunk(agen)

    async def _open_stream(self, provider: _Runnable, name: str, request: ChatRequest) -> Opened:
        """Run one attempt up to its first content; hold back what came before."""
        agen: AsyncIterator[ChatCompletionChunk]
        if isinstance(provider, RetryingCall):
            agen = provider.piece()
            # A nested call applies first_token to each of its own attempts.
            first_token = None
        else:
            agen = provider.stream(request, self.http)
            first_token = self.http.timeout.first_token
        held: list[ChatCompletionChunk] = []
        limit = min_seconds(first_token, self._remaining())
        message = "no content within {limit:.3g}s (first_token/total timeout)"
        try:
            async with time_limit(limit, name, message):
                async for chunk in agen:
                    held.append(chunk)
                    if chunk.has_content:
                        self.provider = chunk.provider or name
                        self._openers[id(agen)] = provider
                        return Opened(agen, held, self.provider)
        except BaseException:
            await close_quietly(agen)
            raise
        # The stream ended without content: a complete, empty answer.
        self.provider = held[0].provider if held and held[0].provider else name
        return Opened(None, held, self.provider)
