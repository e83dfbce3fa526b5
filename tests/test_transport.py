"""The aiohttp transport: timeouts, connection failures, error translation, sessions.

Everything runs against real servers on 127.0.0.1: the fake OpenAI server,
raw asyncio servers that misbehave on purpose, and pproxy for SOCKS.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aiohttp_socks
import anyio
import pytest
import python_socks
import yarl
from transport_probe import open_connections, session_count

import chatkit
from chatkit import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ProxyError,
    ResponseDecodeError,
    StreamInterrupted,
    Timeout,
)
from chatkit._proxy import ProxySettings, ProxyURL
from chatkit._sockets import close_sockets, connections
from chatkit._transport import (
    HTTPCall,
    RedactedCause,
    Transport,
    _socks_connector,
)
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer, start_pproxy

HELLO = [{"role": "user", "content": "Hello"}]
BODY = {"model": "m", "messages": HELLO, "stream": True}
API_KEY = "sk-transport-0123456789"
# Bounds how long a test may hang if a timeout were not enforced; far above
# the timeouts under test, so it never decides a passing run.
GUARD = 20.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare TCP server on 127.0.0.1 running ``handler`` per connection."""
    tasks: set[asyncio.Task[Any]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def answer(raw: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()

    return handler


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()  # accept, then never say anything


async def read_stream(http: HTTPCall, url: str) -> bytes:
    http.start()
    received = b""
    async with http.open("POST", url, provider="P", json_body=BODY) as response:
        async for data in response.iter_bytes():
            received += data
    return received


# -- timeouts ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stall_mid_stream_ends_with_read_timeout() -> None:
    async with FakeOpenAIServer(Behavior(stall_after=2)) as server, Transport() as transport:
        http = transport.call(timeout=Timeout(read=0.3, total=None))
        url = f"{server.base_url}/chat/completions"
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError) as caught:
            await read_stream(http, url)
    assert isinstance(caught.value, TimeoutError)
    assert "reading the response" in str(caught.value)


@pytest.mark.anyio
async def test_a_trickle_of_comments_ends_at_the_total_timeout() -> None:
    # Comments arrive every 50 ms, so the read timeout never fires: only the
    # call's total deadline can end this stream.
    async with FakeOpenAIServer(Behavior(trickle=0.05)) as server, Transport() as transport:
        http = transport.call(timeout=Timeout(read=GUARD, total=0.5))
        url = f"{server.base_url}/chat/completions"
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError):
            await read_stream(http, url)
        assert server.requests  # it did connect; the stream was cut mid-way


@pytest.fixture
def threaded_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=API_KEY).run_in_thread() as running:
        yield running


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stream_text(mode: str, provider: OpenAI, **client: Any) -> str:
    """Stream one answer through the async or the sync client."""
    if mode == "async":

        async def run() -> str:
            async with chatkit.AsyncClient(provider=provider, **client) as made:
                stream = made.chat.completions.create(messages=HELLO, stream=True)
                return "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )

        return asyncio.run(run())
    with chatkit.Client(provider=provider, **client) as made:
        stream = made.chat.completions.create(messages=HELLO, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_client_stall_after_content_is_interrupted_by_a_read_timeout(
    mode: str, threaded_server: FakeOpenAIServer
) -> None:
    threaded_server.default = Behavior(stall_after=2)
    provider = OpenAI(base_url=threaded_server.base_url, api_key=API_KEY)
    with pytest.raises(StreamInterrupted) as caught:
        stream_text(mode, provider, timeout=Timeout(read=0.3), max_retries=0)
    assert isinstance(caught.value.__cause__, APITimeoutError)
    assert caught.value.partial_text == "Hello! How"


def test_client_stall_before_content_is_a_read_timeout(
    mode: str, threaded_server: FakeOpenAIServer
) -> None:
    threaded_server.default = Behavior(stall_after=0)
    provider = OpenAI(base_url=threaded_server.base_url, api_key=API_KEY)
    with pytest.raises(APITimeoutError):
        stream_text(mode, provider, timeout=Timeout(read=0.3), max_retries=0)


def test_client_trickle_ends_at_total(mode: str, threaded_server: FakeOpenAIServer) -> None:
    threaded_server.default = Behavior(trickle=0.05)
    provider = OpenAI(base_url=threaded_server.base_url, api_key=API_KEY)
    with pytest.raises(APITimeoutError):
        stream_text(mode, provider, timeout=Timeout(read=GUARD, total=0.5), max_retries=3)


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_waiting_for_headers() -> None:
    async with raw_server(silent) as port, Transport() as transport:
        http = transport.call(timeout=Timeout(read=0.3, total=None))
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError, match="waiting for headers"):
            await read_stream(http, f"http://127.0.0.1:{port}/v1/chat/completions")


