"""A fake OpenAI-compatible Chat Completions server for tests and benchmarks.

It is a real aiohttp server on a loopback port that streams real SSE, so the
code under test exercises its whole HTTP stack. What it answers is scripted
with `Behavior` objects; see `FakeOpenAIServer`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web
from aiohttp.typedefs import Middleware

from ._behavior import Behavior, RecordedRequest, default_error_type, make_headers, parse_override
from ._stream import Answer, StreamPlan, build_plan, write_stream
from ._wire import (
    ChunkEncoder,
    completion_object,
    continued,
    error_body,
    prefill_of,
    prompt_tokens,
)

__all__ = ["FakeOpenAIServer"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The number of the request being handled. aiohttp runs each request in its own
# task (with its own context), and the middleware, the handler and the
# response-prepare hook all run in that task, so a context variable carries it
# without request-storage keys (whose typed form differs between aiohttp versions).
_request_number: ContextVar[int | None] = ContextVar("fake_request_number", default=None)


class _Exchange:
    """Per-request state deciding whether a lost connection was the client's doing."""

    __slots__ = ("closed_by_server", "counted")

    def __init__(self) -> None:
        self.closed_by_server = False
        self.counted = False


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server on 127.0.0.1.

    ``async with FakeOpenAIServer() as server:`` runs it in the current event
    loop; ``with FakeOpenAIServer().run_in_thread() as server:`` runs it on its
    own loop in a daemon thread for synchronous code. Each chat-completions
    request takes the next `Behavior` from the script (`script`, `fail`), or
    `default` once the script is used up; an ``x-fake-behavior`` request header
    holding a JSON object of Behavior fields overrides fields for that request.

    The vendor servers subclass it: they keep its scripting, lifecycle, request
    recording and disconnect accounting, and override the hooks below
    (`_routes`, `_build_answer`, `_status_error`, ...) with their wire format.
    """

    _default_models: ClassVar[tuple[str, ...]] = ("fake-model",)
    _stream_headers: ClassVar[Mapping[str, str]] = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
    }

    def __init__(
        self,
        behavior: Behavior | None = None,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
    ) -> None:
        self.default: Behavior = behavior if behavior is not None else Behavior()
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.active_streams = 0
        self.peak_streams = 0
        """The most streams this server has sent at once."""
        self.port = port
        self._api_key = api_key
        self._host = host
        self._models = list(models if models is not None else self._default_models)
        self._script: deque[Behavior] = deque()
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._handlers: set[asyncio.Task[Any]] = set()
        # Disconnects are counted on the server's loop and awaited from any
        # thread (Condition) or any loop (futures woken thread-safely).
        self._cond = threading.Condition()
        self._waiters: list[asyncio.Future[None]] = []

    # -- scripting -----------------------------------------------------------

    def script(self, *behaviors: Behavior) -> None:
        """Queue behaviors for the next chat-completions requests, in order."""
        self._script.extend(behaviors)

    def fail(
        self,
        times: int,
        status: int = 500,
        *,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        error_type: str | None = None,
    ) -> None:
        """Queue `times` error answers with `status` (and optional retry hints)."""
        error = Behavior(
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            error_type=error_type,
        )
        self._script.extend(dataclasses.replace(error) for _ in range(times))

    def _next_behavior(self) -> Behavior:
        try:
            return self._script.popleft()
        except IndexError:
            return self.default

    # -- addresses and lifecycle ---------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; valid once started."""
        if self._runner is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what an OpenAI client takes as base_url."""
        return self.url + "/v1"

    async def start(self) -> None:
        """Listen on the configured host and port (0: an ephemeral port)."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        app = web.Application(middlewares=self._middlewares())
        app.on_response_prepare.append(self._stamp)
        app.router.add_routes([*self._routes(), web.get("/health", self._health)])
        # handler_cancellation: a client that goes away cancels its handler at
        # once, even mid-sleep, which is how stalled streams notice it.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._closing = False
        self._runner = runner

    async def close(self) -> None:
        """Stop listening and end every response in progress."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Ending a stalled stream here is the server's doing, not a disconnect.
        self._closing = True
        for task in list(self._handlers):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[Self]:
        """Run the server on its own event loop in a daemon thread.

        Start errors (a port in use, ...) are raised here; leaving the block
        closes the server and joins the thread.
        """
        started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
        started = concurrent.futures.Future()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve_in_thread(started)),
            name=f"FakeOpenAIServer:{self.port}",
            daemon=True,
        )
        thread.start()
        try:
            loop, stop = started.result()
        except BaseException:
            thread.join()
            raise
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()

    async def _serve_in_thread(
        self,
        started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]],
    ) -> None:
        stop = asyncio.Event()
        try:
            await self.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result((asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await self.close()

    # -- disconnects ---------------------------------------------------------

    def _client_gone(self, exchange: _Exchange) -> None:
        if exchange.closed_by_server or exchange.counted or self._closing:
            return
        exchange.counted = True
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    # The timeout parameter is the public API (mirrors the sync variant), and a
    # False result on timeout is more useful in assertions than an exception.
    async def wait_for_disconnects(self, n: int = 1, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Wait until `n` responses were abandoned by their client; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._cond:  # check and register atomically: no lost wake-up
                if self.disconnects >= n:
                    return True
                self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return self.disconnects >= n
            finally:
                with self._cond:
                    self._waiters.remove(waiter)

    def wait_for_disconnects_sync(self, n: int = 1, timeout: float = 5.0) -> bool:
        """`wait_for_disconnects` for a server in `run_in_thread`, from any thread."""
        with self._cond:
            return self._cond.wait_for(lambda: self.disconnects >= n, timeout)

    # -- HTTP plumbing -------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        """The vendor's API; ``/health`` is added to every server."""
        return [
            web.post("/v1/chat/completions", self._chat_completions),
            web.get("/v1/models", self._list_models),
        ]

    def _middlewares(self) -> list[Middleware]:
        return [self._record]

    @web.middleware
    async def _record(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        number = next(self._numbers)
        _request_number.set(number)
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=make_headers(list(request.headers.items())),
                body=await request.read(),
            )
        )
        return await handler(request)

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        number = _request_number.get()
        if number is not None:
            response.headers["x-request-id"] = f"req_{number}"

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        if request.headers.get("Authorization") == f"Bearer {self._api_key}":
            return None
        message = "Incorrect API key provided."
        body = error_body(message, "authentication_error")
        body["error"]["code"] = "invalid_api_key"
        return web.json_response(body, status=401)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "chatkit-fake"}
            for model in self._models
        ]
        return web.json_response({"object": "list", "data": data})

    # -- chat completions ----------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _bad_request("We could not parse the JSON body of your request.", None)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _bad_request("'messages' is a required property.", "messages")
        return await self._serve(request, body)

    async def _serve_json(
        self,
        request: web.Request,
        *,
        unparsable: str,
        invalid: Callable[[Any], str | None],
    ) -> web.StreamResponse:
        """`_serve` a JSON body that `invalid` finds no fault with, else the vendor's 400."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._bad_request(unparsable)
        problem = invalid(body)
        if problem is not None:
            return self._bad_request(problem)
        return await self._serve(request, body)

    async def _serve(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Answer a valid chat request with the next Behavior, noticing a client that leaves."""
        override = request.headers.get("x-fake-behavior")
        try:
            fields = parse_override(override) if override is not None else {}
        except ValueError as exc:
            return self._bad_request(str(exc))
        # A copy: the scripted or default Behavior stays as the test wrote it.
        behavior = dataclasses.replace(self._next_behavior(), **fields)

        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        exchange = _Exchange()
        try:
            return await self._answer(request, body, behavior, exchange)
        except asyncio.CancelledError:
            # handler_cancellation: the peer closed the connection.
            self._client_gone(exchange)
            raise
        except ConnectionResetError:
            # A write found the connection closed. Returning (not raising) keeps
            # aiohttp from logging it: writing this response fails just as
            # quietly on the closed transport.
            self._client_gone(exchange)
            return web.Response()
        finally:
            self._handlers.discard(task)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior, exchange: _Exchange
    ) -> web.StreamResponse:
        def close_connection() -> None:
            exchange.closed_by_server = True
            if request.transport is not None:
                request.transport.close()

        if behavior.reset:
            close_connection()
            # Nothing reaches the wire: aiohttp fails to write to the closed
            # transport and drops the response quietly.
            return web.Response()
        headers = self._response_headers(behavior)
        if behavior.status is not None:
            return self._status_error(behavior, body, headers)
        # Built only now: a scripted failure answers even when the Behavior's
        # success fields (unused then) could not be turned into an answer.
        answer = self._build_answer(request, body, behavior)
        if not answer.stream:
            return await _complete(request, answer, headers, close_connection)

        plan = answer.plan()
        response = web.StreamResponse(headers={**self._stream_headers, **headers})
        await response.prepare(request)
        self.active_streams += 1
        self.peak_streams = max(self.peak_streams, self.active_streams)
        try:
            await write_stream(response, plan, behavior, close_connection)
        except ConnectionResetError:
            # The peer went away between two writes; aiohttp fails the final
            # write_eof the same way and drops the response quietly.
            self._client_gone(exchange)
        finally:
            self.active_streams -= 1
        return response

    # -- what vendors override -----------------------------------------------

    def _build_answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> Answer:
        # vLLM's continue_final_message: the final assistant message is continued.
        prefill = prefill_of(body["messages"]) if body.get("continue_final_message") else None
        if prefill is not None:
            behavior = continued(behavior, prefill)
        return _Answer(behavior, body, _request_number.get())

    def _response_headers(self, behavior: Behavior) -> dict[str, str]:
        """Headers for every answer to `behavior`, errors and streams alike."""
        headers = dict(behavior.headers or {})
        if behavior.retry_after is not None:
            seconds = behavior.retry_after
            headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
        if behavior.retry_after_ms is not None:
            headers["retry-after-ms"] = str(behavior.retry_after_ms)
        return headers

    def _status_error(
        self, behavior: Behavior, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        """The answer to a Behavior with an error `status`."""
        assert behavior.status is not None
        error_type = behavior.error_type or default_error_type(behavior.status)
        message = f"Fake error: HTTP {behavior.status}."
        return web.json_response(
            error_body(message, error_type), status=behavior.status, headers=headers
        )

    def _bad_request(self, message: str) -> web.Response:
        """A 400 in the vendor's error shape (a bad body or ``x-fake-behavior`` header)."""
        return _bad_request(message, None)


class _Answer:
    """The ``chat.completion`` (or its chunks) answering one request."""

    def __init__(self, behavior: Behavior, body: dict[str, Any], number: int | None) -> None:
        self.behavior = behavior
        self.stream = body.get("stream") is True
        self._include_usage = _include_usage(body)
        self._id = f"chatcmpl-fake{number}"
        self._created = int(time.time())
        model = body.get("model")
        self._model = model if isinstance(model, str) and model else "fake-model"
        self._finish_reason = behavior.finish_reason or (
            "tool_calls" if behavior.tool_calls else "stop"
        )
        self._prompt = prompt_tokens(body["messages"])

    def plan(self) -> StreamPlan:
        encoder = ChunkEncoder(
            self._id, self._created, self._model, include_usage=self._include_usage
        )
        return build_plan(
            self.behavior,
            encoder,
            finish_reason=self._finish_reason,
            prompt=self._prompt if self._include_usage else None,
        )

    def payload(self) -> bytes:
        obj = completion_object(
            self.behavior,
            completion_id=self._id,
            created=self._created,
            model=self._model,
            finish_reason=self._finish_reason,
            prompt=self._prompt,
        )
        return json.dumps(obj).encode()

    def error_response(self, headers: dict[str, str]) -> web.Response:
        error = error_body("fake error event", self.behavior.error_event_type)
        return web.json_response(error, headers=headers)


async def _complete(
    request: web.Request,
    answer: Answer,
    headers: dict[str, str],
    close_connection: Callable[[], None],
) -> web.StreamResponse:
    """A non-streamed answer; stream faults map to their whole-body equivalents."""
    behavior = answer.behavior
    if behavior.stall_after is not None:
        await asyncio.sleep(behavior.stall_seconds)
    if behavior.malformed_after is not None:
        return web.Response(body=b"{not json", content_type="application/json", headers=headers)
    if behavior.error_event_after is not None:
        return answer.error_response(headers)
    payload = answer.payload()
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    if behavior.drop_after is None:
        await response.write(payload)
    else:
        # Half the promised body, then the connection ends: a truncated read.
        await response.write(payload[: len(payload) // 2])
        close_connection()
    return response


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _bad_request(message: str, param: str | None) -> web.Response:
    body = error_body(message, "invalid_request_error", param=param)
    return web.json_response(body, status=400)
