"""Hooks and OpenTelemetry on a call that retries and falls back, against
chatkit.testing's fake servers (no key, no network).

Needs the OpenTelemetry SDK for the in-memory exporter:
    pip install "chatkit[otel]" opentelemetry-sdk
Run: python examples/observability.py (docs/observability.md shows its output)
"""

from __future__ import annotations

import asyncio
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import chatkit
from chatkit.hooks import LoggingHook
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.telemetry import OpenTelemetry
from chatkit.testing import FakeOpenAIServer


async def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    async with FakeOpenAIServer() as first, FakeOpenAIServer() as second:
        first.fail(1, 429, retry_after=0.01)  # retried on the same provider...
        first.fail(1, 503)  # ...then the next one answers
        provider = RetryProvider(
            [
                OpenAI(base_url=first.base_url, api_key="sk-example"),
                Groq(base_url=second.base_url, api_key="sk-example"),
            ],
            strategy="ordered",
            single_provider_retry=True,
            max_retries=1,
        )
        hooks = [LoggingHook(), OpenTelemetry(tracer_provider=tracing)]
        async with chatkit.AsyncClient(provider=provider, hooks=hooks) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            async with stream:
                text = "".join([chunk.text async for chunk in stream])
    print("answer:", text, f"({stream.provider})")
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        depth = 0 if span.parent is None or span.parent.span_id not in by_id else 1
        decision = (span.attributes or {}).get("chatkit.retry.decision", "")
        print("span:", "  " * depth + span.name, decision)


if __name__ == "__main__":
    asyncio.run(main())
