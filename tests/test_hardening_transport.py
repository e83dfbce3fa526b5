"""Issue 11, transport part: secrets in error bodies, cross-origin redirects,
the connection pool (Limits, Timeout.pool), decoded body caps, malformed
responses, closed transports and sockets left on a dead loop.

Real servers on 127.0.0.1 only: aiohttp apps and raw asyncio TCP servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

import chatkit
from chatkit import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ClientClosedError,
    InternalServerError,
    InvalidRequestError,
    Limits,
    PoolTimeoutError,
    ResponseDecodeError,
    ResponseTooLargeError,
    Timeout,
)
from chatkit._transport import MAX_ERROR_BODY_SIZE, HTTPCall, Transport
from chatkit._transport import _response as transport_module  # reads MAX_BODY_SIZE
from chatkit.providers import OpenAI

KEY = "sk-hardening-secret-0123456789"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WHOLE = b"data: first\n\ndata: last\n\n"  # a HoldingServer stream, read to its end
GUARD = 20.0  # bounds a hang if a limit were not enforced; never decides a passing run

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def app_server(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 answering every path with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[int]:
    """A TCP server that reads the request head and writes ``reply`` verbatim."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def post(http: HTTPCall, url: str, **headers: str) -> bytes:
    http.start()
    async with http.open("POST", url, provider="P", json_body=BODY, headers=headers) as response:
        return await response.read()


# -- item 14: secrets echoed by the upstream ------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", f"Bearer {KEY}"),
        ("x-api-key", KEY),
        ("x-goog-api-key", KEY),
    ],
)
async def test_a_key_echoed_in_a_401_body_is_scrubbed(header: str, value: str) -> None:
    async def echo_key(request: web.Request) -> web.Response:
        sent = request.headers[header].rpartition(" ")[2]
        # The key plain, JSON-escaped, and as a field of its own.
        escaped = "\\u00" + f"{ord(sent[0]):02x}" + sent[1:]
        error = {
            "message": f"Incorrect API key provided: {sent} (ESCAPED)",
            "code": "invalid_api_key",
            "param": sent,
            sent: [[sent]],
        }
        raw = json.dumps({"error": error}).replace("ESCAPED", escaped)
        return web.Response(status=401, text=raw, headers={"X-Echo": sent})

    async with app_server(echo_key) as url, Transport() as transport:
        with pytest.raises(AuthenticationError) as caught:
            await post(transport.call(), f"{url}/v1/chat/completions", **{header: value})
    error = caught.value
    shown = [str(error), repr(error), error.message, json.dumps(error.body), str(error.headers)]
    shown += [str(error.param), str(error.code), *map(str, error.args)]
    for text in shown:
        assert KEY not in text
    assert error.code == "invalid_api_key"  # the rest of the body is intact
    assert "Incorrect API key provided" in error.message


@pytest.mark.anyio
async def test_a_key_echoed_in_a_plain_text_error_body_is_scrubbed() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=403, text=f"forbidden key {request.headers['x-api-key']}")

    async with app_server(echo) as url, Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await post(transport.call(), url, **{"x-api-key": KEY})
    assert KEY not in str(caught.value)
    assert KEY not in str(caught.value.body)
    assert "forbidden key" in str(caught.value.body)


def test_the_client_error_for_an_echoed_key_holds_no_key() -> None:
    async def run() -> None:
        async def echo(request: web.Request) -> web.Response:
            key = request.headers["Authorization"].removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"bad key {key}"}}, status=401)

        async with app_server(echo) as url:
            provider = OpenAI(base_url=url, api_key=KEY)
            async with chatkit.AsyncClient(provider=provider, max_retries=0) as client:
                with pytest.raises(AuthenticationError) as caught:
                    await client.chat.completions.create(model="m", messages=BODY["messages"])
        assert KEY not in str(caught.value)
        assert KEY not in json.dumps(caught.value.body)

    asyncio.run(run())


# -- item 15: redirects ------------------------------------------------------------


