"""The gateway continues its callers' traces: one tree from the caller to the upstream.

In process: the official ``openai`` package calls the gateway (``create_app(otel=True)``)
with the ``traceparent`` of a test span; the client's OpenTelemetry hook records
into an in-memory exporter, and the fake upstream records the ``traceparent``
it received. As a process: ``chatkit serve --otel`` exports its spans over
OTLP/HTTP to a dummy collector on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from server_support import MESSAGES, UPSTREAM_KEY, running

import chatkit
from chatkit.providers import OpenAI
from chatkit.server import create_app
from chatkit.testing import Behavior, FakeOpenAIServer

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is not installed")
openai = pytest.importorskip("openai")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import format_span_id, format_trace_id  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import (  # noqa: E402
    TraceContextTextMapPropagator,
)

from chatkit.telemetry import OpenTelemetry  # noqa: E402

pytestmark = pytest.mark.anyio

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def caller_headers(provider: TracerProvider) -> tuple[dict[str, str], int, int]:
    """A finished test span's ``traceparent``, with its trace and span ids."""
    with provider.get_tracer("test").start_as_current_span("caller") as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        context = span.get_span_context()
    return carrier, context.trace_id, context.span_id


@asynccontextmanager
async def traced_gateway(
    upstream: FakeOpenAIServer, provider: TracerProvider, *, otel: bool = True
) -> AsyncIterator[str]:
    hook = OpenTelemetry(tracer_provider=provider, propagate=True)
    client = chatkit.AsyncClient(
        provider=OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY),
        max_retries=0,
        hooks=[hook],
    )
    async with client, running(create_app(client, otel=otel)) as url:
        yield url


def by_name(finished: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name.startswith(prefix)]


def sent_traceparent(upstream: FakeOpenAIServer, index: int) -> tuple[str, str]:
    found = TRACEPARENT.match(upstream.requests[index].headers["traceparent"])
    assert found, upstream.requests[index].headers
    return found.group(1), found.group(2)


@pytest.mark.parametrize("stream", [False, True])
async def test_one_tree_from_the_caller_through_the_gateway_to_the_upstream(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = spans
    headers, trace_id, parent_id = caller_headers(provider)
    async with (
        FakeOpenAIServer(Behavior(text="traced answer"), api_key=UPSTREAM_KEY) as upstream,
        traced_gateway(upstream, provider) as url,
    ):
        caller = openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", default_headers=headers, max_retries=0
        )
        async with caller:
            if stream:
                chunks = await caller.chat.completions.create(
                    model="gpt-t", messages=MESSAGES, stream=True
                )
                text = "".join([c.choices[0].delta.content or "" async for c in chunks])
            else:
                answer = await caller.chat.completions.create(model="gpt-t", messages=MESSAGES)
                text = answer.choices[0].message.content or ""
    assert text == "traced answer"
    assert "detach" not in caplog.text  # contexts were restored in order
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finished = exporter.get_finished_spans()
    (call,) = by_name(finished, "chat gpt-t")
    (attempt,) = by_name(finished, "attempt ")
    # The call span continues the caller's trace, as a child of its span.
    assert call.context is not None and call.parent is not None
    assert call.context.trace_id == trace_id
    assert call.parent.span_id == parent_id
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    # The upstream received the same trace, with the attempt span as parent.
    assert attempt.context is not None
    assert sent_traceparent(upstream, 0) == (
        format_trace_id(trace_id),
        format_span_id(attempt.context.span_id),
    )


async def test_without_a_traceparent_the_call_starts_its_own_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        traced_gateway(upstream, provider) as url,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "m", "messages": MESSAGES}
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
        async with session.get(url + "/health") as health:  # other routes: untouched
            assert health.status == 200
    (call,) = by_name(exporter.get_finished_spans(), "chat m")
    assert call.parent is None and call.context is not None
    assert sent_traceparent(upstream, 0)[0] == format_trace_id(call.context.trace_id)


async def test_the_traceparent_is_ignored_unless_otel_is_on(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    headers, trace_id, _ = caller_headers(provider)
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        traced_gateway(upstream, provider, otel=False) as url,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "m", "messages": MESSAGES}
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
    (call,) = by_name(exporter.get_finished_spans(), "chat m")
    assert call.parent is None
    assert call.context is not None and call.context.trace_id != trace_id


