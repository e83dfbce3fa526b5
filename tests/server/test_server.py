"""The gateway's HTTP semantics, driven with a plain aiohttp client against real servers.

Every test runs a FakeOpenAIServer upstream and the gateway (``create_app`` +
``serve``) on loopback ports in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from server_support import (
    MESSAGES,
    UPSTREAM_KEY,
    gateway,
    running,
    sse_events,
    streamed_text,
    upstream_client,
)

import chatkit
from chatkit.providers import OpenAI
from chatkit.server import DEFAULT_MAX_BODY_SIZE, create_app
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"


async def post(url: str, body: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + CHAT, data=data, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def error_of(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw)
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# -- answers -------------------------------------------------------------------


async def test_non_streamed_completion() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="Paris it is."), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
    ):
        status, headers, raw = await post(url, {"model": "gpt-x", "messages": MESSAGES})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Paris it is."
    assert body["provider"] == "OpenAI"
    assert upstream.requests[0].json["model"] == "gpt-x"
    assert upstream.requests[0].json["stream"] is False


async def test_streamed_completion_is_sse_ending_with_done() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="one two three"), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
    ):
        status, headers, raw = await post(url, {"model": "m", "messages": MESSAGES, "stream": True})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert streamed_text(events) == "one two three"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_null_and_usage_options_pass_through() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="a b"), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
    ):
        body = {
            "model": "m",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
            "top_k": 3,
        }
        status, _, raw = await post(url, body)
        null_status, _, null_raw = await post(url, {"messages": MESSAGES, "stream": None})
    assert status == 200
    chunks = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    sent = upstream.requests[0].json
    assert sent["temperature"] == 0.5
    assert sent["top_k"] == 3  # unknown fields are forwarded (extra_body)
    assert sent["stream_options"] == {"include_usage": True}
    # stream: null means not streamed, as in OpenAI's API.
    assert null_status == 200
    assert json.loads(null_raw)["object"] == "chat.completion"


async def test_default_model_is_used_when_the_request_names_none() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, default_model="house-model") as url,
    ):
        await post(url, {"messages": MESSAGES})
        await post(url, {"messages": MESSAGES, "model": ""})
        await post(url, {"messages": MESSAGES, "model": "chosen"})
    assert [r.json["model"] for r in upstream.requests] == ["house-model", "house-model", "chosen"]


async def test_provider_prefix_routes_like_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
        # No provider configured: each call picks one from the model's prefix.
        async with (
            chatkit.AsyncClient(max_retries=0) as client,
            running(create_app(client)) as url,
        ):
            status, _, raw = await post(url, {"model": "openai:gpt-z", "messages": MESSAGES})
            unknown, _, unknown_raw = await post(
                url, {"model": "nosuch:model", "messages": MESSAGES}
            )
    assert status == 200
    assert json.loads(raw)["provider"] == "OpenAI"
    assert upstream.requests[0].json["model"] == "gpt-z"
    # An unknown prefix is just part of the model name for the default provider.
    assert unknown == 200
    assert upstream.requests[1].json["model"] == "nosuch:model"
    assert json.loads(unknown_raw)["object"] == "chat.completion"


# -- errors before the commit point: real HTTP statuses -------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
async def test_upstream_status_reaches_the_caller(stream: bool, status: int, kind: str) -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.fail(1, status, retry_after=7)
        async with gateway(upstream) as url:
            got, headers, raw = await post(url, {"messages": MESSAGES, "stream": stream})
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    error = error_of(raw)
    assert error["type"] == kind
    assert f"{status}" in error["message"]
    if status in (429, 503):
        assert headers["Retry-After"] == "7"
    else:
        assert "Retry-After" not in headers


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (403, "permission_error")]
)
async def test_upstream_auth_failures_are_reported_without_their_message(
    status: int, kind: str
) -> None:
    # The gateway's upstream key is refused: the caller learns that, not the
    # vendor's message (which is about the gateway's key and may quote it).
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.script(Behavior(status=status, error_type="invalid_request_error"))
        async with gateway(upstream) as url:
            got, headers, raw = await post(url, {"messages": MESSAGES, "stream": True})
    assert got == status
    error = error_of(raw)
    assert error["type"] == kind
    assert error["code"] == "upstream_authentication_failed"
    assert error["message"] == f"OpenAI rejected the gateway's credentials (HTTP {status})"
    assert "WWW-Authenticate" not in headers  # the caller's own credentials are fine


async def test_a_wrong_upstream_key_is_a_401() -> None:
    async with (
        FakeOpenAIServer(api_key="sk-the-right-one") as upstream,
        gateway(upstream) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES})
    assert status == 401
    assert error_of(raw)["code"] == "upstream_authentication_failed"


async def test_retry_after_ms_is_passed_through_on_429() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.fail(1, 429, retry_after_ms=1500)
        async with gateway(upstream) as url:
            status, headers, _ = await post(url, {"messages": MESSAGES, "stream": True})
    assert status == 429
    assert headers["retry-after-ms"] == "1500"


async def test_client_retries_happen_before_the_commit_point() -> None:
    async with FakeOpenAIServer(Behavior(text="fine now"), api_key=UPSTREAM_KEY) as upstream:
        upstream.fail(2, 503, retry_after=0)
        async with gateway(upstream, client_options={"max_retries": 2}) as url:
            status, _, raw = await post(url, {"messages": MESSAGES, "stream": True})
    assert status == 200
    assert streamed_text(sse_events(raw)) == "fine now"
    assert len(upstream.requests) == 3


async def test_error_event_before_content_is_an_http_status() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.script(Behavior(error_event_after=0, error_event_type="rate_limit_error"))
        async with gateway(upstream) as url:
            status, _, raw = await post(url, {"messages": MESSAGES, "stream": True})
    assert status == 429
    assert "fake error event" in error_of(raw)["message"]


async def test_unreachable_upstream_is_502() -> None:
    async with FakeOpenAIServer() as upstream:
        closed = upstream.base_url
    provider = OpenAI(base_url=closed, api_key=UPSTREAM_KEY)
    async with (
        chatkit.AsyncClient(provider=provider, max_retries=0) as client,
        running(create_app(client)) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES, "stream": True})
    assert status == 502
    assert error_of(raw)["code"] == "upstream_unreachable"


async def test_no_first_token_in_time_is_504() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.script(Behavior(stall_after=0))
        timeout = chatkit.Timeout(first_token=0.2)
        async with gateway(upstream, client_options={"timeout": timeout}) as url:
            status, _, raw = await post(url, {"messages": MESSAGES, "stream": True})
            assert await upstream.wait_for_disconnects(1)
    assert status == 504
    error = error_of(raw)
    assert error["code"] == "upstream_timeout"
    assert error["type"] == "server_error"


async def test_undecodable_upstream_answer_is_502() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        upstream.script(Behavior(malformed_after=0))
        async with gateway(upstream) as url:
            status, _, raw = await post(url, {"messages": MESSAGES})
    assert status == 502
    assert error_of(raw)["code"] == "upstream_bad_response"


async def test_missing_upstream_key_is_503() -> None:
    # Routed per call, and no key in the environment.
    async with chatkit.AsyncClient() as client, running(create_app(client)) as url:
        body = {"model": "anthropic:claude-x", "messages": MESSAGES, "stream": True}
        status, _, raw = await post(url, body)
    assert status == 503
    error = error_of(raw)
    assert error["code"] == "provider_not_configured"
    assert "ANTHROPIC_API_KEY" in error["message"]


# -- a RetryProvider behind the gateway ----------------------------------------


async def retry_gateway_post(
    first: FakeOpenAIServer, second: FakeOpenAIServer, body: dict[str, Any]
) -> tuple[int, dict[str, str], bytes]:
    providers = [
        OpenAI(base_url=first.base_url, api_key=UPSTREAM_KEY),
        OpenAI(base_url=second.base_url, api_key=UPSTREAM_KEY),
    ]
    provider = chatkit.RetryProvider(providers, shuffle=False, retry_after_max=0)
    async with (
        chatkit.AsyncClient(provider=provider) as client,
        running(create_app(client)) as url,
    ):
        return await post(url, body)


@pytest.mark.parametrize("stream", [True, False])
async def test_retry_provider_falls_back_before_the_commit_point(stream: bool) -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as first,
        FakeOpenAIServer(Behavior(text="second answers"), api_key=UPSTREAM_KEY) as second,
    ):
        first.fail(1, 500)
        status, _, raw = await retry_gateway_post(
            first, second, {"messages": MESSAGES, "stream": stream}
        )
    assert status == 200
    if stream:
        assert streamed_text(sse_events(raw)) == "second answers"
    else:
        assert json.loads(raw)["choices"][0]["message"]["content"] == "second answers"


@pytest.mark.parametrize(
    ("first_status", "second_status", "expected", "code"),
    [
        (503, 503, 503, None),  # they agree: that status
        (429, 429, 429, None),
        (404, 404, 404, None),
        (503, 500, 502, "all_providers_failed"),  # they differ: a bad gateway
        (401, 429, 502, "all_providers_failed"),
    ],
)
async def test_retry_provider_total_failure(
    first_status: int, second_status: int, expected: int, code: str | None
) -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as first,
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as second,
    ):
        first.fail(1, first_status, retry_after=9)
        second.fail(1, second_status, retry_after=9)
        status, headers, raw = await retry_gateway_post(
            first, second, {"messages": MESSAGES, "stream": True}
        )
    assert status == expected
    error = error_of(raw)
    assert error["code"] == code
    assert error["message"].startswith("all 2 attempts failed: OpenAI (attempt 1):")
    if expected == 429:
        assert headers["Retry-After"] == "9"
    if first_status == 401:
        assert "rejected the gateway's credentials" in error["message"]
        assert "Fake error: HTTP 401" not in error["message"]


async def test_retry_provider_with_nothing_to_try_is_503() -> None:
    # The OpenAI class needs OPENAI_API_KEY, which is not set: skipped, nothing tried.
    provider = chatkit.RetryProvider([OpenAI], shuffle=False)
    async with (
        chatkit.AsyncClient(provider=provider) as client,
        running(create_app(client)) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES})
    assert status == 503
    error = error_of(raw)
    assert error["code"] == "no_provider_available"
    assert "OPENAI_API_KEY" in error["message"]


async def test_empty_retry_provider_is_503() -> None:
    async with (
        chatkit.AsyncClient(provider=chatkit.RetryProvider([])) as client,
        running(create_app(client)) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES})
    assert status == 503
    assert error_of(raw)["message"] == "no provider could be tried"


# -- errors after the commit point: an error event, no [DONE] --------------------


@pytest.mark.parametrize(
    ("behavior", "code"),
    [
        (Behavior(text="one two three four", error_event_after=2), "stream_interrupted"),
        (Behavior(text="one two three four", drop_after=2), "stream_interrupted"),
    ],
)
async def test_failure_after_the_first_chunk_is_an_error_event(
    behavior: Behavior, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES, "stream": True})
    assert status == 200
    events = sse_events(raw)
    assert "[DONE]" not in events
    assert streamed_text(events[:-1]) == "one two"
    error = error_of(events[-1].encode())
    assert error["code"] == code
    assert error["type"] == "server_error"
    assert "stream failed after it had started" in caplog.text


# -- a caller that goes away ------------------------------------------------------


async def test_disconnect_mid_stream_cancels_the_upstream_request() -> None:
    async with (
        FakeOpenAIServer(
            Behavior(text="one two three", stall_after=1), api_key=UPSTREAM_KEY
        ) as upstream,
        gateway(upstream) as url,
    ):
        async with aiohttp.ClientSession() as session:
            response = await session.post(url + CHAT, json={"messages": MESSAGES, "stream": True})
            assert response.status == 200
            received = b""
            while b'"one"' not in received:
                received += await response.content.readany()
            # Upstream now stalls; the caller leaves.
            response.close()
        assert await upstream.wait_for_disconnects(1)
        assert upstream.active_streams == 0


async def test_disconnect_before_the_first_chunk_cancels_the_upstream_request() -> None:
    async with (
        FakeOpenAIServer(Behavior(stall_after=0), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
    ):
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(
                session.post(url + CHAT, json={"messages": MESSAGES, "stream": True})
            )
            for _ in range(500):  # bounded: until the upstream is streaming
                if upstream.active_streams:
                    break
                await asyncio.sleep(0.01)
            assert upstream.active_streams == 1
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        assert await upstream.wait_for_disconnects(1)


# -- requests the gateway refuses ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"", None, "empty"),
        (b"   ", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b'{"messages": "\xc3\x28"}', None, "not UTF-8"),
        (b"[1, 2]", None, "must be a JSON object, got list"),
        (b'"hello"', None, "must be a JSON object, got str"),
        (b'{"model": "m"}', "messages", "messages: required"),
        (b'{"messages": "Hi"}', "messages", "messages: must be a list"),
        (b'{"messages": []}', "messages", "at least one message"),
        (b'{"messages": [{"content": "Hi"}]}', "messages[0].role", "missing 'role'"),
        (b'{"messages": [{"role": "robot", "content": "Hi"}]}', "messages[0].role", "robot"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", "content"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "model": 5}', "model", "string"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "stream": "yes"}', "stream", "True"),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}',
            "temperature",
            "must be int or float",
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": true}',
            "max_tokens",
            "bool",
        ),
    ],
)
@pytest.mark.parametrize("stream_header", [False, True])
async def test_malformed_bodies_get_a_clear_400(
    body: bytes, param: str | None, fragment: str, stream_header: bool
) -> None:
    headers = {"Accept": "text/event-stream"} if stream_header else {}
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream, gateway(upstream) as url:
        status, _, raw = await post(url, body, headers=headers)
    assert status == 400
    assert b"Traceback" not in raw
    error = error_of(raw)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]
    assert upstream.requests == []  # nothing was sent upstream


async def test_body_over_the_limit_is_413() -> None:
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, max_body_size=4096) as url,
    ):
        status, _, raw = await post(url, big)
        small_status, _, _ = await post(url, MESSAGES and {"messages": MESSAGES})
    assert status == 413
    error = error_of(raw)
    assert error["code"] == "request_too_large"
    assert error["message"] == "the request body is larger than the limit of 4096 bytes"
    assert small_status == 200
    assert len(upstream.requests) == 1


async def test_unknown_paths_and_methods_get_json_errors() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/v1/nothing") as missing:
            missing_raw = await missing.read()
        async with session.get(url + CHAT) as wrong:
            wrong_raw = await wrong.read()
            allow = wrong.headers["Allow"]
    assert missing.status == 404
    assert error_of(missing_raw)["message"] == "no such endpoint: /v1/nothing"
    assert wrong.status == 405
    assert allow == "POST"
    assert error_of(wrong_raw)["message"] == (
        "GET is not allowed on /v1/chat/completions; use POST"
    )


class _BrokenProvider:
    """A third-party provider with a bug: the gateway must not show its traceback."""

    name = "Broken"

    async def stream(self, request: Any, http: Any) -> Any:
        raise RuntimeError("internal detail that must stay in the log")
        yield  # pragma: no cover - makes this an async generator


@pytest.mark.parametrize("stream", [True, False])
async def test_unexpected_errors_are_500_without_details(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        chatkit.AsyncClient(provider=_BrokenProvider(), max_retries=0) as client,
        running(create_app(client)) as url,
    ):
        status, _, raw = await post(url, {"messages": MESSAGES, "stream": stream})
    assert status == 500
    error = error_of(raw)
    assert error["code"] == "internal_error"
    assert b"internal detail" not in raw and b"Traceback" not in raw
    assert "internal detail that must stay in the log" in caplog.text


# -- gateway auth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Bearer gateway-secret-x", "Basic gateway-secret"],
)
async def test_gateway_key_is_required(authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key="gateway-secret") as url,
    ):
        status, response_headers, raw = await post(url, {"messages": MESSAGES}, headers=headers)
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(url + "/v1/models") as models:
                models_status = models.status
            async with session.get(url + "/health") as health:
                health_status = health.status
    assert status == 401
    assert response_headers["WWW-Authenticate"] == "Bearer"
    error = error_of(raw)
    assert error["code"] == "invalid_api_key"
    assert "gateway-secret" not in error["message"]
    assert models_status == 401
    assert health_status == 200  # health checks need no key
    assert upstream.requests == []


async def test_gateway_key_lets_the_request_through() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key="gateway-secret") as url,
    ):
        for scheme in ("Bearer", "bearer"):
            headers = {"Authorization": f"{scheme} gateway-secret"}
            status, _, _ = await post(url, {"messages": MESSAGES}, headers=headers)
            assert status == 200
    # The gateway's key is not forwarded upstream; the upstream key is.
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_upstream_key_never_appears_in_responses_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[bytes] = []
    async with (
        FakeOpenAIServer(Behavior(text="hello"), api_key="sk-other") as rejecting,
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
    ):
        upstream.script(
            Behavior(),
            Behavior(status=500),
            Behavior(status=429, retry_after=1),
            Behavior(error_event_after=1),
        )
        async with gateway(upstream) as url:
            for stream in (True, False, True, True):
                status, headers, raw = await post(url, {"messages": MESSAGES, "stream": stream})
                seen.append(json.dumps(headers).encode() + raw)
            async with (
                aiohttp.ClientSession() as session,
                session.get(url + "/v1/models") as models,
            ):
                seen.append(await models.read())
        async with gateway(rejecting) as url:  # UPSTREAM_KEY is the wrong key there
            for stream in (True, False):
                status, headers, raw = await post(url, {"messages": MESSAGES, "stream": stream})
                assert status == 401
                seen.append(json.dumps(headers).encode() + raw)
    assert len(seen) == 7
    for answer in seen:
        assert UPSTREAM_KEY.encode() not in answer
        assert UPSTREAM_KEY[-8:].encode() not in answer
    assert caplog.records  # the failures were logged...
    assert UPSTREAM_KEY not in caplog.text  # ...without the key
    assert UPSTREAM_KEY[-8:] not in caplog.text


# -- models and health -------------------------------------------------------------------


async def test_models_come_from_the_provider() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY, models=["m-1", "m-2"]) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/v1/models") as response,
    ):
        body = await response.json()
    assert response.status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["m-1", "m-2"]
    assert all(m["object"] == "model" for m in body["data"])


async def models_of(client: chatkit.AsyncClient, **options: Any) -> tuple[int, Any]:
    async with (
        running(create_app(client, **options)) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/v1/models") as response,
    ):
        return response.status, await response.json()


async def test_models_without_a_list_endpoint_degrade_to_the_default_model() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        provider = chatkit.RetryProvider([OpenAI(base_url=upstream.base_url, api_key="k")])
        async with chatkit.AsyncClient(provider=provider) as client:
            no_default = await models_of(client)
            with_default = await models_of(client, default_model="openai:gpt-4o-mini")
        # A server without /v1/models (404): the provider's own default model.
        no_route = OpenAI(base_url=upstream.url + "/elsewhere/v1", api_key=UPSTREAM_KEY)
        async with chatkit.AsyncClient(provider=no_route) as client:
            from_provider = await models_of(client)
    assert no_default == (200, {"object": "list", "data": []})
    assert with_default[0] == 200
    assert [m["id"] for m in with_default[1]["data"]] == ["openai:gpt-4o-mini"]
    assert [m["id"] for m in from_provider[1]["data"]] == ["gpt-4o-mini"]


async def test_models_errors_other_than_no_endpoint_are_reported() -> None:
    async with (
        FakeOpenAIServer(api_key="sk-other") as upstream,
        upstream_client(upstream) as client,
    ):
        status, body = await models_of(client)
    assert status == 401
    assert body["error"]["code"] == "upstream_authentication_failed"


async def test_health() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/health") as response,
    ):
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    assert upstream.requests == []  # it does not probe the upstream


# -- the factory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"api_key": ""}, "api_key"),
        ({"api_key": 5}, "api_key"),
        ({"max_body_size": 0}, "max_body_size"),
        ({"max_body_size": True}, "max_body_size"),
        ({"max_body_size": "1MB"}, "max_body_size"),
    ],
)
def test_create_app_validates_its_options(options: dict[str, Any], field: str) -> None:
    client = chatkit.AsyncClient(provider=OpenAI(base_url="http://127.0.0.1:1/v1"))
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        create_app(client, **options)
    assert caught.value.field == field


def test_create_app_defaults() -> None:
    client = chatkit.AsyncClient(provider=OpenAI(base_url="http://127.0.0.1:1/v1"))
    app = create_app(client)
    assert app._client_max_size == DEFAULT_MAX_BODY_SIZE
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert ("POST", "/v1/chat/completions") in routes
    assert ("GET", "/v1/models") in routes
    assert ("GET", "/health") in routes
    assert ("GET", "/") in routes  # the chat page


async def test_close_client_closes_it_with_the_app() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        kept = upstream_client(upstream)
        closed = upstream_client(upstream)
        for client, close in ((kept, False), (closed, True)):
            async with running(create_app(client, close_client=close)) as url:
                status, _, _ = await post(url, {"messages": MESSAGES})
                assert status == 200
        assert not kept.is_closed
        assert closed.is_closed
        await kept.aclose()


async def test_serve_reports_a_port_in_use() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        upstream_client(upstream) as client,
    ):
        with pytest.raises(OSError):
            async with running(create_app(client), port=upstream.port):
                pass  # pragma: no cover - never reached


async def test_serve_on_an_ipv6_loopback_gives_a_bracketed_url() -> None:
    try:
        async with running(web.Application(), host="::1") as url:
            assert url.startswith("http://[::1]:")
    except OSError:  # pragma: no cover - a machine without IPv6
        pytest.skip("no IPv6 loopback here")
