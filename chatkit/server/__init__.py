"""An OpenAI-compatible gateway on top of an ``AsyncClient``: ``chatkit serve``.

``create_app(client)`` builds an aiohttp application with
``POST /v1/chat/completions`` (streamed as SSE, or not), ``GET /v1/models``,
``GET /health``, a chat page at ``GET /`` and, with ``metrics=True``,
Prometheus metrics at ``GET /metrics``; ``run(app)`` serves it on
127.0.0.1 until Ctrl-C, ``serve(app)`` does the same inside a running loop::

    import chatkit
    from chatkit.server import create_app, run

    client = chatkit.AsyncClient(provider=chatkit.RetryProvider(["openai", "anthropic"]))
    run(create_app(client, api_key="gateway-secret", close_client=True), port=8000)

The response to a streamed request is committed only when its first chunk
has arrived, so upstream errors arrive as HTTP statuses with OpenAI-shaped
bodies; see docs/gateway.md for the exact semantics, docs/observability.md
for metrics and tracing (``otel=True`` continues callers' W3C traces). Layer
L7: only the public chatkit API is used here (and OpenTelemetry, imported
only with ``otel=True``).
"""

from ._app import (
    API_KEY_ENV,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_PORT,
    SHUTDOWN_TIMEOUT,
    create_app,
    run,
    serve,
)
from ._handlers import GATEWAY, Gateway
from ._logging import AccessLogger, RedactSecrets

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PORT",
    "GATEWAY",
    "SHUTDOWN_TIMEOUT",
    "AccessLogger",
    "Gateway",
    "RedactSecrets",
    "create_app",
    "run",
    "serve",
]
