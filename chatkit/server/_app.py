"""The aiohttp application: routes, the auth and error middlewares, and serving it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import chatkit

from ._failures import INTERNAL_FAILURE, Failure, failure_from
from ._guard import GUARD, Guard, add_cors_headers, guard_middleware
from ._handlers import GATEWAY, Gateway, chat_completions, health, list_models
from ._logging import AccessLogger, escaped_traceback, printable, quiet_accept_errors
from ._metrics import METRICS, Metrics, metrics_endpoint, metrics_middleware
from ._page import add_page_routes

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PORT",
    "SHUTDOWN_TIMEOUT",
    "create_app",
    "run",
    "serve",
]

logger = logging.getLogger("chatkit.server")

API_KEY_ENV = "CHATKIT_SERVER_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Room for a long conversation with a few inline (base64) images.
DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
# How long a stop waits for answers in progress before cancelling them; the
# whole stop takes at most this plus a moment for the cancelled ones to close.
SHUTDOWN_TIMEOUT = 3.0
# Connections the kernel queues before the gateway accepts them. aiohttp's
# default of 128 overflowed when 10,000 streams opened over 20 s (6,734 SYNs
# dropped, each retried by the caller's kernel 1, 3, 7 s later); the kernel
# caps this at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 4096
# A connection must deliver a complete request head within this many seconds
# of opening (or of its previous answer, when kept alive), or it is closed:
# slow-header clients (slowloris) cannot hold sockets for ever.
DEFAULT_HEADER_TIMEOUT = 15.0
# The longest a request body may take to arrive once its head is in.
DEFAULT_BODY_TIMEOUT = 60.0
# Handler tasks of the requests in progress, for a bounded shutdown.
_IN_FLIGHT = web.AppKey("chatkit_in_flight", set[asyncio.Task[object]])

# The API (and /metrics) needs the key; the health check and the page do not.
_PROTECTED = (chat_completions, list_models, metrics_endpoint)


def create_app(
    client: chatkit.AsyncClient,
    *,
    api_key: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    default_model: str | None = None,
    close_client: bool = False,
    allowed_hosts: Iterable[str] | None = (),
    cors_origins: Iterable[str] | None = (),
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    metrics: bool = False,
    otel: bool = False,
) -> web.Application:
    """An aiohttp application serving an OpenAI-compatible API on top of ``client``.

    ``POST /v1/chat/completions`` (streamed as SSE or not), ``GET /v1/models``,
    ``GET /health``, and the chat page at ``GET /``.

    api_key: when set, the API routes (``/v1/...``) need ``Authorization:
        Bearer <api_key>``; ``/health`` and the page do not.
    max_body_size: the largest request body accepted, in bytes (413 above it).
    default_model: used when a request names no model (``"provider:model"``
        allowed); otherwise the provider's own default.
    close_client: close ``client`` when the application shuts down.
    allowed_hosts: ``Host`` names served besides loopback ones (``"*"``: any);
        other hosts get 403 (DNS rebinding). None: loopback names only.
    cors_origins: cross-site origins (``"http://host:port"``, ``"*"``) allowed
        to call the API, with CORS headers; other cross-site requests get 403.
        None: no cross-site origin.
    header_timeout: seconds a connection may take to send a request head
        (counted from its opening, or from its previous answer when kept alive).
    body_timeout: seconds a request body may take to arrive (408 after).
    metrics: serve Prometheus metrics at ``GET /metrics`` (behind ``api_key``
        like the API); off, there is no such route and nothing is measured.
    otel: continue the caller's trace: each chat request runs its call in the
        OpenTelemetry context extracted from its headers (W3C ``traceparent``),
        so the spans of a ``chatkit.telemetry.OpenTelemetry`` hook on
        ``client`` join it. Needs the ``opentelemetry-api`` package.
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise chatkit.InvalidRequestError("api_key must be a non-empty string", field="api_key")
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 1:
        raise chatkit.InvalidRequestError(
            "max_body_size must be a positive number of bytes", field="max_body_size"
        )
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise chatkit.InvalidRequestError(f"{name} must be a positive number", field=name)
    guard = Guard.build(allowed_hosts, cors_origins)
    middlewares: list[Middleware] = [_errors, _track, guard_middleware(guard)]
    if otel:
        middlewares.insert(0, _continue_trace())
    measured = Metrics(client) if metrics else None
    if measured is not None:
        # Outermost, so that it sees every status, the middlewares' own included.
        middlewares.insert(0, metrics_middleware(measured, chat_completions))
    if api_key is not None:
        middlewares.append(_bearer_auth(api_key))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=max_body_size,
        # A caller that disconnects cancels its handler at once, and with it the
        # upstream request, even while the handler waits for the first token.
        # Set here (not on the runner) so that it holds however the app is run.
        # The header timeout is aiohttp's keep-alive timer, which also runs from
        # a connection's opening until its first request head is complete.
        handler_args={
            "handler_cancellation": True,
            "keepalive_timeout": header_timeout,
            "access_log_class": AccessLogger,
        },
    )
    app[GATEWAY] = Gateway(
        client=client, default_model=default_model or None, body_timeout=body_timeout
    )
    app[GUARD] = guard
    app[_IN_FLIGHT] = set()
    app.on_response_prepare.append(add_cors_headers)
    app.on_shutdown.append(_drain)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    if measured is not None:
        app[METRICS] = measured
        app.router.add_get("/metrics", metrics_endpoint)
    add_page_routes(app)
    if close_client:

        async def _close(app: web.Application) -> None:
            await client.aclose()

        app.on_cleanup.append(_close)
    return app


