"""Issue 11, the gateway: wire shape, request screening, timeouts, logs, bad input.

Every test runs real servers on loopback ports: a FakeOpenAIServer upstream
and the gateway (``create_app`` + ``serve``), or ``chatkit serve`` itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import anyio
import openai
import pytest
from aiohttp import web
from server_support import MESSAGES, UPSTREAM_KEY, gateway, running, upstream_client
from test_server_cli import Served, chatkit_serve, environment

from chatkit.server import SHUTDOWN_TIMEOUT, create_app, serve
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

# Typed loosely: the openai package wants its own TypedDicts.
OPENAI_MESSAGES: list[Any] = list(MESSAGES)

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALLS = [
    {"id": "call_1", "name": "get_weather", "arguments": json.dumps({"city": "Paris, France"})},
    {"id": "call_2", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})},
]


# -- item 2: the chunks' shape is OpenAI's ------------------------------------------


async def test_openai_stream_helper_async_with_tool_calls() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="", tool_calls=CALLS), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client,
        client.chat.completions.stream(
            model="gpt-x", messages=OPENAI_MESSAGES, tools=TOOLS
        ) as stream,
    ):
        async for _event in stream:
            pass
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.type, c.function.name) for c in calls] == [
        ("call_1", "function", "get_weather"),
        ("call_2", "function", "get_weather"),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris, France"},
        {"city": "Oslo"},
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_stream_helper_sync_text_and_tool_calls() -> None:
    behaviors = [Behavior(text="Paris it is."), Behavior(text="", tool_calls=CALLS[:1])]
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream, gateway(upstream) as url:
        upstream.script(*behaviors)

        def use() -> list[Any]:
            finals = []
            with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
                for _ in behaviors:
                    with client.chat.completions.stream(
                        model="gpt-x", messages=OPENAI_MESSAGES, tools=TOOLS
                    ) as stream:
                        for _event in stream:
                            pass
                        finals.append(stream.get_final_completion())
            return finals

        text, tool = await anyio.to_thread.run_sync(use)
    assert text.choices[0].message.content == "Paris it is."
    assert text.choices[0].message.tool_calls is None
    call = (tool.choices[0].message.tool_calls or [])[0]
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")


def _nulls(value: Any, path: str = "") -> list[str]:
    """Paths of every null inside a JSON value."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


async def test_streamed_and_whole_answers_carry_no_unset_nulls() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="", tool_calls=CALLS), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "m", "messages": MESSAGES, "tools": TOOLS}
        async with session.post(url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            raw = (await r.read()).decode()
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            whole = await r.json()
    chunks = [
        json.loads(line[6:])
        for line in raw.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    # OpenAI sends null only for a choice's finish_reason/logprobs (and content
    # next to tool calls); never for a tool call's id, type or name.
    allowed = {".finish_reason", ".logprobs", ".delta.content"}
    for chunk in chunks:
        for choice in chunk["choices"]:
            assert {p for p in _nulls(choice)} <= allowed, choice
        assert _nulls({k: v for k, v in chunk.items() if k != "choices"}) == []
    message = whole["choices"][0]["message"]
    assert message["content"] is None
    assert {p for p in _nulls(whole["choices"][0])} <= {".logprobs", ".message.content"}
    assert all(None not in call.values() for call in message["tool_calls"])


# -- item 11: other web pages cannot drive the gateway ------------------------------

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": MESSAGES}).encode()
JSON = {"Content-Type": "application/json"}


async def _post(url: str, headers: dict[str, str], data: bytes = BODY) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + CHAT, data=data, headers=headers) as response,
    ):
        return response.status, response.headers, await response.json()


async def test_foreign_host_is_refused_loopback_and_configured_hosts_are_served() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        async with gateway(upstream) as url:
            port = url.rsplit(":", 1)[1]
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::1"):
                status, _, body = await _post(url, {**JSON, "Host": host})
                assert (status, body["error"]["code"]) == (403, "host_not_allowed"), host
            for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:80"):
                status, _, _ = await _post(url, {**JSON, "Host": host})
                assert status == 200, host
        async with gateway(upstream, allowed_hosts=["chat.internal"]) as url:
            status, _, _ = await _post(url, {**JSON, "Host": "Chat.Internal:8000"})
            assert status == 200
            status, _, _ = await _post(url, {**JSON, "Host": "other.internal"})
            assert status == 403
        async with gateway(upstream, allowed_hosts=["*"]) as url:
            status, _, _ = await _post(url, {**JSON, "Host": "anything.example"})
            assert status == 200
    # Refused before any upstream request.
    assert len(upstream.requests) == 4 + 1 + 1