# -- connection failures --------------------------------------------------------


@pytest.mark.anyio
async def test_connection_refused_is_an_api_connection_error() -> None:
    async with Transport() as transport:
        http = transport.call()
        with pytest.raises(APIConnectionError, match="cannot connect") as caught:
            await read_stream(http, f"http://127.0.0.1:{_free_port()}/v1/chat/completions")
    error = caught.value
    assert not isinstance(error, ProxyError | APITimeoutError)
    assert isinstance(error.__cause__, aiohttp.ClientConnectorError)


def test_connection_refused_through_the_clients(mode: str) -> None:
    provider = OpenAI(base_url=f"http://127.0.0.1:{_free_port()}/v1", api_key=API_KEY)
    with pytest.raises(APIConnectionError) as caught:
        stream_text(mode, provider, max_retries=0)
    assert not isinstance(caught.value, ProxyError)


@pytest.mark.anyio
async def test_a_reset_before_the_response_is_a_connection_error() -> None:
    async with FakeOpenAIServer(Behavior(reset=True)) as server, Transport() as transport:
        with pytest.raises(APIConnectionError):
            await read_stream(transport.call(), f"{server.base_url}/chat/completions")


@pytest.mark.anyio
async def test_a_truncated_body_is_a_connection_error_while_reading() -> None:
    async with FakeOpenAIServer(Behavior(drop_after=1)) as server, Transport() as transport:
        http = transport.call()
        body = {**BODY, "stream": False}
        url = f"{server.base_url}/chat/completions"
        with pytest.raises(APIConnectionError, match="while reading"):
            async with http.open("POST", url, provider="P", json_body=body) as response:
                await response.read()


@pytest.mark.anyio
async def test_an_error_status_whose_body_breaks_off_keeps_the_status() -> None:
    raw = b'HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n{"error"'
    async with raw_server(answer(raw)) as port, Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await read_stream(transport.call(), f"http://127.0.0.1:{port}/v1/x")
    assert caught.value.status_code == 500


@pytest.mark.anyio
async def test_an_error_status_whose_body_stalls_keeps_the_status() -> None:
    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\n"
        await answer(head + b'{"error": {"message": "try later"')(reader, writer)
        await asyncio.Event().wait()

    async with raw_server(stalling) as port, Transport() as transport:
        http = transport.call(timeout=Timeout(read=0.3, total=None))
        with anyio.fail_after(GUARD), pytest.raises(APIStatusError) as caught:
            await read_stream(http, f"http://127.0.0.1:{port}/v1/x")
    assert caught.value.status_code == 503


@pytest.mark.anyio
async def test_an_error_body_is_read_whole_even_in_pieces() -> None:
    message = "x" * 200_000  # many TCP reads

    async def slow_error(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        head = f"HTTP/1.1 400 Bad\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        await answer(head)(reader, writer)
        for start in range(0, len(body), 4096):
            writer.write(body[start : start + 4096].encode())
            await writer.drain()

    async with raw_server(slow_error) as port, Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await read_stream(transport.call(), f"http://127.0.0.1:{port}/v1/x")
    assert caught.value.status_code == 400
    assert message in str(caught.value.body)


@pytest.mark.anyio
async def test_a_407_without_a_proxy_stays_a_status_error() -> None:
    raw = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\n{}"
    async with raw_server(answer(raw)) as port, Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await read_stream(transport.call(), f"http://127.0.0.1:{port}/v1/x")
    assert caught.value.status_code == 407
    assert not isinstance(caught.value, ProxyError)


@pytest.mark.anyio
async def test_a_socks_proxy_that_never_answers_is_a_connect_timeout() -> None:
    async with raw_server(silent) as port, Transport() as transport:
        proxy = ProxySettings.create(proxy=f"socks5://alice:hunter22@127.0.0.1:{port}")
        http = transport.call(timeout=Timeout(connect=0.3, total=None), proxy=proxy)
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError) as caught:
            await read_stream(http, "http://127.0.0.1:9/v1/chat/completions")
    assert f"through proxy socks5://127.0.0.1:{port}" in str(caught.value)
    assert "hunter22" not in str(caught.value)


