"""OpenTelemetry traces and metrics for chatkit calls, as a hook.

``AsyncClient(..., hooks=[OpenTelemetry()])`` (or ``Client``) gives every
call a ``chat {model}`` span (kind CLIENT) with one ``attempt {provider}``
child span (kind CLIENT) per attempt, skipped providers included (as
zero-length spans), and records the GenAI client metrics. Attribute and
metric names follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.*``), plus chatkit's own (``chatkit.*``): see docs/observability.md.

Only the OpenTelemetry API is imported (``pip install "chatkit[otel]"``): with
no SDK configured, spans are non-recording and metrics are no-ops.

Context: an attempt's span is current while its provider runs (so spans the
provider or the user's HTTP instrumentation start nest under it), and a
non-streamed call's span is current from its start to its end. A stream's
call span is never made current: the stream yields to the consumer's code
between chunks, which must not run inside chatkit's span.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ParamSpec
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from chatkit._attempt import Attempt
from chatkit._hooks import CallInfo, request_headers

__all__ = ["OpenTelemetry", "provider_system"]

logger = logging.getLogger("chatkit")

P = ParamSpec("P")

_SCOPE = "chatkit"

# chatkit provider names (lower-cased, letters and digits only) -> the
# conventions' well-known ``gen_ai.provider.name`` values. Any other provider
# is reported by its name, lower-cased ("ollama", "openrouter", "custom").
_SYSTEMS = {
    "openai": "openai",
    "azureopenai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertexai": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "perplexity": "perplexity",
    "xai": "x_ai",
}

# Request parameters copied to ``gen_ai.request.*`` when set (numbers only).
_NUMERIC_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}

# The conventions' advised bucket boundaries.
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48]
_DURATION_BUCKETS += [40.96, 81.92]
_TOKEN_BUCKETS = [float(4**power) for power in range(14)]  # 1, 4, 16, ... 67108864


def provider_system(name: str) -> str:
    """The ``gen_ai.provider.name`` for a chatkit provider name (``"Groq"`` -> ``"groq"``)."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return _SYSTEMS.get(key, name.lower())


@functools.lru_cache(maxsize=256)
def _server(endpoint: str) -> tuple[str, int] | None:
    """``(server.address, server.port)`` of a base URL, the port defaulted by scheme."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.hostname, port


def _version() -> str:
    try:
        return metadata.version("chatkit")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return ""


def _task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _guarded(method: Callable[P, None]) -> Callable[P, None]:
    """A hook method that never raises: telemetry must not change a call."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("chatkit: OpenTelemetry hook failed in %s", method.__name__)

    return guarded


@dataclass(eq=False)
class _Scope:
    """A span made current in one task; undone only in that task (tokens are
    bound to the context they were set in)."""

    task: object | None = None
    token: Token[Context] | None = None
    headers: Token[Mapping[str, str]] | None = None

    def enter(self, ctx: Context, headers: Mapping[str, str] | None) -> None:
        self.task = _task()
        if self.task is None:  # not in an asyncio task: nothing safe to undo later
            return
        self.token = otel_context.attach(ctx)
        if headers:
            self.headers = request_headers.set({**request_headers.get(), **headers})

    def exit(self) -> None:
        if self.task is None or self.task is not _task():
            return  # another task's context: its tokens die with it
        if self.headers is not None:
            request_headers.reset(self.headers)
        if self.token is not None:
            otel_context.detach(self.token)
        self.task = self.token = self.headers = None


@dataclass(eq=False)
class _Try:
    """An attempt's span in flight."""

    attempt: Attempt
    span: Span
    scope: _Scope
    system: str
    server: tuple[str, int] | None
    model: str


@dataclass(eq=False)
class _State:
    """One call's span and its attempts in flight (kept in ``call.data``)."""

    span: Span
    context: Context
    scope: _Scope
    tries: dict[int, _Try] = field(default_factory=dict)
    system: str | None = None  # of the last attempt started
    server: tuple[str, int] | None = None  # of the answering attempt, else the last


