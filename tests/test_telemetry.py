"""``chatkit.telemetry.OpenTelemetry``: the span tree, attributes and metrics of real calls.

Spans go to an in-memory exporter on a fresh SDK ``TracerProvider`` and
metrics to an in-memory reader, both handed to the hook (the global
providers are never set). Calls go to fake servers; the span trees are
compared whole: names, kinds, parents and attributes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import chatkit
from chatkit._hooks import CallInfo
from chatkit._request import ChatRequest
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.telemetry import OpenTelemetry, provider_system
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
MODEL = "gpt-test"
CALL = f"chat {MODEL}"
CLIENT = SpanKind.CLIENT
SLOW = Behavior(text="slow answer", stall_after=0, stall_seconds=60)
FAST = Behavior(text="fast answer")


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    tracer_provider: TracerProvider
    metrics: InMemoryMetricReader
    hook: OpenTelemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def tree(self) -> list[tuple[Any, ...]]:
        """(name, kind, children) for each root span, children in start order."""
        spans = self.finished()
        ids = {s.context.span_id for s in spans if s.context is not None}

        def children(parent: int | None) -> list[tuple[Any, ...]]:
            found = [
                s
                for s in spans
                if (s.parent.span_id if s.parent is not None else None) == parent
                or (parent is None and s.parent is not None and s.parent.span_id not in ids)
            ]
            found.sort(key=lambda s: s.start_time or 0)
            return [(s.name, s.kind, children(_span_id(s))) for s in found]

        return children(None)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def points(self, name: str) -> tuple[str, list[Any]]:
        """(unit, data points) of metric ``name``."""
        data = self.metrics.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric.unit or "", list(metric.data.data_points)
        raise AssertionError(f"no metric {name}")


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


@pytest.fixture
def otel(caplog: pytest.LogCaptureFixture) -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    hook = OpenTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Telemetry(exporter, tracer_provider, reader, hook)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    # Every context attached was detached in the context it was attached in.
    detach_errors = [r for r in caplog.get_records("call") if "detach" in r.getMessage()]
    assert detach_errors == []


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as running:
        yield running


def port(server: FakeOpenAIServer) -> int:
    value = urlsplit(server.base_url).port
    assert value is not None
    return value


def attrs(span: ReadableSpan, *drop: str) -> dict[str, Any]:
    found = dict(span.attributes or {})
    for name in drop:
        found.pop(name, None)
    return found


def events(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def ask(client: chatkit.AsyncClient, stream: bool, **params: Any) -> str:
    if stream:
        answer = await client.chat.completions.create(
            messages=MESSAGES, model=MODEL, stream=True, **params
        )
        async with answer:
            return "".join([chunk.text async for chunk in answer])
    completion = await client.chat.completions.create(messages=MESSAGES, model=MODEL, **params)
    return completion.text


def openai(server: FakeOpenAIServer) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="sk-x")


def attempt_attrs(
    server: FakeOpenAIServer | int | None, provider: str = "OpenAI", /, **more: Any
) -> dict:
    found: dict[str, Any] = {
        "gen_ai.provider.name": provider_system(provider),
        "gen_ai.request.model": MODEL,
        "chatkit.provider": provider,
        "chatkit.attempt.retry": 0,
        "chatkit.hedge": False,
        "chatkit.attempt": 1,
        "chatkit.retry.decision": "success",
    }
    if server is not None:
        number = server if isinstance(server, int) else port(server)
        found["server.address"], found["server.port"] = "127.0.0.1", number
    return found | more


# -- success -----------------------------------------------------------------


async def test_a_non_streamed_call_is_a_call_span_with_one_attempt_span(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        await ask(client, stream=False, max_tokens=50, temperature=0.5, stop="END")
    assert otel.tree() == [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])]
    call, attempt = otel.named(CALL)[0], otel.named("attempt OpenAI")[0]
    assert attrs(call, "chatkit.call.id") == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stop_sequences": ("END",),
        "gen_ai.response.model": MODEL,
        "gen_ai.response.id": "chatcmpl-fake1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 7,
        "server.address": "127.0.0.1",
        "server.port": port(server),
        "chatkit.provider": "OpenAI",
        "chatkit.attempts": 1,
    }
    assert str(call.attributes["chatkit.call.id"]).startswith("call-")  # type: ignore[index]
    assert attrs(attempt) == attempt_attrs(server)
    assert call.status.status_code is attempt.status.status_code is StatusCode.UNSET
    assert events(call) == events(attempt) == []
    assert "gen_ai.input.messages" not in attrs(call)  # no content unless asked


async def test_a_stream_has_a_first_content_event_and_time_to_first_chunk(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        text = await ask(client, stream=True)
    assert text.startswith("Hello!")
    assert otel.tree() == [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])]
    call, attempt = otel.named(CALL)[0], otel.named("attempt OpenAI")[0]
    ttfc = call.attributes["gen_ai.response.time_to_first_chunk"]  # type: ignore[index]
    assert isinstance(ttfc, float) and 0 < ttfc < 5
    assert attrs(call, "chatkit.call.id", "gen_ai.response.time_to_first_chunk") == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.stream": True,
        "gen_ai.response.model": MODEL,
        "gen_ai.response.id": "chatcmpl-fake1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 7,
        "server.address": "127.0.0.1",
        "server.port": port(server),
        "chatkit.provider": "OpenAI",
        "chatkit.attempts": 1,
    }
    assert events(call) == ["chatkit.first_content"]
    assert call.events[0].attributes == {"gen_ai.response.time_to_first_chunk": ttfc}
    assert attrs(attempt) == attempt_attrs(server)
    # The attempt span ends at the first content; the call span at the stream's end.
    assert attempt.end_time is not None and call.end_time is not None
    assert attempt.end_time <= call.end_time


# -- retries, fallback, hedging ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_retry_on_the_same_provider(
    otel: Telemetry, server: FakeOpenAIServer, stream: bool
) -> None:
    server.fail(1, 503)
    provider = RetryProvider(
        [openai(server)], single_provider_retry=True, max_retries=1, backoff_base=0.01
    )
    async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
        await ask(client, stream)
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt OpenAI", CLIENT, []), ("attempt OpenAI", CLIENT, [])])
    ]
    failed, retried = sorted(otel.named("attempt OpenAI"), key=lambda s: s.start_time or 0)
    assert attrs(failed) == attempt_attrs(
        server,
        **{
            "chatkit.retry.decision": "retry",
            "error.type": "InternalServerError",
            "http.response.status_code": 503,
        },
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.status.description or "").startswith("InternalServerError: ")
    assert events(failed) == ["exception", "chatkit.retry"]
    exception = failed.events[0].attributes or {}
    assert str(exception["exception.type"]).endswith("InternalServerError")
    delay = failed.events[1].attributes["chatkit.retry.delay"]  # type: ignore[index]
    assert isinstance(delay, float) and delay >= 0
    assert attrs(retried) == attempt_attrs(
        server, **{"chatkit.attempt": 2, "chatkit.attempt.retry": 1}
    )
    call = otel.named(CALL)[0]
    assert call.status.status_code is StatusCode.UNSET
    assert attrs(call)["chatkit.attempts"] == 2
    _, retries = otel.points("chatkit.client.retries")
    assert [(p.value, dict(p.attributes)) for p in retries] == [
        (
            1,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": MODEL,
                "chatkit.retry.decision": "retry",
                "server.address": "127.0.0.1",
                "server.port": port(server),
                "error.type": "InternalServerError",
            },
        )
    ]


async def test_a_fallback_to_a_second_provider(otel: Telemetry, server: FakeOpenAIServer) -> None:
    async with FakeOpenAIServer() as running:
        second = port(running)
        server.fail(1, 500)
        provider = RetryProvider(
            [openai(server), Groq(base_url=running.base_url, api_key="sk-y")], strategy="ordered"
        )
        async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
            await ask(client, stream=True)
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt OpenAI", CLIENT, []), ("attempt Groq", CLIENT, [])])
    ]
    failed, answered = otel.named("attempt OpenAI")[0], otel.named("attempt Groq")[0]
    assert attrs(failed) == attempt_attrs(
        server,
        **{
            "chatkit.retry.decision": "next",
            "error.type": "InternalServerError",
            "http.response.status_code": 500,
        },
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert events(failed) == ["exception"]  # no retry event: it moved on
    assert attrs(answered) == attempt_attrs(second, "Groq", **{"chatkit.attempt": 2})
    call = otel.named(CALL)[0]
    assert call.status.status_code is StatusCode.UNSET
    found = attrs(call)
    assert (found["gen_ai.provider.name"], found["chatkit.provider"]) == ("groq", "Groq")
    assert (found["server.port"], found["chatkit.attempts"]) == (second, 2)


async def test_a_skipped_provider_is_a_zero_length_attempt_span(
    otel: Telemetry, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    provider = RetryProvider([chatkit.providers.Anthropic, openai(server)], strategy="ordered")
    async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
        await ask(client, stream=False)
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt Anthropic", CLIENT, []), ("attempt OpenAI", CLIENT, [])])
    ]
    skipped = otel.named("attempt Anthropic")[0]
    assert skipped.start_time == skipped.end_time
    assert attrs(skipped) == {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "chatkit.provider": "Anthropic",
        "chatkit.attempt.retry": 0,
        "chatkit.hedge": False,
        "chatkit.attempt": 1,
        "chatkit.retry.decision": "skipped",
        "chatkit.skip.reason": "MissingAuthError",
    }
    assert skipped.status.status_code is StatusCode.UNSET


class Refusing:
    """A provider that refuses the request only once called."""

    name = "refusing"

    async def stream(self, request: Any, http: Any) -> AsyncIterator[chatkit.ChatCompletionChunk]:
        raise chatkit.UnsupportedCapabilityError("refusing: no", field="model")
        yield  # pragma: no cover


async def test_a_provider_refusing_once_called_ends_its_started_span_as_skipped(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    provider = RetryProvider([Refusing(), openai(server)], strategy="ordered")
    async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
        await ask(client, stream=False)
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt refusing", CLIENT, []), ("attempt OpenAI", CLIENT, [])])
    ]
    refused = attrs(otel.named("attempt refusing")[0])
    assert refused["chatkit.retry.decision"] == "skipped"
    assert refused["chatkit.skip.reason"] == "UnsupportedCapabilityError"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hedge_wins_and_the_slow_attempt_is_lost(otel: Telemetry, stream: bool) -> None:
    async with FakeOpenAIServer(SLOW) as slow_server, FakeOpenAIServer(FAST) as fast_server:
        slow, fast = port(slow_server), port(fast_server)
        provider = RetryProvider(
            [openai(slow_server), Groq(base_url=fast_server.base_url, api_key="sk-y")],
            strategy="ordered",
            hedge_after=0.2,
        )
        async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
            assert await ask(client, stream) == "fast answer"
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt OpenAI", CLIENT, []), ("attempt Groq", CLIENT, [])])
    ]
    lost, won = otel.named("attempt OpenAI")[0], otel.named("attempt Groq")[0]
    assert attrs(won) == attempt_attrs(fast, "Groq", **{"chatkit.hedge": True})
    assert attrs(lost) == attempt_attrs(
        slow, **{"chatkit.attempt": 2, "chatkit.retry.decision": "lost", "chatkit.hedge.lost": True}
    )
    assert lost.status.status_code is won.status.status_code is StatusCode.UNSET
    assert events(lost) == []
    call = otel.named(CALL)[0]
    assert (attrs(call)["gen_ai.provider.name"], attrs(call)["server.port"]) == (
        "groq",
        fast,
    )


# -- failures ------------------------------------------------------------------


async def test_a_stream_interrupted_after_content_fails_the_call_span(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(drop_after=2))
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        with pytest.raises(chatkit.StreamInterrupted):
            await ask(client, stream=True)
    assert otel.tree() == [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])]
    call, attempt = otel.named(CALL)[0], otel.named("attempt OpenAI")[0]
    # The attempt reached content (the commit point): it succeeded.
    assert attrs(attempt) == attempt_attrs(server)
    assert attempt.status.status_code is StatusCode.UNSET
    assert call.status.status_code is StatusCode.ERROR
    found = attrs(call)
    assert found["error.type"] == "StreamInterrupted"
    assert "gen_ai.response.finish_reasons" not in found
    assert events(call) == ["chatkit.first_content", "exception"]


async def test_a_failed_call_records_the_error_on_both_spans(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    server.fail(1, 400)
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        with pytest.raises(chatkit.BadRequestError):
            await ask(client, stream=False)
    call, attempt = otel.named(CALL)[0], otel.named("attempt OpenAI")[0]
    for span in (call, attempt):
        assert span.status.status_code is StatusCode.ERROR
        assert attrs(span)["error.type"] == "BadRequestError"
        assert "exception" in events(span)
    assert "gen_ai.response.model" not in attrs(call)
    _, durations = otel.points("gen_ai.client.operation.duration")
    assert durations[0].attributes["error.type"] == "BadRequestError"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cancelled_call_records_cancelled_error(otel: Telemetry, stream: bool) -> None:
    async with (
        FakeOpenAIServer(SLOW) as slow,
        chatkit.AsyncClient(provider=openai(slow), hooks=[otel.hook]) as client,
    ):
        task = asyncio.create_task(ask(client, stream))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert otel.tree() == [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])]
    for span in otel.finished():
        assert span.status.status_code is StatusCode.ERROR
        assert attrs(span)["error.type"] == "CancelledError"
    assert attrs(otel.named("attempt OpenAI")[0])["chatkit.retry.decision"] == "cancelled"
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached here


async def test_a_stream_closed_early_is_not_an_error(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        answer = await client.chat.completions.create(messages=MESSAGES, model=MODEL, stream=True)
        async with answer:
            async for chunk in answer:
                if chunk.text:
                    break
    call = otel.named(CALL)[0]
    assert call.status.status_code is StatusCode.UNSET
    found = attrs(call)
    assert found["chatkit.closed_early"] is True
    assert "gen_ai.response.finish_reasons" not in found and "error.type" not in found


# -- context -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_users_span_is_the_parent_and_stays_current(
    otel: Telemetry, server: FakeOpenAIServer, stream: bool
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        with tracer.start_as_current_span("handle request") as mine:
            if stream:
                answer = await client.chat.completions.create(
                    messages=MESSAGES, model=MODEL, stream=True
                )
                async with answer:
                    async for _ in answer:
                        # The consumer's code never runs inside chatkit's spans.
                        assert trace.get_current_span() is mine
            else:
                await ask(client, stream=False)
            assert trace.get_current_span() is mine
    assert otel.tree() == [
        ("handle request", SpanKind.INTERNAL, [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])])
    ]
    call = otel.named(CALL)[0]
    assert call.parent is not None and call.parent.span_id == mine.get_span_context().span_id
    assert call.context is not None
    assert call.context.trace_id == mine.get_span_context().trace_id


class Custom:
    """A third-party provider whose stream() looks at the current span."""

    name = "custom"

    def __init__(self) -> None:
        self.seen: list[trace.Span] = []

    async def stream(self, request: Any, http: Any) -> AsyncIterator[chatkit.ChatCompletionChunk]:
        self.seen.append(trace.get_current_span())
        for delta, finish in (({"role": "assistant", "content": "Hi"}, None), ({}, "stop")):
            yield chatkit.ChatCompletionChunk.model_validate(
                {
                    "id": "custom-1",
                    "model": request.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_providers_own_instrumentation_sees_the_attempt_span(
    otel: Telemetry, stream: bool
) -> None:
    provider = Custom()
    async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
        assert await ask(client, stream) == "Hi"
    attempt = otel.named("attempt custom")[0]
    assert len(provider.seen) == 1
    assert provider.seen[0].get_span_context().span_id == _span_id(attempt)
    assert attrs(attempt) == attempt_attrs(None, "custom")  # no base URL: no server.*
    assert attrs(otel.named(CALL)[0])["gen_ai.provider.name"] == "custom"


class Stalling(Custom):
    """Looks at the current span, then never reaches content."""

    name = "stalling"

    async def stream(self, request: Any, http: Any) -> AsyncIterator[chatkit.ChatCompletionChunk]:
        self.seen.append(trace.get_current_span())
        await asyncio.sleep(60)
        yield chatkit.ChatCompletionChunk.model_validate({})  # pragma: no cover


@pytest.mark.parametrize("stream", [False, True])
async def test_hedged_attempts_each_run_inside_their_own_span(
    otel: Telemetry, stream: bool
) -> None:
    slow, fast = Stalling(), Custom()
    provider = RetryProvider([slow, fast], strategy="ordered", hedge_after=0.1)
    async with chatkit.AsyncClient(provider=provider, hooks=[otel.hook]) as client:
        assert await ask(client, stream) == "Hi"
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert otel.tree() == [
        (CALL, CLIENT, [("attempt stalling", CLIENT, []), ("attempt custom", CLIENT, [])])
    ]
    lost, won = otel.named("attempt stalling")[0], otel.named("attempt custom")[0]
    assert [span.get_span_context().span_id for span in slow.seen] == [_span_id(lost)]
    assert [span.get_span_context().span_id for span in fast.seen] == [_span_id(won)]
    assert attrs(lost)["chatkit.hedge.lost"] is True and attrs(won)["chatkit.hedge"] is True


def test_the_sync_clients_call_span_has_the_calling_threads_span_as_parent(
    otel: Telemetry,
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with FakeOpenAIServer().run_in_thread() as server:
        client = chatkit.Client(provider=openai(server), hooks=[otel.hook], max_retries=0)
        with client, tracer.start_as_current_span("sync work") as mine:
            client.chat.completions.create(messages=MESSAGES, model=MODEL)
            with client.chat.completions.create(
                messages=MESSAGES, model=MODEL, stream=True
            ) as answer:
                assert "".join(chunk.text for chunk in answer).startswith("Hello!")
    calls = otel.named(CALL)
    assert len(calls) == 2
    for call in calls:
        assert call.parent is not None
        assert call.parent.span_id == mine.get_span_context().span_id
    assert [s.name for s in otel.finished()].count("attempt OpenAI") == 2


@pytest.mark.parametrize("propagate", [False, True])
async def test_propagate_sends_the_attempt_spans_traceparent(
    otel: Telemetry, server: FakeOpenAIServer, propagate: bool
) -> None:
    hook = OpenTelemetry(tracer_provider=otel.tracer_provider, propagate=propagate)
    server.fail(1, 503)
    async with chatkit.AsyncClient(provider=openai(server), hooks=[hook]) as client:
        await ask(client, stream=True)
    headers = [request.headers.get("traceparent") for request in server.requests]
    if not propagate:
        assert headers == [None, None]
        return
    attempts = sorted(otel.named("attempt OpenAI"), key=lambda s: s.start_time or 0)
    expected = []
    for span in attempts:
        assert span.context is not None
        ctx = span.context
        expected.append(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}")
    assert headers == expected  # each attempt's own span, the retry's included


# -- content -------------------------------------------------------------------


async def test_capture_content_adds_the_prompt_and_the_answer(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    hook = OpenTelemetry(tracer_provider=otel.tracer_provider, capture_content=True)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    async with chatkit.AsyncClient(provider=openai(server), hooks=[hook]) as client:
        answer = await client.chat.completions.create(messages=messages, model=MODEL)
    found = attrs(otel.named(CALL)[0])
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Hi"}]},
    ]
    assert json.loads(found["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": answer.text}],
            "finish_reason": "stop",
        }
    ]


def test_captured_content_keeps_text_and_tool_calls_and_names_other_parts(
    otel: Telemetry,
) -> None:
    hook = OpenTelemetry(tracer_provider=otel.tracer_provider, capture_content=True)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    params = {"stop": ["a", "b"], "n": 2, "response_format": {"type": "json_object"}}
    call = CallInfo(ChatRequest(MODEL, messages, stream=False, params=params), "OpenAI", [])
    hook.on_call_start(call)
    hook.on_call_end(call)
    found = attrs(otel.named(CALL)[0])
    assert json.loads(found["gen_ai.input.messages"]) == [
        {
            "role": "user",
            "parts": [{"type": "text", "content": "What is this?"}, {"type": "image_url"}],
        },
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "weather", "arguments": "{}"}],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "sunny"}],
        },
    ]
    assert json.loads(found["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [], "finish_reason": ""}
    ]
    assert found["gen_ai.request.stop_sequences"] == ("a", "b")
    assert found["gen_ai.request.choice.count"] == 2
    assert found["gen_ai.output.type"] == "json"


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}


def test_events_of_an_unknown_call_or_outside_a_task_are_harmless(otel: Telemetry) -> None:
    call = CallInfo(ChatRequest("", MESSAGES, stream=False), "OpenAI", [])
    attempt = chatkit.Attempt("OpenAI", 0)
    hook = otel.hook
    hook.on_first_content(call)
    hook.on_breaker_change(call, "OpenAI", "closed", "open")
    hook.on_attempt_start(call, attempt, None)
    hook.on_attempt_end(call, attempt)
    hook.on_call_end(call)
    assert otel.finished() == []
    hook.on_call_start(call)  # no event loop here: nothing is made current
    assert trace.get_current_span() is trace.INVALID_SPAN
    hook.on_attempt_start(call, attempt, "http://[::1")  # not a URL: no server.*
    hook.on_attempt_start(call, chatkit.Attempt("Groq", 0), "/relative")
    hook.on_call_end(call)
    assert otel.tree() == [  # no model: the span is named after the operation only
        ("chat", CLIENT, [("attempt OpenAI", CLIENT, []), ("attempt Groq", CLIENT, [])])
    ]
    assert all("server.address" not in attrs(span) for span in otel.finished())


# -- metrics -------------------------------------------------------------------


async def test_metrics_names_units_and_attributes(
    otel: Telemetry, server: FakeOpenAIServer
) -> None:
    async with chatkit.AsyncClient(provider=openai(server), hooks=[otel.hook]) as client:
        await ask(client, stream=False)
        await ask(client, stream=True)
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "server.address": "127.0.0.1",
        "server.port": port(server),
    }
    unit, durations = otel.points("gen_ai.client.operation.duration")
    assert unit == "s"
    assert [(p.count, dict(p.attributes)) for p in durations] == [(2, base)]
    unit, tokens = otel.points("gen_ai.client.token.usage")
    assert unit == "{token}"
    found = {
        p.attributes["gen_ai.token.type"]: (p.count, p.sum, dict(p.attributes)) for p in tokens
    }
    assert found == {  # both calls: chatkit asks a stream for its usage too
        "input": (2, 2, base | {"gen_ai.token.type": "input"}),
        "output": (2, 14, base | {"gen_ai.token.type": "output"}),
    }
    unit, first = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert unit == "s"
    assert [(p.count, dict(p.attributes)) for p in first] == [(1, base)]  # streams only
    unit, attempts = otel.points("chatkit.client.attempts")
    assert unit == "{attempt}"
    assert [(p.value, dict(p.attributes)) for p in attempts] == [
        (
            2,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": MODEL,
                "chatkit.retry.decision": "success",
                "server.address": "127.0.0.1",
                "server.port": port(server),
            },
        )
    ]


async def test_breaker_changes_are_counted(otel: Telemetry, server: FakeOpenAIServer) -> None:
    server.fail(1, 503)
    breaker = chatkit.CircuitBreaker(failure_threshold=1, cooldown=60)
    client = chatkit.AsyncClient(
        provider=openai(server), hooks=[otel.hook], breaker=breaker, max_retries=0
    )
    async with client:
        with pytest.raises(chatkit.APIStatusError):
            await ask(client, stream=False)
    unit, changes = otel.points("chatkit.client.breaker.changes")
    assert unit == "{change}"
    assert [(p.value, dict(p.attributes)) for p in changes] == [
        (
            1,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": MODEL,
                "chatkit.provider": "OpenAI",
                "chatkit.breaker.from": "closed",
                "chatkit.breaker.to": "open",
            },
        )
    ]
    assert "chatkit.breaker_change" in events(otel.named(CALL)[0])


# -- odds and ends -------------------------------------------------------------


def test_provider_names_map_to_the_conventions_values() -> None:
    assert [
        provider_system(name)
        for name in ("OpenAI", "AzureOpenAI", "Gemini", "Mistral", "xAI", "Ollama", "My Thing")
    ] == ["openai", "azure.ai.openai", "gcp.gemini", "mistral_ai", "x_ai", "ollama", "my thing"]


async def test_a_hook_error_never_reaches_the_call(
    otel: Telemetry, server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(OpenTelemetry):
        def _record_call(self, *args: Any) -> None:
            raise RuntimeError("exporter down")

    hook = Broken(tracer_provider=otel.tracer_provider)
    async with chatkit.AsyncClient(provider=openai(server), hooks=[hook]) as client:
        assert (await ask(client, stream=False)).startswith("Hello!")
    assert "OpenTelemetry hook failed in on_call_end" in caplog.text


async def test_a_call_ending_in_another_task_leaves_both_contexts_alone(otel: Telemetry) -> None:
    # E.g. a stream finalized by the event loop: the end runs in a new task,
    # where the start's context token cannot (and need not) be detached.
    call = CallInfo(ChatRequest(MODEL, MESSAGES, stream=False), "OpenAI", [])
    attempt = chatkit.Attempt("OpenAI", 0)

    async def start() -> None:
        otel.hook.on_call_start(call)
        otel.hook.on_attempt_start(call, attempt, "https://api.example.com/v1")

    await asyncio.create_task(start())
    await asyncio.create_task(asyncio.sleep(0))  # another task, another context
    call.error = asyncio.CancelledError()
    await asyncio.create_task(asyncio.to_thread(otel.hook.on_call_end, call))
    assert otel.tree() == [(CALL, CLIENT, [("attempt OpenAI", CLIENT, [])])]
    attempt_span = otel.named("attempt OpenAI")[0]
    assert attrs(attempt_span)["server.address"] == "api.example.com"
    assert attrs(attempt_span)["server.port"] == 443
    assert attrs(attempt_span)["error.type"] == "CancelledError"
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_the_module_needs_only_the_opentelemetry_api() -> None:
    # A fresh interpreter where the SDK cannot be imported at all.
    code = """
import sys

class NoSDK:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ImportError("the SDK is not installed")
        return None

sys.meta_path.insert(0, NoSDK())
from chatkit._hooks import CallInfo
from chatkit._request import ChatRequest
from chatkit.telemetry import OpenTelemetry

hook = OpenTelemetry()
call = CallInfo(ChatRequest("m", [{"role": "user", "content": "Hi"}]), "OpenAI", [])
hook.on_call_start(call)
hook.on_call_end(call)
assert not [name for name in sys.modules if name.startswith("opentelemetry.sdk")]
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