@asynccontextmanager
async def two_origins(
    status: int, path: str = "/v1/chat/completions"
) -> AsyncIterator[tuple[str, list[tuple[str, bytes, dict[str, str]]]]]:
    """Server A redirects with ``status`` to server B, which records what reached it."""
    received: list[tuple[str, bytes, dict[str, str]]] = []

    async def other(request: web.Request) -> web.Response:
        received.append((request.method, await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    async with app_server(other) as other_url:

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": f"{other_url}{path}"})

        async with app_server(redirect) as url:
            yield url, received


@pytest.mark.anyio
@pytest.mark.parametrize("status", [307, 308])
async def test_a_cross_origin_redirect_with_a_body_is_refused(status: int) -> None:
    async with two_origins(status) as (url, received), Transport() as transport:
        with pytest.raises(APIStatusError) as caught:
            await post(
                transport.call(), f"{url}/v1/chat/completions", Authorization=f"Bearer {KEY}"
            )
    assert caught.value.status_code == status
    assert "refused to follow a cross-origin redirect" in str(caught.value)
    assert received == []  # the conversation never reached the other origin


@pytest.mark.anyio
async def test_a_same_origin_redirect_with_a_body_is_followed() -> None:
    seen: list[tuple[str, bytes, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/old":
            return web.Response(status=308, headers={"Location": "/new"})
        seen.append((request.method, await request.read(), request.headers.get("x-api-key")))
        return web.json_response({"ok": True})

    async with app_server(handler) as url, Transport() as transport:
        answer = await post(transport.call(), f"{url}/old", **{"x-api-key": KEY})
    assert json.loads(answer) == {"ok": True}
    assert seen == [("POST", json.dumps(BODY, separators=(",", ":")).encode(), KEY)]


@pytest.mark.anyio
async def test_a_cross_origin_get_redirect_is_followed_without_credentials() -> None:
    async with two_origins(302, "/models") as (url, received), Transport() as transport:
        http = transport.call()
        headers = {"Authorization": f"Bearer {KEY}", "x-goog-api-key": KEY, "X-Other": "1"}
        async with http.open("GET", f"{url}/models", provider="P", headers=headers) as response:
            assert await response.json() == {"ok": True}
    [(method, _, sent)] = received
    assert method == "GET"
    lowered = {k.lower(): v for k, v in sent.items()}
    assert "authorization" not in lowered and "x-goog-api-key" not in lowered
    assert lowered["x-other"] == "1"


@pytest.mark.anyio
async def test_a_post_redirected_with_303_becomes_a_get_without_body() -> None:
    async with two_origins(303) as (url, received), Transport() as transport:
        await post(transport.call(), url)
    [(method, body, _)] = received
    assert (method, body) == ("GET", b"")


@pytest.mark.anyio
async def test_endless_redirects_end_in_a_connection_error() -> None:
    async def loop_back(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": str(request.url)})

    async with app_server(loop_back) as url, Transport() as transport:
        with pytest.raises(APIConnectionError, match="redirects"):
            await post(transport.call(), url)


@pytest.mark.anyio
async def test_a_redirect_to_a_non_http_location_is_a_status_error() -> None:
    async def odd(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "ftp://example.invalid/x"})

    async with app_server(odd) as url, Transport() as transport:
        with pytest.raises(APIStatusError, match="unusable location") as caught:
            await post(transport.call(), url)
    assert caught.value.status_code == 302


# -- item 16: the connection pool ------------------------------------------------------


class HoldingServer:
    """Streams that stay open until the test lets them end; counts arrivals."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()
        self._arrival = asyncio.Condition()

    async def wait_for_arrivals(self, count: int) -> None:
        async with self._arrival:
            await self._arrival.wait_for(lambda: self.arrived >= count)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        async with self._arrival:
            self.arrived += 1
            self._arrival.notify_all()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await self.release.wait()
        await response.write(b"data: last\n\n")
        return response


@asynccontextmanager
async def held_streams(transport: Transport, url: str, count: int) -> AsyncIterator[list[Any]]:
    """``count`` streams opened and read up to their first bytes, held open."""
    async with contextlib.AsyncExitStack() as stack:
        responses = []
        for _ in range(count):
            http = transport.call(timeout=Timeout(total=GUARD))
            response = await stack.enter_async_context(
                http.open("POST", url, provider="P", json_body=BODY)
            )
            assert await response.iter_bytes().__anext__()
            responses.append(response)
        yield responses


async def quick_get(transport: Transport, url: str, settings: Timeout) -> bytes:
    http = transport.call(timeout=settings)
    http.start()
    async with http.open("POST", url, provider="P", json_body=BODY) as response:
        return await response.read()


@pytest.mark.anyio
async def test_a_full_pool_raises_pool_timeout_without_reaching_the_server() -> None:
    server = HoldingServer()
    async with (
        app_server(server.handler) as url,
        Transport(limits=Limits(max_connections=2)) as transport,
        held_streams(transport, url, 2),
    ):
        with anyio.fail_after(GUARD), pytest.raises(PoolTimeoutError) as caught:
            await quick_get(transport, url, Timeout(pool=0.2, total=GUARD))
        assert server.arrived == 2
        server.release.set()
    message = str(caught.value)
    assert "waiting for a free connection" in message and "Limits.max_connections" in message
    assert isinstance(caught.value, chatkit.APITimeoutError)


@pytest.mark.anyio
async def test_without_a_pool_timeout_a_call_waits_for_a_free_connection() -> None:
    server = HoldingServer()
    async with (
        app_server(server.handler) as url,
        Transport(limits=Limits(max_connections=1)) as transport,
    ):
        # connect=0.2: the wait for the pool (longer than that) must not count as connecting.
        timeout = Timeout(connect=0.2, pool=None, total=GUARD)
        async with held_streams(transport, url, 1) as [held]:
            waiting = asyncio.ensure_future(quick_get(transport, url, timeout))
            await asyncio.sleep(0.5)  # let the connect timeout pass while it waits
            assert not waiting.done() and server.arrived == 1
            server.release.set()
            assert await held.read() == b"data: last\n\n"
        with anyio.fail_after(GUARD):
            assert await waiting == WHOLE
    assert server.arrived == 2


@pytest.mark.anyio
async def test_a_slow_host_does_not_starve_another_host() -> None:
    slow = HoldingServer()

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    limits = Limits(max_connections=3, max_connections_per_host=2)
    async with (
        app_server(slow.handler) as slow_url,
        app_server(fast) as fast_url,
        Transport(limits=limits) as transport,
        held_streams(transport, slow_url, 2),
    ):
        with anyio.fail_after(GUARD):
            assert await quick_get(transport, fast_url, Timeout(pool=0.5)) == b"fast"
        with pytest.raises(PoolTimeoutError, match="max_connections_per_host=2"):
            await quick_get(transport, slow_url, Timeout(pool=0.2))
        slow.release.set()
    assert slow.arrived == 2


@pytest.mark.anyio
async def test_a_cancelled_pool_wait_leaks_no_permit() -> None:
    server = HoldingServer()
    async with (
        app_server(server.handler) as url,
        Transport(limits=Limits(max_connections=1, max_connections_per_host=1)) as transport,
    ):
        async with held_streams(transport, url, 1):
            waiters = [
                asyncio.ensure_future(quick_get(transport, url, Timeout(total=GUARD)))
                for _ in range(3)
            ]
            await asyncio.sleep(0)  # each is now queued on the pool
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            server.release.set()
        with anyio.fail_after(GUARD):
            assert await quick_get(transport, url, Timeout(pool=1.0)) == WHOLE
        pool = transport._slot().pool
        assert pool.hosts == {}  # nothing left behind by the cancelled waiters
        assert pool.total is not None and not pool.total.locked()


@pytest.mark.anyio
async def test_closing_a_response_early_frees_its_connection() -> None:
    server = HoldingServer()
    async with (
        app_server(server.handler) as url,
        Transport(limits=Limits(max_connections=1)) as transport,
    ):
        http = transport.call()
        async with http.open("POST", url, provider="P", json_body=BODY):
            http.abort()  # what a dropped stream does, possibly from __del__
            with anyio.fail_after(GUARD):
                got = asyncio.ensure_future(quick_get(transport, url, Timeout(pool=5.0)))
                await server.wait_for_arrivals(2)  # it got the connection
                server.release.set()
                assert await got == WHOLE


@pytest.mark.anyio
async def test_limits_reach_the_aiohttp_connector() -> None:
    async with Transport(limits=Limits(max_connections=7, max_connections_per_host=3)) as t:
        connector = t._session(None).connector
        assert connector is not None
        assert (connector.limit, connector.limit_per_host) == (7, 3)
    async with Transport(limits=Limits(max_connections=None, max_connections_per_host=None)) as t:
        connector = t._session(None).connector
        assert connector is not None
        assert (connector.limit, connector.limit_per_host) == (0, 0)
        assert t._slot().pool.total is None


def test_transport_limits_must_be_a_limits() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Transport(limits=5)  # type: ignore[arg-type]
    assert caught.value.field == "limits"


# -- item 17: decoded body caps -----------------------------------------------------------


def gzip_zeros(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed, built without holding them all."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.flush())
    return b"".join(parts)


def bomb_handler(status: int, size: int) -> Handler:
    compressed = gzip_zeros(size)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            status=status,
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    return handler


@pytest.mark.anyio
async def test_a_gzip_bomb_stops_at_the_default_body_cap() -> None:
    size = transport_module.MAX_BODY_SIZE + 8 * 1024 * 1024
    async with app_server(bomb_handler(200, size)) as url, Transport() as transport:
        with anyio.fail_after(GUARD), pytest.raises(ResponseTooLargeError, match="MAX_BODY_SIZE"):
            await post(transport.call(), url)


@pytest.mark.anyio
async def test_a_gzip_bomb_never_inflates_into_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "MAX_BODY_SIZE", 1024 * 1024)
    async with app_server(bomb_handler(200, 256 * 1024 * 1024)) as url, Transport() as transport:
        tracemalloc.start()
        try:
            with anyio.fail_after(GUARD), pytest.raises(ResponseTooLargeError):
                await post(transport.call(), url)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # 256 MiB inflated would be far beyond


@pytest.mark.anyio
async def test_an_error_body_bomb_keeps_only_the_capped_decoded_prefix() -> None:
    async with app_server(bomb_handler(500, 256 * 1024 * 1024)) as url, Transport() as transport:
        tracemalloc.start()
        try:
            with anyio.fail_after(GUARD), pytest.raises(InternalServerError) as caught:
                await post(transport.call(), url)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert isinstance(caught.value.body, str)
    assert len(caught.value.body) == MAX_ERROR_BODY_SIZE
    assert peak < 32 * 1024 * 1024


@pytest.mark.anyio
async def test_a_body_under_the_cap_is_read_whole() -> None:
    payload = {"data": ["x" * 1000] * 2000}
    compressed = gzip.compress(json.dumps(payload).encode())

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    async with app_server(handler) as url, Transport() as transport:
        http = transport.call()
        async with http.open("GET", url, provider="P") as response:
            assert await response.json() == payload


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "match"), [(b"[" * 100_000 + b"]" * 100_000, "nested"), (b"{nope", "not JSON")]
)
async def test_json_of_a_bad_body_is_a_decode_error(body: bytes, match: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async with app_server(handler) as url, Transport() as transport:
        http = transport.call()
        async with http.open("GET", url, provider="P") as response:
            with pytest.raises(ResponseDecodeError, match=match):
                await response.json()


# -- item 21: malformed HTTP responses -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab",
    ],
)
async def test_a_malformed_response_is_a_connection_error_not_a_400(reply: bytes) -> None:
    async with raw_server(reply) as port, Transport() as transport:
        with pytest.raises(APIConnectionError) as caught:
            await post(transport.call(), f"http://127.0.0.1:{port}/v1/chat/completions")
    error = caught.value
    assert not isinstance(error, APIStatusError)
    assert "400" not in str(error)
    assert "malformed HTTP response" in str(error) or "while reading" in str(error)


# -- item 22: closed transports and dead loops ---------------------------------------------


@pytest.mark.anyio
async def test_closing_the_transport_mid_call_is_a_client_closed_error() -> None:
    server = HoldingServer()
    async with app_server(server.handler) as url:
        transport = Transport()
        http = transport.call()
        async with http.open("POST", url, provider="P", json_body=BODY) as response:
            chunks = response.iter_bytes()
            assert await chunks.__anext__()
            await transport.aclose()
            with pytest.raises(ClientClosedError):
                await chunks.__anext__()
        server.release.set()


class CountingServer:
    """A keep-alive HTTP server in its own thread that counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        self.changed = threading.Condition()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def __enter__(self) -> CountingServer:
        self._thread.start()
        self._ready.wait(GUARD)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(GUARD)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count(+1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._count(-1)

    def _count(self, change: int) -> None:
        with self.changed:
            self.open += change
            self.closed += change < 0
            self.changed.notify_all()

    def wait_closed(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.closed >= count, GUARD)


def test_reuse_across_asyncio_run_closes_the_dead_loops_sockets() -> None:
    transport = Transport()
    with CountingServer() as server:
        url = f"http://127.0.0.1:{server.port}/v1/chat/completions"

        async def one_call() -> bytes:
            return await post(transport.call(), url)

        assert asyncio.run(one_call()) == b"ok"
        assert (server.open, server.closed) == (1, 0)  # kept alive in the dead loop's pool
        assert asyncio.run(one_call()) == b"ok"
        # The second run forgot the first loop's session and closed its socket:
        # no garbage collection involved.
        assert server.wait_closed(1)
        assert server.open == 1

        async def close() -> None:
            await transport.aclose()

        asyncio.run(close())
        assert server.wait_closed(2)
