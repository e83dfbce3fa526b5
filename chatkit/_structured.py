"""``parse()``: structured outputs with validation retries, within one deadline.

``prepare_parse`` checks every argument before any I/O and returns a
``ParseCall``; ``ParseCall.complete()`` runs the tries: each is one ordinary
``create()`` call (with its own retries and fallbacks); an answer that does
not validate is fed back to the model with the validation error, up to
``max_validation_retries`` times. All tries share the call's ``timeout``
total: each new try gets what is left of it. A refusal raises
``ContentRefusedError`` at once. The streamed variant
(``chatkit._parsed_stream``) drives the same ``ParseCall`` try by try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from chatkit._aliases import ProviderSpec, TimeoutTypes
from chatkit._attempt import Attempt
from chatkit._config import Timeout, coerce_timeout, is_number
from chatkit._errors import (
    APITimeoutError,
    ChatkitError,
    ContentRefusedError,
    InvalidRequestError,
    ResponseDecodeError,
)
from chatkit._parsed import (
    ParsedChatCompletion,
    check_answer,
    is_model_class,
    merge_attempts,
    response_format_for,
    tool_models,
)
from chatkit._prices import PriceTable
from chatkit._request import ChatRequest, build_request
from chatkit._types import ChatCompletion

__all__ = ["ParseCall", "create_request", "prepare_parse"]


@dataclass
class ParseCall:
    """One ``parse()`` call: its tries so far and what the next one sends."""

    create: Callable[..., Any]
    messages: list[dict[str, Any]]
    model: str | None
    options: dict[str, Any]
    timeout: Timeout
    response_format: type[BaseModel] | None
    tools: dict[str, type[BaseModel]]
    max_validation_retries: int
    prices: PriceTable | None = None
    attempts: list[Attempt] = field(default_factory=list)
    """Every attempt of every finished try, numbered in order."""
    tries: int = 0
    _deadline: float | None = None

    def next_try(self, stream: bool) -> dict[str, Any]:
        """Count a new try and return ``create()``'s keyword arguments for it.

        The first try starts the deadline (``timeout.total``); later ones get
        what is left of it, and none is started once it has passed.
        """
        self.tries += 1
        timeout = self.timeout
        total = timeout.total
        if total is not None:
            now = asyncio.get_running_loop().time()
            if self._deadline is None:
                self._deadline = now + total
            else:
                remaining = self._deadline - now
                if remaining <= 0:
                    error = APITimeoutError(
                        f"the call's deadline ({total:.3g}s) was reached before validation"
                        f" retry {self.tries - 1} could start"
                    )
                    error.attempts = self.attempts
                    raise error
                timeout = timeout.with_total(remaining)
        return {**self.options, "timeout": timeout, "stream": stream}

    def failed(self, exc: BaseException) -> None:
        """A try raised: its attempts join the call's, which the error then carries."""
        if isinstance(exc, ChatkitError) and exc.attempts is not self.attempts:
            merge_attempts(self.attempts, exc.attempts)
            exc.attempts = self.attempts

    def outcome(self, completion: ChatCompletion) -> ParsedChatCompletion[Any] | None:
        """The parsed completion, or None when the answer did not validate and
        a retry follows (the conversation is extended with the feedback).

        Raises ``ContentRefusedError`` on a refusal and ``ResponseDecodeError``
        when the last allowed try did not validate.
        """
        try:
            check = check_answer(completion, self.response_format, self.tools)
        except ContentRefusedError as exc:
            self.failed(exc)
            raise
        if check.parsed is not None:
            merge_attempts(self.attempts, completion.attempts)
            parsed = check.parsed
            parsed._attempts = self.attempts
            if self.prices is not None:
                # The answer, plus every billed attempt of every try.
                parsed._cost = self.prices.completion_cost(parsed)
            return parsed
        last = self.tries > self.max_validation_retries
        merge_attempts(
            self.attempts, completion.attempts, completion, check.problem, retrying=not last
        )
        if last:
            tried = f" (after {self.tries} tries)" if self.tries > 1 else ""
            error = ResponseDecodeError(check.problem + tried, provider=completion.provider)
            error.attempts = self.attempts
            raise error
        self.messages = [*self.messages, *check.feedback]
        return None

    async def complete(self) -> ParsedChatCompletion[Any]:
        """Run tries until one validates (non-streamed)."""
        while True:
            kwargs = self.next_try(stream=False)
            try:
                completion: ChatCompletion = await self.create(self.messages, self.model, **kwargs)
            except BaseException as exc:
                self.failed(exc)
                raise
            parsed = self.outcome(completion)
            if parsed is not None:
                return parsed


def create_request(
    messages: Any,
    model: str | None,
    *,
    stream: bool,
    provider: ProviderSpec | None = None,
    proxy: str | None = None,
    timeout: TimeoutTypes = None,
    extra_headers: Mapping[str, str] | None = None,
    extra_query: Mapping[str, str] | None = None,
    extra_body: Mapping[str, Any] | None = None,
    **params: Any,
) -> ChatRequest:
    """``create()``'s arguments as a checked ``ChatRequest`` (``provider`` and
    ``proxy`` choose the route, they are not part of it): the one mapping of
    them, used by ``create()`` and, before any I/O, by ``parse()``."""
    return build_request(
        model=model,
        messages=messages,
        stream=stream,
        params=params,
        extra_headers=extra_headers,
        extra_query=extra_query,
        extra_body=extra_body,
        timeout=timeout,
    )


def prepare_parse(
    create: Callable[..., Any],
    *,
    check_request: Callable[..., ChatRequest],
    messages: Any,
    model: Any,
    response_format: Any,
    stream: Any,
    max_validation_retries: Any,
    kwargs: Mapping[str, Any],
    strict: Callable[[], bool],
    default_timeout: Timeout,
    prices: PriceTable | None = None,
) -> ParseCall:
    """Check ``parse()``'s arguments (before any I/O) and plan its first try.

    ``strict()`` says whether the chosen provider takes OpenAI's strict
    schemas (it resolves the provider, so it runs after the cheap checks).
    ``check_request(messages, model, stream=..., **options)`` is the client's
    mapping of ``create()``'s arguments to a checked ``ChatRequest``: the
    first try's request is checked by it here, before any I/O.
    """
    if response_format is not None and not is_model_class(response_format):
        raise InvalidRequestError(
            f"response_format must be a pydantic model class, got {response_format!r}",
            field="response_format",
        )
    if not is_number(max_validation_retries, integer=True) or max_validation_retries < 0:
        raise InvalidRequestError(
            f"max_validation_retries must be an integer >= 0, got {max_validation_retries!r}",
            field="max_validation_retries",
        )
    if not isinstance(stream, bool):
        raise InvalidRequestError(
            f"stream must be True or False, got {type(stream).__name__}", field="stream"
        )
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(
            f"model: must be a string, got {type(model).__name__}", field="model"
        )
    options = dict(kwargs)
    timeout = coerce_timeout(options.pop("timeout", None)) or default_timeout
    if response_format is not None:
        options["response_format"] = response_format_for(response_format, strict())
    else:
        strict()  # the same checks (closed client, unknown provider) either way
    request = check_request(messages, model, stream=stream, **options)
    return ParseCall(
        create=create,
        messages=request.messages,
        model=model,
        options=options,
        timeout=timeout,
        response_format=response_format,
        tools=tool_models(options.get("tools")),
        max_validation_retries=max_validation_retries,
        prices=prices,
    )
