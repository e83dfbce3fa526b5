"""The OpenAI-compatible endpoints: chat completions (streamed or not), models, health.

A streamed answer is committed (status line and headers sent) only once the
first chunk has arrived, so everything chatkit raises up to that point, an
upstream 401/404/429 or every provider failing, reaches the caller as an HTTP
status. After it a failure can only be reported inside the stream: one
``data: {"error": {...}}`` event, then the stream ends without ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import chatkit

from ._failures import INTERNAL_FAILURE, Failure, Refusal, failure_from
from ._logging import escaped_traceback, printable
from ._metrics import EXCHANGE, Exchange
from ._outbox import Outbox
from ._wire import chunk_bytes, completion_bytes

__all__ = ["GATEWAY", "Gateway", "chat_completions", "health", "list_models"]

logger = logging.getLogger("chatkit.server")

# Chat Completions fields that chatkit translates for every provider; any
# other field is forwarded as it is (``extra_body``), so vendor options such
# as ``top_k`` pass through the gateway the way the openai SDK sends them.
KNOWN_PARAMS = frozenset(chatkit.OPENAI_PARAMS)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # Reverse proxies (nginx) must not buffer the stream.
    "X-Accel-Buffering": "no",
}
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Gateway:
    """What the handlers need: the client and the app's settings."""

    client: chatkit.AsyncClient
    default_model: str | None = None
    body_timeout: float | None = None


GATEWAY = web.AppKey("chatkit_gateway", Gateway)


class BadRequest(Refusal):
    """The request body cannot be used: a 400 answer."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(Failure(400, message, param=param))


def _no_constants(name: str) -> float:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser accepts them,
    # and upstreams would then get a body they cannot parse.
    raise ValueError(f"{name} is not a valid JSON number")


async def _json_object(request: web.Request, body_timeout: float | None) -> dict[str, Any]:
    try:
        async with asyncio.timeout(body_timeout):
            raw = await request.read()
    except TimeoutError:
        message = f"the request body did not arrive within {body_timeout:g} seconds"
        raise Refusal(Failure(408, message, code="request_timeout")) from None
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _call_arguments(body: Mapping[str, Any], default_model: str | None) -> dict[str, Any]:
    """``create()`` keyword arguments from a request body; chatkit validates them."""
    if "messages" not in body:
        raise BadRequest("messages: required", param="messages")
    model = body.get("model")
    if model in (None, "") and default_model:
        model = default_model
    stream = body.get("stream")
    arguments: dict[str, Any] = {
        "messages": body["messages"],
        "model": "" if model is None else model,
        "stream": False if stream is None else stream,
    }
    extra: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("messages", "model", "stream"):
            continue
        if name in KNOWN_PARAMS:
            arguments[name] = value
        else:
            extra[name] = value
    if extra:
        arguments["extra_body"] = extra
    return arguments


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    # Set by the metrics middleware, only when metrics are on.
    exchange = request.get(EXCHANGE)
    body = await _json_object(request, gateway.body_timeout)
    arguments = _call_arguments(body, gateway.default_model)
    create = gateway.client.chat.completions.create
    streamed = arguments["stream"] is True
    if exchange is None:
        if streamed:
            return await _stream(request, create(**arguments), None)
        completion = await create(**arguments)
    else:
        exchange.asked(arguments["model"], streamed)
        try:
            if streamed:
                return await _stream(request, create(**arguments), exchange)
            completion = await create(**arguments)
        except Exception as exc:
            exchange.failed(exc)
            raise
        exchange.answered(completion)
    return web.Response(body=completion_bytes(completion), content_type="application/json")


async def _stream(
    request: web.Request, stream: chatkit.AsyncChatStream, exchange: Exchange | None
) -> web.StreamResponse:
    try:
        # Runs the call up to its first chunk: retries, fallbacks and error
        # statuses all happen here, before anything is sent.
        await stream
    except Exception:
        await stream.aclose()
        raise
    if exchange is not None:
        exchange.first_token()
    response = web.StreamResponse(headers=_SSE_HEADERS)
    outbox: Outbox | None = None
    try:
        await response.prepare(request)
        if exchange is not None:
            exchange.committed = True
        outbox = Outbox(response)
        while True:
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                await outbox.put(_DONE)
                break
            except Exception as exc:
                failure = failure_from(exc)
                detail = printable(failure.message)
                if failure is INTERNAL_FAILURE:
                    detail = escaped_traceback(exc)
                logger.warning(
                    "%s %s: stream failed after it had started: %s",
                    printable(request.method),
                    printable(request.path),
                    detail,
                )
                if exchange is not None:
                    exchange.interrupted = True
                await outbox.put(failure.sse_event())
                break
            if exchange is not None:
                exchange.chunk(chunk)
            await outbox.put(chunk_bytes(chunk))
        await outbox.close()
        await response.write_eof()
    except ConnectionResetError:
        # The caller went away between two writes; the upstream request is
        # closed below, and there is nobody left to answer.
        logger.info(
            "%s %s: the client disconnected mid-stream",
            printable(request.method),
            printable(request.path),
        )
    finally:
        # Also on cancellation (the caller disconnected while we waited for
        # upstream): closes the upstream response at once.
        if outbox is not None:
            await outbox.abandon()
        await stream.aclose()
    return response


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    data: list[dict[str, Any]]
    try:
        models = await gateway.client.models.list()
    except (chatkit.InvalidRequestError, chatkit.NotFoundError) as exc:
        # The provider has no list endpoint (a RetryProvider, many local
        # servers): list what the gateway knows it can route to instead.
        logger.info("GET /v1/models: no model list from the provider: %s", printable(str(exc)))
        data = []
        fallback = gateway.default_model or getattr(gateway.client.provider, "default_model", "")
        if isinstance(fallback, str) and fallback:
            data.append({"id": fallback, "object": "model", "created": 0, "owned_by": "chatkit"})
    else:
        data = [model.model_dump(mode="json", exclude_none=True) for model in models]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