async def test_cross_site_requests_and_non_json_bodies_are_refused() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream, gateway(upstream) as url:
        refused = [
            ({**JSON, "Origin": "https://evil.example"}, 403),
            ({**JSON, "Origin": "null"}, 403),
            ({**JSON, "Origin": "http://localhost:1"}, 403),  # another port: another origin
            ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
            ({}, 415),
        ]
        for headers, expected in refused:
            status, response_headers, body = await _post(url, headers)
            assert status == expected, headers
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert "Access-Control-Allow-Origin" not in response_headers
        # The page's own requests: same origin, JSON.
        same = {**JSON, "Origin": url, "Sec-Fetch-Site": "same-origin"}
        status, _, _ = await _post(url, same)
        assert status == 200
        status, _, _ = await _post(url, {"Content-Type": "application/json; charset=utf-8"})
        assert status == 200
        # Following a link to the page from another site still shows it.
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url + "/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
            ) as page,
        ):
            assert page.status == 200
    assert len(upstream.requests) == 2


async def test_configured_cors_origin_gets_preflight_and_cors_headers() -> None:
    origin = "http://app.example:3000"
    async with (
        FakeOpenAIServer(Behavior(text="hi there"), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, cors_origins=[origin], api_key="gw-key") as url,
        aiohttp.ClientSession() as session,
    ):
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            "Sec-Fetch-Site": "cross-site",
        }
        async with session.options(url + CHAT, headers=preflight) as answer:
            assert answer.status == 204
            assert answer.headers["Access-Control-Allow-Origin"] == origin
            assert "POST" in answer.headers["Access-Control-Allow-Methods"]
            assert answer.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        async with session.options(
            url + CHAT, headers={**preflight, "Origin": "http://x.example"}
        ) as no:
            assert no.status == 403
        headers = {**JSON, "Origin": origin, "Sec-Fetch-Site": "cross-site"}
        status, response_headers, _ = await _post(
            url, {**headers, "Authorization": "Bearer gw-key"}
        )
        assert status == 200
        assert response_headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response_headers.getall("Vary")
        # Errors are readable by the allowed page too, and streams carry the headers.
        status, response_headers, _ = await _post(url, headers)
        assert status == 401
        assert response_headers["Access-Control-Allow-Origin"] == origin
        streamed = json.dumps({"messages": MESSAGES, "stream": True}).encode()
        async with session.post(
            url + CHAT, data=streamed, headers={**headers, "Authorization": "Bearer gw-key"}
        ) as response:
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert b"hi" in await response.read()


async def test_guard_settings_are_checked() -> None:
    import chatkit
    from chatkit.server import create_app

    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        client = chatkit.AsyncClient(base_url=upstream.base_url, api_key=UPSTREAM_KEY)
        bad: list[dict[str, Any]] = [
            {"allowed_hosts": "localhost"},
            {"allowed_hosts": ["a b"]},
            {"allowed_hosts": ["host:port"]},
            {"cors_origins": ["app.example"]},
            {"cors_origins": ["http://app.example/path"]},
            {"cors_origins": [3]},
            {"header_timeout": 0},
            {"body_timeout": float("nan")},
        ]
        for options in bad:
            with pytest.raises(chatkit.InvalidRequestError) as caught:
                create_app(client, **options)
            assert caught.value.field == next(iter(options))
        await client.aclose()


# -- item 13: request-derived text is escaped in the log ----------------------------


