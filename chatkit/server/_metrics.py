"""Prometheus metrics of the gateway: ``GET /metrics`` (``create_app(metrics=True)``).

Computed from what the gateway serves, whatever client it was given: the
HTTP status each chat request got, its duration, the time to its first token
(streamed), the tokens its answer reports, the streams in progress, and the
breaker state of each provider (``client.health()``, read at scrape time).
Written in Prometheus' text exposition format 0.0.4 by hand: no dependency.

Label values that come from answers or requests (``provider``, ``model``) are
bounded: each metric keeps at most ``MAX_SERIES`` label sets, and the ones
past that are counted under ``provider="other", model="other"``.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import chatkit

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "EXCHANGE",
    "MAX_SERIES",
    "METRICS",
    "TTFT_BUCKETS",
    "Exchange",
    "Metrics",
    "metrics_endpoint",
    "metrics_middleware",
]

logger = logging.getLogger("chatkit.server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Most label sets one metric keeps; the rest are folded into "other".
MAX_SERIES = 1000
# Longer label values (a model name sent by a caller) are cut to this length.
MAX_LABEL_LENGTH = 200
OTHER = "other"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = ("closed", "open", "half_open")
# The status recorded for a caller that went away before any answer (nginx's).
CLIENT_CLOSED = 499

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value or bucket bound: ``3``, ``0.25``, ``1.0``, ``+Inf``."""
    if isinstance(value, int):
        return str(value)
    return "+Inf" if value == math.inf else repr(value)


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class _Family:
    """One metric: its label sets, at most ``max_series`` of them (then "other")."""

    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], max_series: int) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self.max_series = max_series
        # provider and model, when present, are the labels folded into "other".
        self._folded = [i for i, n in enumerate(self.labels) if n in ("provider", "model")]

    def _key(self, values: Sequence[str], known: Callable[[Labels], bool], size: int) -> Labels:
        key = tuple(v[:MAX_LABEL_LENGTH] for v in values)
        if known(key) or size < self.max_series:
            return key
        return tuple(OTHER if i in self._folded else v for i, v in enumerate(key))

    def header(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str], max_series: int) -> None:
        super().__init__(name, help_text, labels, max_series)
        self.series: dict[Labels, float] = {}

    def inc(self, values: Sequence[str], amount: float = 1) -> None:
        key = self._key(values, self.series.__contains__, len(self.series))
        self.series[key] = self.series.get(key, 0) + amount

    def lines(self) -> Iterator[str]:
        yield from self.header()
        for key, value in self.series.items():
            yield f"{self.name}{_label_text(self.labels, key)} {_number(value)}"


@dataclass
class _Observations:
    buckets: list[int]
    sum: float = 0.0
    count: int = 0


class Histogram(_Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str],
        max_series: int,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, help_text, labels, max_series)
        self.bounds = tuple(sorted(buckets))
        self.series: dict[Labels, _Observations] = {}

    def observe(self, values: Sequence[str], value: float) -> None:
        key = self._key(values, self.series.__contains__, len(self.series))
        observed = self.series.get(key)
        if observed is None:
            observed = self.series[key] = _Observations([0] * (len(self.bounds) + 1))
        # The first bucket whose upper bound is >= value ("le"); the last is +Inf.
        observed.buckets[bisect.bisect_left(self.bounds, value)] += 1
        observed.sum += value
        observed.count += 1

    def lines(self) -> Iterator[str]:
        yield from self.header()
        names = (*self.labels, "le")
        for key, observed in self.series.items():
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), observed.buckets, strict=True):
                cumulative += count
                labels = _label_text(names, (*key, _number(float(bound))))
                yield f"{self.name}_bucket{labels} {cumulative}"
            labels = _label_text(self.labels, key)
            yield f"{self.name}_sum{labels} {_number(observed.sum)}"
            yield f"{self.name}_count{labels} {observed.count}"


