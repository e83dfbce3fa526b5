"""``chatkit serve --otel``: OpenTelemetry's SDK set up from the standard OTEL_* variables."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import chatkit

__all__ = ["OTEL_PACKAGES", "OTelSetupError", "setup_otel"]


class OTelSetupError(chatkit.ChatkitError):
    """``--otel`` cannot be set up: a package is missing, or an OTEL_* setting is unsupported."""


# What --otel needs installed besides chatkit (the API comes with the SDK).
OTEL_PACKAGES = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")
DEFAULT_SERVICE_NAME = "chatkit-gateway"
# How long a stop waits for the last spans to be exported.
OTEL_FLUSH_TIMEOUT = 5.0


def setup_otel() -> tuple[object, Callable[[], None]]:
    """The OpenTelemetry hook for the gateway's client, and what flushes it at the end.

    A TracerProvider and a MeterProvider (made the global ones) exporting over
    OTLP/HTTP as the standard variables say: ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (and the ``_TRACES_`` / ``_METRICS_`` ones), ``..._HEADERS``,
    ``..._TIMEOUT``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_METRIC_EXPORT_INTERVAL``. ``OTEL_TRACES_EXPORTER`` and
    ``OTEL_METRICS_EXPORTER`` may each be ``otlp`` (the default), ``console``
    (stderr) or ``none``.
    """
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricReader,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        from chatkit.telemetry import OpenTelemetry
    except ImportError as exc:
        raise OTelSetupError(
            f"--otel needs OpenTelemetry ({exc}): pip install {' '.join(OTEL_PACKAGES)}"
        ) from None
    span_kinds = _exporter_kinds("OTEL_TRACES_EXPORTER")
    metric_kinds = _exporter_kinds("OTEL_METRICS_EXPORTER")
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    resource = Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    for kind in span_kinds:
        span_exporter = (
            OTLPSpanExporter() if kind == "otlp" else ConsoleSpanExporter(out=sys.stderr)
        )
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(
            OTLPMetricExporter() if kind == "otlp" else ConsoleMetricExporter(out=sys.stderr)
        )
        for kind in metric_kinds
    ]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown(timeout_millis=OTEL_FLUSH_TIMEOUT * 1000)

    def flush() -> None:
        # Bounded: an unreachable collector must not hold the stop for long.
        worker = threading.Thread(target=shutdown, name="chatkit-otel-flush", daemon=True)
        worker.start()
        worker.join(OTEL_FLUSH_TIMEOUT)

    hook = OpenTelemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, propagate=True
    )
    return hook, flush


def _exporter_kinds(variable: str) -> list[str]:
    """The exporters an ``OTEL_*_EXPORTER`` variable names (default: otlp)."""
    kinds = []
    for kind in os.environ.get(variable, "otlp").split(","):
        kind = kind.strip().lower()
        if kind in ("otlp", "console"):
            kinds.append(kind)
        elif kind not in ("none", ""):
            raise OTelSetupError(
                f"{variable}={kind!r} is not supported by chatkit serve; use otlp, console or none"
            )
    return kinds