async def test_each_request_gets_its_own_context(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Concurrent requests with different traceparents stay in their own traces."""
    provider, exporter = spans
    callers = [caller_headers(provider) for _ in range(3)]
    async with (
        FakeOpenAIServer(Behavior(text="a b c", delay=0.05), api_key=UPSTREAM_KEY) as upstream,
        traced_gateway(upstream, provider) as url,
        aiohttp.ClientSession() as session,
    ):

        async def ask(headers: dict[str, str], model: str) -> None:
            body = {"model": model, "messages": MESSAGES, "stream": True}
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
                await r.read()

        await asyncio.gather(*(ask(h, f"m{i}") for i, (h, _, _) in enumerate(callers)))
    finished = exporter.get_finished_spans()
    for i, (_, trace_id, parent_id) in enumerate(callers):
        (call,) = by_name(finished, f"chat m{i}")
        assert call.context is not None and call.context.trace_id == trace_id
        assert call.parent is not None and call.parent.span_id == parent_id


# -- chatkit serve --otel ----------------------------------------------------------


def environment(**extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and not k.endswith(("_API_KEY", "_BASE_URL"))
    }
    return {**clean, **extra}


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A dummy OTLP/HTTP collector on loopback: the trace export bodies it received."""
    received: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with running(app) as url:
        yield url, received


async def serve_otel(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatkit",
        "serve",
        "--port",
        "0",
        "--otel",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


async def listening_url(process: asyncio.subprocess.Process, log: list[str]) -> str:
    assert process.stderr is not None
    with anyio.fail_after(60):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "chatkit serve ended before listening:\n" + "".join(log)
            log.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                return found.group(1)


@pytest.mark.skipif(
    not all(
        __import__("importlib").util.find_spec(name)
        for name in ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.proto")
    ),
    reason="opentelemetry-exporter-otlp-proto-http is not installed",
)
async def test_chatkit_serve_otel_exports_the_callers_trace_over_otlp(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    headers, trace_id, parent_id = caller_headers(spans[0])
    log: list[str] = []
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        collector() as (endpoint, received),
    ):
        env = environment(
            OPENAI_API_KEY=UPSTREAM_KEY,
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_METRICS_EXPORTER="none",
            OTEL_SERVICE_NAME="gateway-under-test",
        )
        process = await serve_otel("--base-url", upstream.base_url, env=env)
        try:
            url = await listening_url(process, log)
            assert "OpenTelemetry on" in log[-1]
            body = {"model": "m", "messages": MESSAGES, "stream": True}
            async with (
                aiohttp.ClientSession() as session,
                session.post(url + "/v1/chat/completions", json=body, headers=headers) as r,
            ):
                assert r.status == 200
                await r.read()
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            with anyio.fail_after(30):
                log.append((await process.stderr.read()).decode())
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0, "".join(log)
    assert "Traceback" not in "".join(log)
    exported: list[Any] = []
    for raw in received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(raw)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attributes["service.name"] == "gateway-under-test"
            for scope_spans in resource_spans.scope_spans:
                exported.extend(scope_spans.spans)
    names = {span.name for span in exported}
    assert names == {"chat m", "attempt OpenAI"}
    call = next(s for s in exported if s.name == "chat m")
    assert call.trace_id == trace_id.to_bytes(16, "big")
    assert call.parent_span_id == parent_id.to_bytes(8, "big")
    assert sent_traceparent(upstream, 0)[0] == format_trace_id(trace_id)


async def test_chatkit_serve_otel_without_the_packages_is_one_clear_error() -> None:
    # The SDK made unimportable in the child (a None entry in sys.modules).
    script = (
        "import sys; sys.modules['opentelemetry.sdk'] = None; "
        "from chatkit.cli import main; "
        "sys.exit(main(['serve', '--otel', '--base-url', 'http://127.0.0.1:9/v1']))"
    )
    result = await anyio.run_process([sys.executable, "-c", script], env=environment(), check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.startswith("chatkit: error: --otel needs OpenTelemetry")
    assert "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http" in stderr
    assert "Traceback" not in stderr


async def test_an_unsupported_exporter_is_refused_at_start_up() -> None:
    env = environment(OTEL_TRACES_EXPORTER="zipkin")
    result = await anyio.run_process(
        [sys.executable, "-m", "chatkit", "serve", "--otel", "--base-url", "http://127.0.0.1:9/v1"],
        env=env,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in stderr


async def test_opentelemetry_is_not_imported_unless_asked_for() -> None:
    script = (
        "import sys, chatkit; from chatkit.server import create_app; "
        "create_app(chatkit.AsyncClient(base_url='http://127.0.0.1:9/v1', api_key='k'),"
        " metrics=True); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    result = await anyio.run_process([sys.executable, "-c", script], env=environment())
    assert result.stdout.decode().strip() == "[]"


async def test_console_exporters_write_to_stderr_and_flush_at_the_stop() -> None:
    env = environment(
        OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="console", OPENAI_API_KEY="k"
    )
    log: list[str] = []
    async with FakeOpenAIServer(api_key="k") as upstream:
        process = await serve_otel("--base-url", upstream.base_url, env=env)
        try:
            url = await listening_url(process, log)
            body = {"model": "m", "messages": MESSAGES}
            async with (
                aiohttp.ClientSession() as session,
                session.post(url + "/v1/chat/completions", json=body) as r,
            ):
                assert r.status == 200
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            with anyio.fail_after(30):
                log.append((await process.stderr.read()).decode())
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = "".join(log)
    assert code == 0, output
    assert '"name": "chat m"' in output  # the span
    assert "gen_ai.client.operation.duration" in output  # the hook's metrics
    assert '"service.name": "chatkit-gateway"' in output  # the default service name


async def test_a_start_up_failure_after_the_set_up_is_still_one_line() -> None:
    env = environment(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    result = await anyio.run_process(
        [sys.executable, "-m", "chatkit", "serve", "--otel", "-p", "anthropic"],
        env=env,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.startswith("chatkit: error: ") and "ANTHROPIC_API_KEY" in stderr


async def test_create_app_otel_without_opentelemetry_names_the_package() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None; import chatkit; "
        "from chatkit.server import create_app\n"
        "try:\n"
        "    create_app(chatkit.AsyncClient(base_url='http://127.0.0.1:9/v1', api_key='k'),"
        " otel=True)\n"
        "except chatkit.InvalidRequestError as exc:\n"
        "    print(exc.field, exc)\n"
    )
    result = await anyio.run_process([sys.executable, "-c", script], env=environment())
    assert result.stdout.decode().startswith("otel otel=True needs OpenTelemetry: pip install")
