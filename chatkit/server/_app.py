"""The aiohttp application: routes, the auth and error middlewares, and serving it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import chatkit

from ._failures import Failure, failure_from
from ._handlers import GATEWAY, Gateway, chat_completions, health, list_models
from ._page import add_page_routes

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PORT",
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
# How long a stop waits for answers in progress before cancelling them.
SHUTDOWN_TIMEOUT = 3.0

# The API needs the key; the health check and the page (static files) do not.
_PROTECTED = (chat_completions, list_models)


def create_app(
    client: chatkit.AsyncClient,
    *,
    api_key: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    default_model: str | None = None,
    close_client: bool = False,
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
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise chatkit.InvalidRequestError("api_key must be a non-empty string", field="api_key")
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 1:
        raise chatkit.InvalidRequestError(
            "max_body_size must be a positive number of bytes", field="max_body_size"
        )
    middlewares: list[Middleware] = [_errors]
    if api_key is not None:
        middlewares.append(_bearer_auth(api_key))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=max_body_size,
        # A caller that disconnects cancels its handler at once, and with it the
        # upstream request, even while the handler waits for the first token.
        # Set here (not on the runner) so that it holds however the app is run.
        handler_args={"handler_cancellation": True},
    )
    app[GATEWAY] = Gateway(client=client, default_model=default_model or None)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    add_page_routes(app)
    if close_client:

        async def _close(app: web.Application) -> None:
            await client.aclose()

        app.on_cleanup.append(_close)
    return app


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
        if failure.status == 500:
            logger.exception("%s %s: unexpected error", request.method, request.path)
        else:
            _log(request, failure)
        return failure.response()


def _http_failure(request: web.Request, exc: web.HTTPException) -> Failure:
    if exc.status == 413:
        message = f"the request body is larger than the limit of {_limit(exc)} bytes"
        return Failure(413, message, code="request_too_large")
    if exc.status == 404:
        return Failure(404, f"no such endpoint: {request.path}", code="unknown_url")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        return Failure(405, message, code="method_not_allowed")
    return Failure(exc.status, exc.reason)


def _limit(exc: web.HTTPException) -> str:
    # aiohttp's message: "Maximum request body size N exceeded, actual body size M".
    words = exc.text.split() if exc.text else []
    return next((w for w in words if w.isdigit()), "?")


def _log(request: web.Request, failure: Failure) -> None:
    logger.warning("%s %s -> %d %s", request.method, request.path, failure.status, failure.message)


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
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        if on_ready is not None:
            on_ready(_url(runner.addresses[0]))
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


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