async def test_control_characters_in_the_path_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as session,
    ):
        forged = "/x%0A2026-01-01 INFO chatkit.server: forged%0D%1B[31m"
        async with session.get(url + forged) as response:
            assert response.status == 404
            message = (await response.json())["error"]["message"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("forged" in line for line in lines)
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text and "\x1b" not in text, text
    assert any(r.name == "aiohttp.access" and "/x%0A" in r.getMessage() for r in caplog.records)
    assert "\\x0a" in next(line for line in lines if "no such endpoint" in line)
    assert "\n" not in message


def test_printable_escapes_only_what_must_be() -> None:
    from chatkit.server._logging import printable

    assert printable("/v1/models?q=é") == "/v1/models?q=é"
    assert printable("a\nb\r\x1b\\\u2028\U000e0001") == "a\\x0ab\\x0d\\x1b\\\\\\u2028\\U000e0001"


# -- item 20: bad input is a 400, never a 500 ---------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_BODIES: dict[str, str | bytes] = {
    "nan": '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "infinity": '{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
    "deep": '{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + _deep(100_000) + "}",
    "huge int": '{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + "0" * 5000 + "}",
    "role list": '{"messages": [{"role": ["user"], "content": "hi"}]}',
    "role dict": '{"messages": [{"role": {"a": 1}, "content": "hi"}]}',
    "part type list": '{"messages": [{"role": "user", "content": [{"type": ["text"]}]}]}',
    "part type dict": '{"messages": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]}',
    "content number": '{"messages": [{"role": "user", "content": 3}]}',
    "messages dict": '{"messages": {"role": "user"}}',
    "message string": '{"messages": ["hi"]}',
    "model list": '{"model": ["m"], "messages": [{"role": "user", "content": "hi"}]}',
    "stream string": '{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    "temperature string": '{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    "tools string": '{"messages": [{"role": "user", "content": "hi"}], "tools": "all"}',
    "lone surrogate": '{"messages": [{"role": "user", "content": "\\ud800"}]}',
    "not utf-8": b'{"messages": [{"role": "user", "content": "\xff"}]}',
    "array": "[1, 2]",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_input_gets_an_openai_shaped_400(name: str) -> None:
    raw = BAD_BODIES[name]
    data = raw if isinstance(raw, bytes) else raw.encode()
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream, gateway(upstream) as url:
        status, _, body = await _post(url, JSON, data=data)
    assert status == 400, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == []


# -- item 12: slow clients cannot hold connections ----------------------------------


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_slow_request_heads_and_idle_connections_are_closed() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, header_timeout=0.5) as url,
    ):
        reader, writer = await _connect(url)
        started = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
        closed = False
        # A byte every 50 ms would take 50 s to send; the head timeout ends it.
        with anyio.fail_after(10):
            for byte in head:
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if reader.at_eof() or await _eof_within(reader, 0.05):
                    closed = True
                    break
        assert closed and time.monotonic() - started < 5
        writer.close()

        # A kept-alive connection that goes quiet after its answer is closed too.
        reader, writer = await _connect(url)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with anyio.fail_after(10):
            answer = await reader.readuntil(b'{"status": "ok"}')
            assert answer.startswith(b"HTTP/1.1 200")
            assert await reader.read() == b""  # closed by the server while idle
        writer.close()


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False


async def test_a_body_that_does_not_arrive_gets_408() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, body_timeout=0.3) as url,
    ):
        reader, writer = await _connect(url)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        with anyio.fail_after(10):
            status_line = await reader.readline()
            rest = await reader.readuntil(b"}}")
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert b"Connection: close" in rest and b"request_timeout" in rest
    assert upstream.requests == []


# -- chatkit serve as a process: shutdown bound, fd limit, secrets in --debug logs ----