@pytest.mark.anyio
async def test_a_socks_proxy_that_cannot_reach_the_target_is_a_proxy_error() -> None:
    # pproxy reports a failed upstream connect by closing, a real SOCKS server
    # answers "connection refused" (reply code 5): emulate the latter.
    async def refusing_socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = await reader.readexactly(2)
        await reader.readexactly(greeting[1])
        writer.write(b"\x05\x00")  # no authentication
        await reader.readexactly(4)  # VER CMD RSV ATYP(1: IPv4)
        await reader.readexactly(6)
        writer.write(b"\x05\x05\x00\x01" + bytes(6))
        await writer.drain()

    async with raw_server(refusing_socks5) as port, Transport() as transport:
        http = transport.call(proxy=ProxySettings.create(proxy=f"socks5://127.0.0.1:{port}"))
        with pytest.raises(ProxyError, match="refused"):
            await read_stream(http, "http://127.0.0.1:9/v1/chat/completions")


# -- error translation and secrets ----------------------------------------------


@pytest.mark.anyio
async def test_translate_replaces_a_cause_that_holds_a_secret() -> None:
    async with Transport() as transport:
        http = transport.call(headers={"Authorization": f"Bearer {API_KEY}"})
        leaky = aiohttp.ClientConnectionError(f"failed with Bearer {API_KEY}")
        error = http.translate(leaky, "P")
    assert isinstance(error, APIConnectionError)
    assert API_KEY not in str(error)
    assert isinstance(error.__cause__, RedactedCause)
    assert API_KEY not in repr(error.__cause__)
    assert "ClientConnectionError" in str(error.__cause__)
    assert error.__suppress_context__


@pytest.mark.anyio
async def test_translate_keeps_a_harmless_cause_and_passes_foreign_errors() -> None:
    async with Transport() as transport:
        http = transport.call(headers={"Authorization": f"Bearer {API_KEY}"})
        harmless = aiohttp.ClientConnectionError("connection reset")
        assert http.translate(harmless, "P").__cause__ is harmless
        cancelled = asyncio.CancelledError()
        assert http.translate(cancelled, "P") is cancelled
        bug = ValueError("not ours to translate")
        assert http.translate(bug, "P") is bug


@pytest.mark.anyio
async def test_the_call_proxy_password_is_scrubbed_too() -> None:
    call_proxy = ProxySettings.create(proxy="http://alice:call-secret-1@127.0.0.1:1")
    async with Transport() as transport:
        http = transport.call(proxy=call_proxy)
        error = http.translate(OSError("call-secret-1 showed up"), "P")
    assert "call-secret-1" not in str(error) + repr(error.__cause__)


# -- sessions --------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_session_per_socks_proxy_and_the_count_is_capped() -> None:
    async with Transport() as transport:
        first = ProxyURL.parse("socks5://127.0.0.1:1000", "proxy")
        assert transport._session(first) is transport._session(first)
        assert transport._session(None) is transport._session(None)
        http_proxy = ProxyURL.parse("http://127.0.0.1:3128", "proxy")
        assert transport._session(http_proxy) is transport._session(None)
        for port in range(1001, 1041):
            transport._session(ProxyURL.parse(f"socks5://127.0.0.1:{port}", "proxy"))
        # 16 SOCKS sessions at most, plus the direct / HTTP-proxy one.
        assert session_count(transport) == 17
    assert session_count(transport) == 0


@pytest.mark.anyio
async def test_a_closed_transport_refuses_new_requests() -> None:
    transport = Transport()
    await transport.aclose()
    # Not a connection failure (which the retry layer would retry with backoff).
    with pytest.raises(chatkit.ClientClosedError, match="closed") as caught:
        await read_stream(transport.call(), "http://127.0.0.1:9/v1/x")
    assert not isinstance(caught.value, APIConnectionError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scheme", "kind", "rdns", "password"),
    [
        ("socks4", "SOCKS4", False, None),
        ("socks4a", "SOCKS4", True, None),
        ("socks5", "SOCKS5", False, "pw"),
        ("socks5h", "SOCKS5", True, "pw"),
    ],
)
async def test_socks_connectors_follow_the_scheme(
    scheme: str, kind: str, rdns: bool, password: str | None
) -> None:
    options = ProxyURL.parse(f"{scheme}://alice:pw@127.0.0.1:1080", "proxy").socks_options()
    connector = _socks_connector(options, limit=8)
    try:
        # aiohttp-socks keeps these as private attributes; they are what it
        # hands to python-socks for each connection.
        assert connector._proxy_type.name == kind  # type: ignore[attr-defined]
        assert connector._rdns is rdns  # type: ignore[attr-defined]
        assert connector._proxy_username == "alice"  # type: ignore[attr-defined]
        assert connector._proxy_password == password  # type: ignore[attr-defined]
        assert connector.limit == 8
    finally:
        await connector.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("proxy", "error", "reading", "expected"),
    [
        ("socks5://127.0.0.1:1", aiohttp_socks.ProxyTimeoutError("slow"), False, APITimeoutError),
        ("socks5://127.0.0.1:1", python_socks.ProxyError("refused", 5), False, ProxyError),
        ("socks5://127.0.0.1:1", asyncio.IncompleteReadError(b"", 2), True, APIConnectionError),
        ("http://127.0.0.1:1", aiohttp.ServerDisconnectedError(), False, APIConnectionError),
    ],
)
async def test_translate_blames_the_proxy_only_for_its_own_failures(
    proxy: str, error: BaseException, reading: bool, expected: type[BaseException]
) -> None:
    async with Transport() as transport:
        http = transport.call(headers={"x-api-key": "short"})
        translated = http.translate(
            error, "P", reading=reading, proxy=ProxyURL.parse(proxy, "proxy")
        )
    assert type(translated) is expected
    assert translated.__cause__ is error