class OpenTelemetry:
    """A chatkit hook recording OpenTelemetry spans and metrics for each call.

    tracer_provider / meter_provider: where spans and metrics go; the
        global providers when None.
    propagate: send the W3C ``traceparent`` (and the global propagator's
        other headers) of each attempt's span upstream.
    capture_content: put the prompt and the answer on the call span as
        ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON). Off by
        default: prompts and answers often hold personal data.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        propagate: bool = False,
        capture_content: bool = False,
    ) -> None:
        version = _version()
        self.propagate = propagate
        self.capture_content = capture_content
        self._tracer = trace.get_tracer(_SCOPE, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, version, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from the start of a streamed call to its first content.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._attempts = meter.create_counter(
            "chatkit.client.attempts", unit="{attempt}", description="Attempts, skips included."
        )
        self._retries = meter.create_counter(
            "chatkit.client.retries",
            unit="{retry}",
            description="Attempts retried on the same provider after a backoff.",
        )
        self._breaker_changes = meter.create_counter(
            "chatkit.client.breaker.changes",
            unit="{change}",
            description="Circuit breaker state changes.",
        )
        self._key = f"chatkit.telemetry.{id(self):x}"

    def _state(self, call: CallInfo) -> _State | None:
        state = call.data.get(self._key)
        return state if isinstance(state, _State) else None

    # -- call ----------------------------------------------------------------

    @_guarded
    def on_call_start(self, call: CallInfo) -> None:
        model = call.model
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "chatkit.call.id": call.id,
            "gen_ai.request.stream": call.stream,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        attributes.update(_request_attributes(call.request.params))
        span = self._tracer.start_span(
            f"chat {model}" if model else "chat",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=_wall_ns(call.started),
        )
        if self.capture_content and span.is_recording():
            span.set_attribute("gen_ai.input.messages", _input_messages(call.request.messages))
        ctx = trace.set_span_in_context(span)
        state = _State(span, ctx, _Scope())
        call.data[self._key] = state
        if not call.stream:
            # A non-streamed call runs start to end inside one await of the
            # caller's task; a stream yields to the consumer between chunks.
            state.scope.enter(ctx, None)

    @_guarded
    def on_first_content(self, call: CallInfo) -> None:
        state = self._state(call)
        if state is not None and call.time_to_first_content is not None:
            state.span.add_event(
                "chatkit.first_content",
                {"gen_ai.response.time_to_first_chunk": call.time_to_first_content},
            )

    @_guarded
    def on_breaker_change(self, call: CallInfo, provider: str, old: str, new: str) -> None:
        attributes = _where(provider_system(provider), call.model, None)
        attributes |= {"chatkit.breaker.from": old, "chatkit.breaker.to": new}
        attributes["chatkit.provider"] = provider
        self._breaker_changes.add(1, {"gen_ai.operation.name": "chat", **attributes})
        state = self._state(call)
        if state is not None:
            state.span.add_event("chatkit.breaker_change", attributes)

    @_guarded
    def on_call_end(self, call: CallInfo) -> None:
        state = call.data.pop(self._key, None)
        if not isinstance(state, _State):
            return
        error = call.error
        # Attempts that never ended: the call was cancelled (or failed) while
        # they ran in this task. Innermost first, then the call's own scope.
        for open_try in reversed(list(state.tries.values())):
            self._end_try(open_try, error)
        state.tries.clear()
        state.scope.exit()

        span = state.span
        system = provider_system(call.provider) if call.provider else state.system
        if system is None:
            system = provider_system(call.label)
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": system,
            "chatkit.attempts": len(call.attempts),
        }
        if call.provider:
            attributes["chatkit.provider"] = call.provider
        if state.server is not None:
            attributes["server.address"], attributes["server.port"] = state.server
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if call.response_id:
            attributes["gen_ai.response.id"] = call.response_id
        if call.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [call.finish_reason]
        usage = call.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if call.time_to_first_content is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = call.time_to_first_content
        if error is None and call.stream and call.finish_reason is None:
            attributes["chatkit.closed_early"] = True  # the consumer stopped reading
        span.set_attributes(attributes)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _brief(error)))
        elif self.capture_content and span.is_recording():
            span.set_attribute("gen_ai.output.messages", _output_messages(call))
        span.end()
        self._record_call(call, system, state.server, error)

    def _record_call(
        self, call: CallInfo, system: str, server: tuple[str, int] | None, error: object
    ) -> None:
        attributes = {"gen_ai.operation.name": "chat", **_where(system, call.model, server)}
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if error is not None:
            attributes["error.type"] = type(error).__name__
        if call.duration is not None:
            self._duration.record(call.duration, attributes)
        if call.stream and call.time_to_first_content is not None:
            self._first_chunk.record(call.time_to_first_content, attributes)
        usage = call.usage
        if usage is not None:
            self._tokens.record(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
            self._tokens.record(
                usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"}
            )

    # -- attempts ------------------------------------------------------------

    @_guarded
    def on_attempt_start(self, call: CallInfo, attempt: Attempt, endpoint: str | None) -> None:
        state = self._state(call)
        if state is None:
            return
        open_try = self._start_try(call, state, attempt, _server(endpoint) if endpoint else None)
        ctx = trace.set_span_in_context(open_try.span)
        headers: dict[str, str] | None = None
        if self.propagate:
            headers = {}
            propagate.inject(headers, context=ctx)
        open_try.scope.enter(ctx, headers)
        state.tries[id(attempt)] = open_try
        state.system, state.server = open_try.system, open_try.server

    @_guarded
    def on_attempt_end(self, call: CallInfo, attempt: Attempt) -> None:
        state = self._state(call)
        if state is None:
            return
        open_try = state.tries.pop(id(attempt), None)
        if open_try is None and attempt.skipped:
            # A provider that refused the request once called (its stream()
            # raised MissingAuthError / UnsupportedCapabilityError): chatkit
            # reports the skip as a new Attempt, which ends the started span.
            open_try = _started_skip(state, attempt)
        if open_try is not None:
            open_try.attempt = attempt
            self._end_try(open_try, attempt.error)
            if attempt.decision == "success":
                state.server = open_try.server
            return
        # Never started: a skipped provider (or a nested provider's own
        # failure): a zero-length span, so the tree lists every attempt.
        now = time.time_ns()
        self._end_try(self._start_try(call, state, attempt, None, now), attempt.error, now)

    def _start_try(
        self,
        call: CallInfo,
        state: _State,
        attempt: Attempt,
        server: tuple[str, int] | None,
        start_time: int | None = None,
    ) -> _Try:
        system = provider_system(attempt.provider)
        attributes = _where(system, call.model, server)
        attributes["chatkit.provider"] = attempt.provider
        attributes["chatkit.attempt.retry"] = attempt.retry
        attributes["chatkit.hedge"] = attempt.hedge
        if attempt.breaker is not None:
            attributes["chatkit.breaker.state"] = attempt.breaker
        span = self._tracer.start_span(
            f"attempt {attempt.provider}",
            context=state.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start_time,
        )
        return _Try(attempt, span, _Scope(), system, server, call.model)

    def _end_try(
        self, open_try: _Try, error: BaseException | None, end_time: int | None = None
    ) -> None:
        open_try.scope.exit()
        attempt, span = open_try.attempt, open_try.span
        decision = attempt.decision
        if error is not None and decision == "success":
            decision = "next"  # never ended by chatkit: cancelled with its call
        attributes: dict[str, Any] = {
            "chatkit.attempt": attempt.number,
            "chatkit.retry.decision": decision,
        }
        if attempt.breaker is not None:
            attributes["chatkit.breaker.state"] = attempt.breaker
        status_code = getattr(error, "status_code", None)
        if isinstance(status_code, int):
            attributes["http.response.status_code"] = status_code
        if attempt.lost:
            attributes["chatkit.hedge.lost"] = True
        elif attempt.skipped and error is not None:
            attributes["chatkit.skip.reason"] = type(error).__name__
        elif error is not None:
            attributes["error.type"] = type(error).__name__
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _brief(error)))
            if decision == "retry" and attempt.delay is not None:
                span.add_event(
                    "chatkit.retry",
                    {"chatkit.retry.delay": attempt.delay, "error.type": type(error).__name__},
                )
        span.set_attributes(attributes)
        span.end(end_time=end_time)
        counted = {"gen_ai.operation.name": "chat", "chatkit.retry.decision": decision}
        counted |= _where(open_try.system, open_try.model, open_try.server)
        if "error.type" in attributes:
            counted["error.type"] = attributes["error.type"]
        self._attempts.add(1, counted)
        if decision == "retry":
            self._retries.add(1, counted)


def _started_skip(state: _State, attempt: Attempt) -> _Try | None:
    """The started attempt of ``attempt``'s provider in this task, if any: the
    one a skip reported after the provider was called stands for."""
    task = _task()
    for key, open_try in reversed(list(state.tries.items())):
        if open_try.attempt.provider == attempt.provider and open_try.scope.task is task:
            del state.tries[key]
            return open_try
    return None


def _where(system: str, model: str, server: tuple[str, int] | None) -> dict[str, Any]:
    """The provider, the requested model and the server, as attributes."""
    attributes: dict[str, Any] = {"gen_ai.provider.name": system}
    if model:
        attributes["gen_ai.request.model"] = model
    if server is not None:
        attributes["server.address"], attributes["server.port"] = server
    return attributes


def _request_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    """``gen_ai.request.*`` for the parameters the caller set."""
    attributes: dict[str, Any] = {}
    for name, attribute in _NUMERIC_PARAMS.items():
        value = params.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[attribute] = value
    stop = params.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = list(stop)
    n = params.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    response_format = params.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        attributes["gen_ai.output.type"] = "json" if kind != "text" else "text"
    return attributes


def _input_messages(messages: list[dict[str, Any]]) -> str:
    """The prompt as the conventions' ``gen_ai.input.messages`` JSON: text and
    tool calls kept; other parts (images, audio) only as their type."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role", "user"), message.get("content")
        parts: list[dict[str, Any]] = []
        if role == "tool":
            response = {"id": message.get("tool_call_id"), "response": _text_of(content)}
            parts.append({"type": "tool_call_response", **response})
        elif isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    parts.append({"type": "text", "content": part.get("text", "")})
                else:
                    parts.append({"type": str(part.get("type"))})
        for tool_call in message.get("tool_calls") or []:
            function = tool_call.get("function") or {}
            name, arguments = function.get("name"), function.get("arguments")
            call = {"id": tool_call.get("id"), "name": name, "arguments": arguments}
            parts.append({"type": "tool_call", **call})
        out.append({"role": role, "parts": parts})
    return json.dumps(out, ensure_ascii=False, default=str)


def _text_of(content: object) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "" if content is None else str(content)


def _output_messages(call: CallInfo) -> str:
    message: dict[str, Any] = {
        "role": "assistant",
        "parts": [{"type": "text", "content": call.text}] if call.text else [],
        "finish_reason": call.finish_reason or "",
    }
    return json.dumps([message], ensure_ascii=False)


def _brief(error: BaseException) -> str:
    """A status description: the type and the first 300 characters of the message."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text[:300]


def _wall_ns(started: float) -> int:
    """``time.monotonic()`` value ``started`` as a wall-clock timestamp (ns)."""
    return time.time_ns() - int((time.monotonic() - started) * 1e9)