class Metrics:
    """The gateway's metrics, kept in its event loop (no locks needed)."""

    def __init__(self, client: chatkit.AsyncClient, *, max_series: int = MAX_SERIES) -> None:
        self.client = client
        by = ("provider", "model")
        self.requests = Counter(
            "chatkit_gateway_requests_total",
            "Chat completion requests answered by the gateway, by the HTTP status returned.",
            (*by, "status"),
            max_series,
        )
        self.duration = Histogram(
            "chatkit_gateway_request_duration_seconds",
            "Seconds from a chat request's arrival to the end of its answer.",
            by,
            max_series,
            DURATION_BUCKETS,
        )
        self.ttft = Histogram(
            "chatkit_gateway_time_to_first_token_seconds",
            "Seconds from a streamed chat request's arrival to its first content chunk.",
            by,
            max_series,
            TTFT_BUCKETS,
        )
        self.tokens = Counter(
            "chatkit_gateway_tokens_total",
            "Tokens reported by the answers served (type: input or output).",
            (*by, "type"),
            max_series,
        )
        self.interrupted = Counter(
            "chatkit_gateway_streams_interrupted_total",
            "Streamed answers that broke off after they had started (their status was 200).",
            by,
            max_series,
        )
        self.streams_in_flight = 0

    def begin(self) -> Exchange:
        return Exchange(self, time.monotonic())

    def finish(self, exchange: Exchange, status: int) -> None:
        if exchange.stream:
            self.streams_in_flight -= 1
        labels = (exchange.provider, exchange.model)
        self.requests.inc((*labels, str(status)))
        self.duration.observe(labels, time.monotonic() - exchange.started)
        if exchange.ttft is not None:
            self.ttft.observe(labels, exchange.ttft)
        if exchange.input_tokens:
            self.tokens.inc((*labels, "input"), exchange.input_tokens)
        if exchange.output_tokens:
            self.tokens.inc((*labels, "output"), exchange.output_tokens)
        if exchange.interrupted:
            self.interrupted.inc(labels)

    def render(self) -> str:
        lines: list[str] = []
        for family in (self.requests, self.duration, self.ttft, self.tokens, self.interrupted):
            lines.extend(family.lines())
        lines.append(
            "# HELP chatkit_gateway_streams_in_flight Streamed chat requests being answered now."
        )
        lines.append("# TYPE chatkit_gateway_streams_in_flight gauge")
        lines.append(f"chatkit_gateway_streams_in_flight {self.streams_in_flight}")
        lines.extend(self._breakers())
        return "\n".join(lines) + "\n"

    def _breakers(self) -> Iterator[str]:
        name = "chatkit_gateway_breaker_state"
        yield f"# HELP {name} Circuit breaker state of each provider (1: the current state)."
        yield f"# TYPE {name} gauge"
        try:
            health = self.client.health()
        except Exception:
            logger.exception("GET /metrics: client.health() failed")
            return
        seen: dict[str, int] = {}
        for provider in health:
            # A chain may hold one vendor twice: "OpenAI", then "OpenAI#2".
            seen[provider.provider] = seen.get(provider.provider, 0) + 1
            count = seen[provider.provider]
            label = provider.provider if count == 1 else f"{provider.provider}#{count}"
            for state in BREAKER_STATES:
                value = 1 if provider.state == state else 0
                labels = _label_text(("provider", "state"), (label, state))
                yield f"{name}{labels} {value}"


@dataclass(eq=False)
class Exchange:
    """One chat request as the metrics see it; the handler fills it in."""

    metrics: Metrics
    started: float
    provider: str = ""
    model: str = ""
    stream: bool = False
    committed: bool = False
    interrupted: bool = False
    ttft: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    _model_answered: bool = field(default=False, repr=False)

    def asked(self, model: object, stream: bool) -> None:
        """The call is about to be made: the model asked for (until one answers)."""
        if isinstance(model, str):
            self.model = model
        if stream:
            self.stream = True
            self.metrics.streams_in_flight += 1

    def answered(self, completion: chatkit.ChatCompletion) -> None:
        self._answer(completion.provider, completion.model, completion.usage)

    def first_token(self) -> None:
        """A stream's first content chunk has arrived (the answer is about to start)."""
        self.ttft = time.monotonic() - self.started

    def chunk(self, chunk: chatkit.ChatCompletionChunk) -> None:
        self._answer(chunk.provider, chunk.model, chunk.usage)

    def failed(self, exc: BaseException) -> None:
        """The call failed before an answer: the provider the error names, if any."""
        provider = getattr(exc, "provider", None)
        if isinstance(provider, str) and not self.provider:
            self.provider = provider

    def _answer(
        self, provider: str | None, model: str | None, usage: chatkit.CompletionUsage | None
    ) -> None:
        if provider and not self.provider:
            self.provider = provider
        if model and not self._model_answered:
            self.model, self._model_answered = model, True
        if usage is not None:
            self.input_tokens = usage.prompt_tokens or 0
            self.output_tokens = usage.completion_tokens or 0


METRICS = web.AppKey("chatkit_metrics", Metrics)
EXCHANGE = web.RequestKey("chatkit_exchange", Exchange)


def metrics_middleware(metrics: Metrics, chat: Handler) -> Middleware:
    """Outermost: sees the status every chat request finally got, 401s included."""

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Decided by the route, not the path: the app may be mounted under a prefix.
        if request.match_info.handler is not chat:
            return await handler(request)
        exchange = request[EXCHANGE] = metrics.begin()
        status = CLIENT_CLOSED
        try:
            # The errors middleware, inside this one, turns every error into a response.
            response = await handler(request)
            status = response.status
            return response
        finally:
            if status == CLIENT_CLOSED and exchange.committed:
                status = 200  # the caller left mid-stream: a 200 had been sent
            metrics.finish(exchange, status)

    return measure


async def metrics_endpoint(request: web.Request) -> web.Response:
    text = request.app[METRICS].render()
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