LAUNCH_WITH_FD_LIMIT = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv.pop(1)),) * 2)
sys.argv[0] = "chatkit"
runpy.run_module("chatkit", run_name="__main__")
"""


async def test_stop_with_hanging_streams_takes_the_documented_time() -> None:
    hanging = Behavior(text="one two three", stall_after=1)
    async with FakeOpenAIServer(hanging, api_key=UPSTREAM_KEY) as upstream:
        env = environment(OPENAI_API_KEY=UPSTREAM_KEY)
        async with (
            chatkit_serve("--base-url", upstream.base_url, env=env) as served,
            aiohttp.ClientSession() as session,
        ):
            body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True}).encode()
            responses = []
            for _ in range(3):
                response = await session.post(served.url + CHAT, data=body, headers=JSON)
                assert response.status == 200
                with anyio.fail_after(10):  # under way: the first words arrived
                    while b"one" not in await response.content.readuntil(b"\n\n"):
                        pass
                responses.append(response)
            started = time.monotonic()
            code = await served.stop(signal.SIGTERM)
            took = time.monotonic() - started
            for response in responses:
                response.close()
    assert code == 0, served.log
    assert SHUTDOWN_TIMEOUT <= took < SHUTDOWN_TIMEOUT + 2, (took, served.log)
    assert "cancelling 3 answer(s)" in served.log
    assert await upstream.wait_for_disconnects(3)


async def test_at_the_fd_limit_the_gateway_stays_quiet_and_serves_again() -> None:
    async with FakeOpenAIServer(Behavior(text="still here"), api_key=UPSTREAM_KEY) as upstream:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCH_WITH_FD_LIMIT, "64", "serve", "--port", "0",
            "--base-url", upstream.base_url, "--header-timeout", "1",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=environment(OPENAI_API_KEY=UPSTREAM_KEY),
        )  # fmt: skip
        served = Served(process)
        slow: list[asyncio.StreamWriter] = []
        try:
            await served.read_until_listening()
            # Far more slow clients than descriptors: each sends half a request head.
            for _ in range(150):
                _, writer = await _connect(served.url)
                writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
                slow.append(writer)
            with anyio.fail_after(30):
                status, _, body = await _post(served.url, JSON)
            assert status == 200
            assert body["choices"][0]["message"]["content"] == "still here"
            code = await served.stop(signal.SIGINT)
        finally:
            for writer in slow:
                writer.close()
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0, served.log
    log = served.log
    assert "Traceback" not in log
    assert log.count("cannot accept connections") == 1, log
    assert len(log) < 20_000, log


async def _echoing_upstream(request: web.Request) -> web.Response:
    # A careless vendor: the rejected key, whole, in the error body and a header.
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    body = {
        "error": {
            "message": f"Incorrect API key provided: {key}. Authorization: Bearer {key}",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return web.json_response(body, status=401, headers={"x-echo-key": key})


async def test_debug_logs_never_show_the_upstream_key() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _echoing_upstream)
    app.router.add_get("/v1/models", _echoing_upstream)
    async with running(app) as upstream_url:
        key = "sk-echoed-3b8f0c2a9d7e4f61"
        env = environment(OPENAI_API_KEY=key)
        async with chatkit_serve(
            "--base-url", upstream_url + "/v1", "--debug", "--retries", "1", env=env
        ) as served:
            for stream in (False, True):
                body = json.dumps({"model": "m", "messages": MESSAGES, "stream": stream})
                status, _, answer = await _post(served.url, JSON, data=body.encode())
                assert status == 401
                assert key not in json.dumps(answer)
            async with (
                aiohttp.ClientSession() as session,
                session.get(served.url + "/v1/models") as models,
            ):
                assert key not in await models.text()
            code = await served.stop()
    assert code == 0
    assert "DEBUG" in served.log  # --debug really logged
    assert key not in served.log, served.log
    assert key[:12] not in served.log


def test_redaction_covers_messages_arguments_and_tracebacks() -> None:
    from chatkit.server import RedactSecrets

    redact = RedactSecrets(["sk-secret-value-1", "short"])
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "key %s, headers %r", ("sk-secret-value-1", {}), None
    )
    try:
        raise ValueError("boom sk-secret-value-1 and x-api-key: other-key-123")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert redact.filter(record)
    text = logging.Formatter().format(record)
    assert "sk-secret-value-1" not in text and "other-key-123" not in text
    assert "[redacted], headers" in text and "short" not in text
    assert redact.redact("Authorization: Bearer abc.def") == "Authorization: [redacted]"


async def test_a_stop_lets_answers_that_finish_in_time_finish() -> None:
    behavior = Behavior(chunks=["a", "b", "c", "d"], delay=0.1)
    async with FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream:
        client = upstream_client(upstream)
        app = create_app(client, close_client=True)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, port=0, on_ready=ready.set_result, stop=stop))
        url = await ready
        async with aiohttp.ClientSession() as session:
            body = json.dumps({"messages": MESSAGES, "stream": True}).encode()
            async with session.post(url + CHAT, data=body, headers=JSON) as response:
                await response.content.readuntil(b"\n\n")
                stop.set()  # while the answer is still coming
                rest = await response.read()
        await server
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_guard_edge_cases() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, cors_origins=["https://app.example"]) as url,
    ):
        # An Origin that cannot be parsed is nobody's origin.
        status, _, _ = await _post(url, {**JSON, "Origin": "http://x:port"})
        assert status == 403
        # An HTTP/1.0 client without Host (not a browser) is served.
        reader, writer = await _connect(url)
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        with anyio.fail_after(10):
            assert (await reader.readline()).startswith(b"HTTP/1.0 200")
        writer.close()
        async with (
            aiohttp.ClientSession() as session,
            session.options(
                url + CHAT,
                headers={
                    "Origin": "https://app.example:443",
                    "Access-Control-Request-Method": "POST",
                },
            ) as preflight,
        ):
            assert preflight.status == 204
            assert "Access-Control-Allow-Headers" not in preflight.headers


async def test_accept_errors_are_reported_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno

    from chatkit.server._logging import ACCEPT_ERROR_LOG_INTERVAL, quiet_accept_errors

    loop = asyncio.get_running_loop()
    other: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: other.append(context))
    now = [1000.0]
    restore = quiet_accept_errors(loop, clock=lambda: now[0])
    try:
        full = OSError(errno.EMFILE, "Too many open files")
        for _ in range(50):
            loop.call_exception_handler({"message": "accept", "exception": full})
        now[0] += ACCEPT_ERROR_LOG_INTERVAL
        loop.call_exception_handler({"message": "accept", "exception": full})
        loop.call_exception_handler({"message": "something else", "exception": ValueError()})
    finally:
        restore()
        loop.set_exception_handler(None)
    reports = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(reports) == 2
    assert "49 more since the last report" in reports[1]
    assert [c["message"] for c in other] == ["something else"]


def test_redaction_covers_stack_info() -> None:
    from chatkit.server import RedactSecrets

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", None, None)
    record.stack_info = "Stack (most recent call last): key=sk-secret-value-1"
    RedactSecrets(["sk-secret-value-1"]).filter(record)
    assert record.stack_info.endswith("key=[redacted]")


# -- item 13 (review): upstream text is escaped in the log too ----------------------

FORGED = "\nFORGED 2026-01-01 INFO chatkit.server: all is well"


async def _forging_chat(request: web.Request) -> web.StreamResponse:
    """An upstream whose error messages carry a newline and a fake log line."""
    if not (await request.json()).get("stream"):
        error = {"error": {"message": "bad" + FORGED, "type": "server_error"}}
        return web.json_response(error, status=500)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
    }
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    error = {"error": {"message": "broke" + FORGED, "type": "server_error"}}
    await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    await response.write_eof()
    return response


async def _forging_models(request: web.Request) -> web.Response:
    error = {"error": {"message": "no list" + FORGED, "type": "not_found_error"}}
    return web.json_response(error, status=404)


async def test_upstream_error_messages_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import chatkit
    from chatkit.providers import OpenAI

    caplog.set_level(logging.INFO)
    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", _forging_chat)
    upstream_app.router.add_get("/v1/models", _forging_models)
    async with running(upstream_app) as upstream_url:
        provider = OpenAI(base_url=upstream_url + "/v1", api_key=UPSTREAM_KEY)
        async with (
            chatkit.AsyncClient(provider=provider, max_retries=0) as client,
            running(create_app(client)) as url,
            aiohttp.ClientSession() as session,
        ):
            for stream in (False, True):
                body = json.dumps({"model": "m", "messages": MESSAGES, "stream": stream})
                async with session.post(url + CHAT, data=body, headers=JSON) as response:
                    await response.read()
                    assert response.status == (200 if stream else 500)
            async with session.get(url + "/v1/models") as models:
                assert models.status == 200
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("chatkit")]
    # Each path really logged the upstream's text, escaped.
    for fragment in ("bad\\x0aFORGED", "broke\\x0aFORGED", "no list\\x0aFORGED"):
        assert any(fragment in line for line in logged), (fragment, logged)
    for line in "\n".join(logged).splitlines():
        assert not line.startswith("FORGED"), logged


# -- item 3 (review): Guard settings: None means none; wrong types name the field ---


def test_guard_none_means_no_extra_hosts_or_origins() -> None:
    import chatkit
    from chatkit.server._guard import LOOPBACK_NAMES, Guard

    guard = Guard.build(allowed_hosts=None, cors_origins=None)
    assert guard.hosts == LOOPBACK_NAMES and guard.origins == frozenset()
    assert guard.host_allowed("localhost:8000") and not guard.host_allowed("evil.example")
    bad: list[tuple[Any, Any, str]] = [
        (5, (), "allowed_hosts"),
        (b"localhost", (), "allowed_hosts"),
        ((), 3.5, "cors_origins"),
        ((), "http://app.example", "cors_origins"),
    ]
    for hosts, origins, field in bad:
        with pytest.raises(chatkit.InvalidRequestError) as caught:
            Guard.build(hosts, origins)
        assert caught.value.field == field
        assert field in str(caught.value)


async def test_create_app_accepts_none_for_hosts_and_origins() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, allowed_hosts=None, cors_origins=None) as url,
    ):
        status, _, _ = await _post(url, JSON)
        assert status == 200
        status, _, _ = await _post(url, {**JSON, "Host": "evil.example"})
        assert status == 403


def test_escaped_traceback_keeps_frames_and_chains_but_escapes_messages() -> None:
    from chatkit.server._logging import escaped_traceback

    try:
        try:
            raise ValueError("inner" + FORGED)
        except ValueError as inner:
            raise RuntimeError("outer" + FORGED) from inner
    except RuntimeError as exc:
        text = escaped_traceback(exc)
    assert text.count("Traceback (most recent call last):") == 2
    assert "direct cause" in text and "raise RuntimeError" in text
    assert "RuntimeError: outer\\x0aFORGED" in text and "inner\\x0aFORGED" in text
    assert not any(line.startswith("FORGED") for line in text.splitlines()), text