def _continue_trace() -> Middleware:
    """Run each chat request in the OpenTelemetry context its headers carry."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        raise chatkit.InvalidRequestError(
            'otel=True needs OpenTelemetry: pip install "chatkit[otel]"', field="otel"
        ) from None

    @web.middleware
    async def continue_trace(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler is not chat_completions:
            return await handler(request)
        # Each request runs in its own task (and context): attached for this one only.
        token = context.attach(propagate.extract(request.headers))
        try:
            return await handler(request)
        finally:
            context.detach(token)

    return continue_trace


@web.middleware
async def _track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Remember the request's task, so that a shutdown can bound its wait for it."""
    task = asyncio.current_task()
    in_flight = request.app[_IN_FLIGHT]
    if task is None:  # pragma: no cover  (aiohttp always runs handlers in a task)
        return await handler(request)
    in_flight.add(task)
    try:
        return await handler(request)
    finally:
        in_flight.discard(task)


async def _drain(app: web.Application) -> None:
    """``on_shutdown``: give answers in progress SHUTDOWN_TIMEOUT, then cancel them.

    aiohttp's own bound is twice its timeout (a wait, then a second wait after
    a cancel that does not reach a handler waiting upstream), so the gateway
    cancels its handlers itself; they close their upstream requests at once.
    """
    tasks = app[_IN_FLIGHT].copy()
    if not tasks:
        return
    logger.info("stopping: waiting up to %.1fs for %d answer(s)", SHUTDOWN_TIMEOUT, len(tasks))
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
    if pending:
        logger.warning("stopping: cancelling %d answer(s) still in progress", len(pending))
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is OpenAI-shaped JSON; no traceback ever reaches the caller."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        failure = _http_failure(request, exc)
        extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        _log(request, failure)
        return failure.response(extra)
    except Exception as exc:
        failure = failure_from(exc)
        if failure is INTERNAL_FAILURE:
            # A bug: the traceback, escaped (an upstream 500 is not one: logged below).
            logger.error(
                "%s %s: unexpected error\n%s",
                printable(request.method),
                printable(request.path),
                escaped_traceback(exc),
            )
        else:
            _log(request, failure)
        return failure.response()


def _http_failure(request: web.Request, exc: web.HTTPException) -> Failure:
    if exc.status == 413:
        message = f"the request body is larger than the limit of {_limit(exc)} bytes"
        return Failure(413, message, code="request_too_large")
    if exc.status == 404:
        return Failure(404, f"no such endpoint: {printable(request.path)}", code="unknown_url")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        method, path = printable(request.method), printable(request.path)
        message = f"{method} is not allowed on {path}; use {allowed}"
        return Failure(405, message, code="method_not_allowed")
    return Failure(exc.status, exc.reason)


def _limit(exc: web.HTTPException) -> str:
    # aiohttp's message: "Maximum request body size N exceeded, actual body size M".
    words = exc.text.split() if exc.text else []
    return next((w for w in words if w.isdigit()), "?")


def _log(request: web.Request, failure: Failure) -> None:
    logger.warning(
        "%s %s -> %d %s",
        printable(request.method),
        printable(request.path),
        failure.status,
        printable(failure.message),
    )


def _bearer_auth(api_key: str) -> Middleware:
    # Comparing digests keeps the time independent of the key's length too.
    expected = hashlib.sha256(api_key.encode()).digest()

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Decided by the route, not the path: the app may be mounted under a prefix.
        if request.match_info.handler in _PROTECTED:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            given = hashlib.sha256(token.strip().encode()).digest()
            if not (hmac.compare_digest(given, expected) and scheme.lower() == "bearer"):
                failure = Failure(
                    401,
                    "missing or wrong API key: send Authorization: Bearer <key>",
                    code="invalid_api_key",
                )
                _log(request, failure)
                return failure.response({"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return bearer_auth


def _url(address: object) -> str:
    host, port = address[0], address[1]  # type: ignore[index]
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{host}:{port}"


async def serve(
    app: web.Application,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set (or the task is cancelled).

    ``on_ready`` gets the URL once the socket listens (``port=0`` picks a free port).
    """
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
    restore = quiet_accept_errors(asyncio.get_running_loop())
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        if on_ready is not None:
            on_ready(_url(runner.addresses[0]))
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
        restore()


def run(
    app: web.Application,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down cleanly and return."""
    asyncio.run(_run_until_signal(app, host, port, on_ready))


async def _run_until_signal(
    app: web.Application, host: str, port: int, on_ready: Callable[[str], object] | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows, nor outside the main thread: Ctrl-C then raises
        # KeyboardInterrupt, which still unwinds through serve()'s cleanup.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await serve(app, host=host, port=port, on_ready=on_ready, stop=stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