@pytest.mark.anyio
async def test_a_busy_socks_session_survives_the_cap() -> None:
    release = asyncio.Event()

    async def two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The second half waits for the test: the connection stays in use.
        await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")(reader, writer)
        await release.wait()
        writer.write(b"-last")
        await writer.drain()

    with start_pproxy("socks5") as proxy:
        async with raw_server(two_parts) as port, Transport() as transport:
            http = transport.call(proxy=ProxySettings.create(proxy=proxy.url))
            url = f"http://127.0.0.1:{port}/v1/x"
            received = b""
            async with http.open("POST", url, provider="P", json_body=BODY) as response:
                async for data in response.iter_bytes():
                    received += data
                    if not release.is_set():
                        for other in range(2000, 2020):
                            url_ = f"socks5://127.0.0.1:{other}"
                            transport._session(ProxyURL.parse(url_, "p"))
                        # 16 idle SOCKS sessions at most, plus the busy one.
                        assert session_count(transport) == 17
                        release.set()
            assert received == b"first-last"
        assert proxy.wait_for_connections(port=port)


# -- bodies, loops and bookkeeping ------------------------------------------------


@pytest.mark.anyio
async def test_json_bodies_and_bodies_that_are_not_json() -> None:
    good = b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnot js!"
    async with Transport() as transport:
        for raw, expected in ((good, {"a": 1}), (bad, None)):
            async with raw_server(answer(raw)) as port:
                url = f"http://127.0.0.1:{port}/v1/models"
                async with transport.call().open("GET", url, provider="P") as response:
                    if expected is not None:
                        assert await response.json() == expected
                    else:
                        with pytest.raises(ResponseDecodeError, match="not JSON"):
                            await response.json()


@pytest.mark.anyio
async def test_a_cancelled_read_is_not_translated() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"

    async def headers_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(head)(reader, writer)
        await asyncio.Event().wait()

    async with raw_server(headers_only) as port, Transport() as transport:
        url = f"http://127.0.0.1:{port}/v1/x"
        async with transport.call().open("GET", url, provider="P") as response:
            with anyio.move_on_after(0.2) as scope:
                await response.read()
            assert scope.cancelled_caught


@pytest.mark.anyio
async def test_an_error_body_is_capped() -> None:
    body = b"x" * (1024 * 1024 + 4096)
    head = f"HTTP/1.1 500 Oops\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    async with raw_server(answer(head + body)) as port, Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await read_stream(transport.call(), f"http://127.0.0.1:{port}/v1/x")
    assert caught.value.status_code == 500


def test_a_transport_outlives_the_event_loops_that_used_it() -> None:
    # asyncio.run twice with one client: the first loop's sessions are
    # dropped, not reused on (or closed from) the second loop.
    transport = Transport(ProxySettings.create(proxy="socks5://alice:sesame-pw@127.0.0.1:1"))
    assert "sesame-pw" not in repr(transport)

    async def use() -> int:
        transport._session(None)
        return session_count(transport)

    assert asyncio.run(use()) == 1
    assert open_connections(transport) == 0
    assert asyncio.run(use()) == 1  # a fresh session on the new loop

    async def close_elsewhere() -> None:
        await transport.aclose()

    asyncio.run(close_elsewhere())
    assert session_count(transport) == 0 and transport.closed

    other = Transport()
    asyncio.run(use_transport(other))
    asyncio.run(other.aclose())  # the first loop is gone: detach, do not await
    assert session_count(other) == 0


