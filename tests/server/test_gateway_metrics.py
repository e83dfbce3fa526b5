"""``GET /metrics``: the gateway's Prometheus metrics, scraped after real traffic.

Every test runs fake upstreams and the gateway (``create_app(metrics=True)``)
on loopback ports, sends requests with a plain aiohttp client, and reads the
text exposition back with a small parser of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import anyio
import pytest
from server_support import MESSAGES, UPSTREAM_KEY, gateway, running

import chatkit
from chatkit.providers import Anthropic, OpenAI
from chatkit.server import create_app
from chatkit.server._metrics import CONTENT_TYPE, Metrics
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
REQUESTS = "chatkit_gateway_requests_total"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> Series:
    """Every sample of a text exposition, keyed by name and label set; checks the syntax."""
    assert text.endswith("\n")
    samples: Series = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        found = SAMPLE.match(line)
        assert found, f"not a sample line: {line!r}"
        name, labels, value = found.groups()
        pairs: frozenset[tuple[str, str]] = frozenset()
        if labels:
            inner = labels[1:-1]
            matched = list(LABEL.finditer(inner))
            assert ",".join(m.group(0) for m in matched) == inner, line
            pairs = frozenset((m.group(1), _unescape(m.group(2))) for m in matched)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no TYPE line"
        key = (name, pairs)
        assert key not in samples, f"duplicate series: {line}"
        samples[key] = float(value)
    return samples


def value(samples: Series, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Series, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and wanted <= k[1]}


async def scrape(url: str, **headers: str) -> Series:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse(await response.text())


async def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + CHAT, json=body, headers=headers) as response,
    ):
        return response.status, await response.read()


def usage_of(raw: bytes, streamed: bool) -> tuple[int, int]:
    if streamed:
        events = [e for e in raw.decode().split("\n\n") if e.startswith("data: {")]
        usage = json.loads(events[-1][len("data: ") :])["usage"]
    else:
        usage = json.loads(raw)["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


# -- counters and histograms -----------------------------------------------------


async def test_counters_and_histograms_after_mixed_traffic() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="one two three"), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, metrics=True) as url,
    ):
        plain_status, plain = await post(url, {"model": "gpt-a", "messages": MESSAGES})
        streamed = {
            "model": "gpt-a",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stream_status, stream = await post(url, streamed)
        # A stream whose caller did not ask for usage: chatkit asks upstream
        # itself and folds it into the last chunk, so its tokens count too.
        bare_status, bare = await post(
            url, {"model": "gpt-b", "messages": MESSAGES, "stream": True}
        )
        upstream.fail(1, 429, retry_after=0)
        limited, _ = await post(url, {"model": "gpt-a", "messages": MESSAGES})
        upstream.fail(1, 500)
        broken, _ = await post(url, {"model": "gpt-a", "messages": MESSAGES, "stream": True})
        bad, _ = await post(url, {"model": "gpt-a"})  # no messages: refused, never sent
        samples = await scrape(url)
    assert (plain_status, stream_status, bare_status) == (200, 200, 200)
    assert (limited, broken, bad) == (429, 500, 400)

    requests = "chatkit_gateway_requests_total"
    assert matching(samples, requests) == {
        frozenset({("provider", "OpenAI"), ("model", "gpt-a"), ("status", "200")}): 2,
        frozenset({("provider", "OpenAI"), ("model", "gpt-b"), ("status", "200")}): 1,
        frozenset({("provider", "OpenAI"), ("model", "gpt-a"), ("status", "429")}): 1,
        frozenset({("provider", "OpenAI"), ("model", "gpt-a"), ("status", "500")}): 1,
        frozenset({("provider", ""), ("model", ""), ("status", "400")}): 1,
    }

    plain_in, plain_out = usage_of(plain, streamed=False)
    stream_in, stream_out = usage_of(stream, streamed=True)
    bare_in, bare_out = usage_of(bare, streamed=True)
    assert plain_out > 0 and stream_out > 0 and bare_out > 0
    tokens = "chatkit_gateway_tokens_total"
    assert matching(samples, tokens) == {
        frozenset({("provider", "OpenAI"), ("model", "gpt-a"), ("type", "input")}): (
            plain_in + stream_in
        ),
        frozenset({("provider", "OpenAI"), ("model", "gpt-a"), ("type", "output")}): (
            plain_out + stream_out
        ),
        frozenset({("provider", "OpenAI"), ("model", "gpt-b"), ("type", "input")}): bare_in,
        frozenset({("provider", "OpenAI"), ("model", "gpt-b"), ("type", "output")}): bare_out,
    }

    duration = "chatkit_gateway_request_duration_seconds"
    gpt_a = {"provider": "OpenAI", "model": "gpt-a"}
    assert value(samples, duration + "_count", **gpt_a) == 4
    assert value(samples, duration + "_bucket", **gpt_a, le="+Inf") == 4
    assert value(samples, duration + "_bucket", **gpt_a, le="0.05") is not None
    total = value(samples, duration + "_sum", **gpt_a)
    assert total is not None and 0 < total < 30
    assert value(samples, duration + "_count", provider="", model="") == 1
    buckets = matching(samples, duration + "_bucket", **gpt_a)
    ordered = sorted(buckets.items(), key=lambda item: float(dict(item[0])["le"]))
    counts = [count for _, count in ordered]
    assert counts == sorted(counts)  # cumulative

    ttft = "chatkit_gateway_time_to_first_token_seconds"
    # Only streams that got a first token: the two 200s, not the 500.
    assert value(samples, ttft + "_count", **gpt_a) == 1
    assert value(samples, ttft + "_count", provider="OpenAI", model="gpt-b") == 1
    assert value(samples, ttft + "_bucket", provider="OpenAI", model="gpt-b", le="+Inf") == 1
    assert value(samples, ttft + "_count", provider="", model="") is None
    assert value(samples, "chatkit_gateway_streams_in_flight") == 0
    assert value(samples, "chatkit_gateway_breaker_state", provider="OpenAI", state="closed") == 1
    assert value(samples, "chatkit_gateway_breaker_state", provider="OpenAI", state="open") == 0


async def test_a_fallback_is_counted_under_the_provider_that_answered() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as first,
        FakeAnthropicServer(Behavior(text="from the fallback"), api_key=UPSTREAM_KEY) as second,
    ):
        chain = chatkit.RetryProvider(
            [
                OpenAI(base_url=first.base_url, api_key=UPSTREAM_KEY),
                Anthropic(base_url=second.base_url, api_key=UPSTREAM_KEY),
            ],
            shuffle=False,
        )
        first.fail(2, 503)
        async with (
            chatkit.AsyncClient(provider=chain, max_retries=0) as client,
            running(create_app(client, metrics=True)) as url,
        ):
            body = {"model": "claude-x", "messages": MESSAGES, "stream": True}
            status, _ = await post(url, body)
            plain, raw = await post(url, {"model": "claude-x", "messages": MESSAGES})
            samples = await scrape(url)
    assert (status, plain) == (200, 200)
    assert json.loads(raw)["provider"] == "Anthropic"
    assert len(first.requests) == 2 and len(second.requests) == 2
    answered = {"provider": "Anthropic", "model": "claude-x"}
    assert value(samples, "chatkit_gateway_requests_total", **answered, status="200") == 2
    assert matching(samples, "chatkit_gateway_requests_total", provider="OpenAI") == {}
    assert value(samples, "chatkit_gateway_time_to_first_token_seconds_count", **answered) == 1
    # Both members of the chain, from client.health() at scrape time.
    breakers = matching(samples, "chatkit_gateway_breaker_state")
    assert {dict(k)["provider"] for k in breakers} == {"OpenAI", "Anthropic"}
    assert sum(breakers.values()) == 2


async def test_an_open_breaker_shows_at_scrape_time() -> None:
    breaker = chatkit.CircuitBreaker(failure_threshold=1, cooldown=60)
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, client_options={"breaker": breaker}, metrics=True) as url,
    ):
        upstream.fail(1, 503)
        status, _ = await post(url, {"model": "m", "messages": MESSAGES})
        samples = await scrape(url)
    assert status == 503
    state = "chatkit_gateway_breaker_state"
    assert value(samples, state, provider="OpenAI", state="open") == 1
    assert value(samples, state, provider="OpenAI", state="closed") == 0
    assert value(samples, state, provider="OpenAI", state="half_open") == 0


async def test_streams_in_flight_and_a_caller_that_leaves() -> None:
    slow = Behavior(text="a b c d", delay=0.3)
    async with (
        FakeOpenAIServer(slow, api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, metrics=True) as url,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with session.post(url + CHAT, json=body) as response:
            assert response.status == 200
            await response.content.readline()  # the stream has started
            during = await scrape(url)
        # Left mid-stream: the 200 had been sent, so it is counted as one.
        with anyio.fail_after(10):
            while True:
                after = await scrape(url)
                if value(after, "chatkit_gateway_streams_in_flight") == 0:
                    break
                await asyncio.sleep(0.05)
        # Left before the first token: 499, as nginx counts it.
        upstream.script(Behavior(stall_after=0, stall_seconds=30))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await session.post(url + CHAT, json=body)
        with anyio.fail_after(10):
            while True:
                left = await scrape(url)
                if value(left, "chatkit_gateway_streams_in_flight") == 0:
                    break
                await asyncio.sleep(0.05)
    assert value(during, "chatkit_gateway_streams_in_flight") == 1
    assert matching(after, "chatkit_gateway_requests_total") == {
        frozenset({("provider", "OpenAI"), ("model", "m"), ("status", "200")}): 1
    }
    assert value(left, "chatkit_gateway_requests_total", provider="", model="m", status="499") == 1


async def test_an_interrupted_stream_is_a_200_and_an_interruption() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="a b c", drop_after=1), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, metrics=True) as url,
    ):
        status, raw = await post(url, {"model": "m", "messages": MESSAGES, "stream": True})
        samples = await scrape(url)
    assert status == 200 and b"stream_interrupted" in raw
    labels = {"provider": "OpenAI", "model": "m"}
    assert value(samples, "chatkit_gateway_requests_total", **labels, status="200") == 1
    assert value(samples, "chatkit_gateway_streams_interrupted_total", **labels) == 1


# -- labels ----------------------------------------------------------------------


async def test_label_values_are_escaped() -> None:
    odd = 'we"ird\\model\nname'
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, metrics=True) as url,
    ):
        status, _ = await post(url, {"model": odd, "messages": MESSAGES})
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/metrics") as response,
        ):
            text = await response.text()
    assert status == 200
    assert 'model="we\\"ird\\\\model\\nname"' in text
    samples = parse(text)
    assert value(samples, REQUESTS, provider="OpenAI", model=odd, status="200") == 1


async def test_label_sets_are_capped_and_the_rest_folded_into_other() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        client = chatkit.AsyncClient(provider=OpenAI(base_url=upstream.base_url, api_key="k"))
        async with client:
            metrics = Metrics(client, max_series=3)
            for n in range(6):
                exchange = metrics.begin()
                exchange.asked(f"model-{n}" + "x" * 500 * (n == 0), stream=False)
                metrics.finish(exchange, 404)
            samples = parse(metrics.render())
    requests = matching(samples, "chatkit_gateway_requests_total")
    assert len(requests) == 4
    assert requests[frozenset({("provider", "other"), ("model", "other"), ("status", "404")})] == 3
    assert value(samples, REQUESTS, provider="", model="model-1", status="404") == 1
    # Long values are cut.
    assert max(len(dict(k)["model"]) for k in requests) == 200
    assert len(matching(samples, "chatkit_gateway_request_duration_seconds_count")) == 4


# -- the endpoint ----------------------------------------------------------------


async def test_metrics_need_the_gateway_key_when_one_is_set() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, metrics=True, api_key="gw-key") as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/metrics") as denied:
            assert denied.status == 401
            assert denied.headers["WWW-Authenticate"] == "Bearer"
        status, _ = await post(url, {"messages": MESSAGES})  # no key: a 401, counted
        samples = await scrape(url, Authorization="Bearer gw-key")
    assert status == 401
    assert value(samples, REQUESTS, provider="", model="", status="401") == 1
    assert upstream.requests == []


async def test_without_metrics_there_is_no_endpoint() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics") as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_url"


async def test_metrics_work_under_a_prefix() -> None:
    from aiohttp import web

    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        client = chatkit.AsyncClient(
            provider=OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY), max_retries=0
        )
        async with client:
            root = web.Application(handler_args={"handler_cancellation": True})
            root.add_subapp("/llm", create_app(client, metrics=True, api_key="k"))
            async with running(root) as url:
                auth = {"Authorization": "Bearer k"}
                status, _ = await post(url + "/llm", {"model": "m", "messages": MESSAGES}, **auth)
                samples = await scrape(url + "/llm", **auth)
    assert status == 200
    assert value(samples, REQUESTS, provider="OpenAI", model="m", status="200") == 1


class BrokenHealth(chatkit.AsyncClient):
    def health(self) -> list[chatkit.ProviderHealth]:
        raise RuntimeError("no health today")


async def test_a_failing_health_check_leaves_the_breaker_gauge_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with BrokenHealth(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        samples = parse(Metrics(client).render())
    assert matching(samples, "chatkit_gateway_breaker_state") == {}
    assert value(samples, "chatkit_gateway_streams_in_flight") == 0
    assert "client.health() failed" in caplog.text