async def use_transport(transport: Transport) -> None:
    transport._session(None)


def test_sockets_of_a_dead_loop_are_closed_and_the_session_detached() -> None:
    # A connection left idle in the pool when asyncio.run returned: the next
    # loop's first request must close its socket (the server sees EOF), and
    # nothing may warn about an unclosed connector or transport.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        transport = Transport()

        async def connect() -> aiohttp.ClientSession:
            session = transport._session(None)
            assert session.connector is not None
            conn = await session.connector.connect(
                aiohttp.ClientRequest("GET", yarl.URL(f"http://127.0.0.1:{port}/")),
                [],
                aiohttp.ClientTimeout(total=5),
            )
            conn.release()  # back to the pool, idle
            return session

        session = asyncio.run(connect())
        accepted, _ = listener.accept()
        with accepted:
            assert open_connections(transport) == 1
            asyncio.run(use_transport(transport))  # forgets the dead loop's sessions
            assert session.closed and session.connector is None
            accepted.settimeout(5)
            assert accepted.recv(1) == b""  # the client's socket is closed
        asyncio.run(transport.aclose())


def test_a_session_of_an_idle_loop_is_closed_when_that_loop_runs_again() -> None:
    # A run_until_complete user: the loop is open but not running when the
    # transport is closed from another loop. Nothing may warn (no coroutine
    # left never awaited); the session closes on the loop's next run.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        transport = Transport()
        idle = asyncio.new_event_loop()
        try:

            async def connect() -> aiohttp.ClientSession:
                session = transport._session(None)
                assert session.connector is not None
                conn = await session.connector.connect(
                    aiohttp.ClientRequest("GET", yarl.URL(f"http://127.0.0.1:{port}/")),
                    [],
                    aiohttp.ClientTimeout(total=5),
                )
                conn.release()
                return session

            session = idle.run_until_complete(connect())
            accepted, _ = listener.accept()
            with accepted:
                asyncio.run(transport.aclose())  # from another loop, while `idle` idles
                assert not session.closed

                async def settle() -> None:
                    await asyncio.sleep(0)  # the scheduled callback starts the close
                    others = asyncio.all_tasks() - {asyncio.current_task()}
                    await asyncio.gather(*others)

                idle.run_until_complete(settle())
                assert session.closed
                accepted.settimeout(5)
                assert accepted.recv(1) == b""
        finally:
            idle.close()


def test_aiohttp_internals_that_are_gone_fail_loudly() -> None:
    with pytest.raises(RuntimeError, match=r"BaseConnector.*_conns.*report"):
        connections(object())  # type: ignore[arg-type]

    class Proto:
        transport = object()  # neither a socket transport nor a TLS one

    class Connector:
        def __init__(self) -> None:
            self._conns = {("127.0.0.1", 1): [(Proto(), 0.0)]}
            self._acquired: set[object] = set()

    with pytest.raises(RuntimeError, match=r"socket transport.*_sock"):
        close_sockets(Connector())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_open_connections_skips_closed_sessions() -> None:
    async with Transport() as transport:
        session = transport._session(None)
        await session.close()
        assert open_connections(transport) == 0


@pytest.mark.anyio
async def test_an_unbounded_call_has_no_deadline() -> None:
    async with Transport() as transport:
        http = transport.call(timeout=Timeout(total=None))
        http.start()
        assert http.remaining() is None and http.deadline is None


@pytest.mark.parametrize("provider_class", ["Gemini", "Anthropic", "OpenAI", "AzureOpenAI"])
@pytest.mark.anyio
async def test_a_vendor_key_header_never_reaches_the_error_chain(provider_class: str) -> None:
    """aiohttp's redirect error shows the request headers in its repr.

    Every vendor's key header must be scrubbed from what the caller sees.
    """
    import traceback

    from aiohttp import web

    import chatkit.providers as providers

    key = "AIza-secret-key-0123456789"

    async def redirect_forever(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.url))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect_forever)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        kind = getattr(providers, provider_class)
        extra = {"api_version": "2024-10-21"} if provider_class == "AzureOpenAI" else {}
        provider = kind(base_url=base_url, api_key=key, **extra)
        async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
            with pytest.raises(chatkit.APIConnectionError) as caught:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
    finally:
        await runner.cleanup()
    chain = "".join(traceback.format_exception(caught.value))
    chain += repr(caught.value.__cause__) + str(caught.value.__cause__)
    assert "redirects" in chain  # the failure is still described
    assert key not in chain
