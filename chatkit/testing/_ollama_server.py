"""A fake Ollama server for tests.

It speaks the wire format Ollama documents:

- https://docs.ollama.com/api/chat: ``POST /api/chat`` takes ``model``,
  ``messages`` (``system`` / ``user`` / ``assistant`` / ``tool``, ``images``
  as base64, ``tool_calls`` whose ``arguments`` are objects, ``tool_name``),
  ``tools``, ``format``, ``options``, ``think``, ``stream``;
- https://docs.ollama.com/api/streaming: the answer streams as NDJSON
  (``application/x-ndjson``), one object per line with a ``message`` piece
  and ``done: false``; the last line has ``done: true``, ``done_reason`` and
  the counts (``prompt_eval_count``, ``eval_count``) and durations. With
  ``"stream": false`` that last object, holding the whole message, is the
  body;
- https://docs.ollama.com/capabilities/thinking: reasoning arrives as
  ``message.thinking``; https://docs.ollama.com/capabilities/tool-calling:
  tool calls arrive whole, in a ``message.tool_calls`` list;
- https://docs.ollama.com/api/errors: errors are ``{"error": "text"}`` with
  the HTTP status, or an ``{"error": ...}`` line once a stream has started;
- https://docs.ollama.com/api/tags: ``GET /api/tags`` lists local models.

Ollama itself has no authentication; with ``api_key`` set the server acts as
an authenticating proxy in front of it and wants ``Authorization: Bearer``.
It is scripted with the same `Behavior` objects as `FakeOpenAIServer`:
``finish_reason`` is sent as ``done_reason`` (``"tool_calls"`` as ``stop``,
as Ollama does); ``done=False`` leaves out the ``done`` line, so the stream
ends early; a ``trickle`` sends empty lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ._behavior import Behavior
from ._openai_server import FakeOpenAIServer, _Exchange, _extra_headers
from ._stream import _Batcher, _fault_points, _write_items
from ._wire import answer_pieces, prompt_tokens

__all__ = ["FakeOllamaServer"]

_ROLES = ("system", "user", "assistant", "tool")
_MALFORMED = b"{not json\n"
_KEEPALIVE = b"\n"


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def invalid_request(body: Any) -> str | None:
    """Why Ollama would refuse ``body`` with a 400, or None."""
    if not isinstance(body, dict):
        return "invalid request: expected a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: expected an array"
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return f"invalid role: {role!r}"
        if not isinstance(message.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content"
        images = message.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            return "images: expected an array of base64 strings"
        for call in message.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            if not isinstance(arguments, dict):
                return "json: cannot unmarshal string into Go struct field .arguments"
    return None


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {}


class _Answer:
    """The NDJSON lines (or the whole object) of one answer to ``behavior``."""

    def __init__(self, behavior: Behavior, body: dict[str, Any]) -> None:
        self.behavior = behavior
        self.model = body["model"]
        self.created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.prompt = prompt_tokens(body["messages"])
        reason = behavior.finish_reason or "stop"
        self.done_reason = "stop" if reason == "tool_calls" else reason
        self.pieces = answer_pieces(behavior)
        self.thoughts = list(behavior.reasoning or ())
        # As documented: whole calls, arguments an object, and no call ids.
        self.calls = [
            {"function": {"name": c["name"], "arguments": _arguments(c.get("arguments", ""))}}
            for c in behavior.tool_calls or ()
        ]

    def _object(self, message: dict[str, Any], *, done: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "created_at": self.created_at,
            "message": {"role": "assistant", "content": "", **message},
            "done": done,
        }

    def items(self) -> list[bytes]:
        """One line per thinking piece, content piece and tool call."""
        lines = [_line(self._object({"thinking": t}, done=False)) for t in self.thoughts]
        lines += [_line(self._object({"content": p}, done=False)) for p in self.pieces]
        lines += [_line(self._object({"tool_calls": [c]}, done=False)) for c in self.calls]
        return lines

    def final(self, message: dict[str, Any]) -> dict[str, Any]:
        generated = len(self.thoughts) + len(self.pieces) + len(self.calls)
        final = self._object(message, done=True)
        final.update(
            done_reason=self.done_reason,
            total_duration=generated * 1_000_000 + 2_000_000,
            load_duration=1_000_000,
            prompt_eval_count=self.prompt,
            prompt_eval_duration=1_000_000,
            eval_count=generated,
            eval_duration=generated * 1_000_000,
        )
        return final

    def closing(self) -> bytes:
        return _line(self.final({})) if self.behavior.done else b""

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"content": "".join(self.pieces)}
        if self.thoughts:
            message["thinking"] = "".join(self.thoughts)
        if self.calls:
            message["tool_calls"] = self.calls
        return self.final(message)


async def _stall(out: _Batcher, seconds: float, trickle: float | None) -> None:
    """Go quiet; a trickle sends empty lines, which NDJSON readers skip."""
    await out.flush()
    if trickle is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > trickle:
        await asyncio.sleep(trickle)
        out.add(_KEEPALIVE)
        await out.flush()
    await asyncio.sleep(max(left, 0.0))


async def _write_stream(
    response: web.StreamResponse, answer: _Answer, close_connection: Callable[[], None]
) -> None:
    """Write ``answer``'s lines with its behavior's faults (positions count lines)."""
    behavior = answer.behavior
    out = _Batcher(response)
    items = answer.items()
    points = _fault_points(behavior, len(items))
    start = 0
    for cut in sorted(set(points.values()) | {len(items)}):
        await _write_items(out, items[start:cut], behavior.delay)
        start = cut
        if points.get("stall") == cut:
            await _stall(out, behavior.stall_seconds, behavior.trickle)
        if points.get("malformed") == cut:
            out.add(_MALFORMED)
        if points.get("error") == cut:
            out.add(_line({"error": "fake error event"}))
            await out.flush()
            return
        if points.get("drop") == cut:
            await out.flush()
            close_connection()
            return
    out.add(answer.closing())
    await out.flush()


class FakeOllamaServer(FakeOpenAIServer):
    """A scripted Ollama server on 127.0.0.1.

    Used like `FakeOpenAIServer` (``async with``, ``run_in_thread()``,
    ``script()``, ``fail()``, ``requests``, ``wait_for_disconnects()``);
    ``base_url`` is ``http://127.0.0.1:PORT``, what ``OLLAMA_HOST`` holds.
    Any model name is answered; ``models`` are what ``/api/tags`` lists.
    """

    def __init__(
        self,
        behavior: Behavior | None = None,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
    ) -> None:
        models = list(models) if models is not None else ["llama3.2:latest"]
        super().__init__(behavior, api_key=api_key, host=host, port=port, models=models)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: clients append ``/api/chat`` themselves."""
        return self.url

    async def __aenter__(self) -> FakeOllamaServer:
        await self.start()
        return self

    async def start(self) -> None:
        """Listen on the configured host and port (0: an ephemeral port)."""
        if self._runner is not None:
            raise RuntimeError("FakeOllamaServer is already started")
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/", self._root)
        app.router.add_get("/health", self._health)
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

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        if request.headers.get("Authorization") == f"Bearer {self._api_key}":
            return None
        return _error(401, "unauthorized")

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def _tags(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-10-26T17:21:21.196249123-07:00",
                "size": 2019393189,
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "3.2B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for name in self._models
        ]
        return web.json_response({"models": models})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "invalid character in request body")
        problem = invalid_request(body)
        if problem is not None:
            return _error(400, problem)
        # Behavior selection, overrides and disconnect tracking are shared with
        # the OpenAI server, which calls back into `_answer` below.
        return await self._chat_completions(request)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior, exchange: _Exchange
    ) -> web.StreamResponse:
        def close_connection() -> None:
            exchange.closed_by_server = True
            if request.transport is not None:
                request.transport.close()

        if behavior.reset:
            close_connection()
            return web.Response()
        headers = _extra_headers(behavior)
        if behavior.status is not None:
            message = f"fake error: HTTP {behavior.status}"
            if behavior.status == 404:
                message = f'model "{body["model"]}" not found, try pulling it first'
            return _error(behavior.status, message, headers)
        answer = _Answer(behavior, body)
        # Ollama streams unless told not to.
        if body.get("stream", True) is False:
            return await _complete(request, answer, headers, close_connection)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", **headers})
        await response.prepare(request)
        self.active_streams += 1
        try:
            await _write_stream(response, answer, close_connection)
        except ConnectionResetError:
            self._client_gone(exchange)
        finally:
            self.active_streams -= 1
        return response


async def _complete(
    request: web.Request,
    answer: _Answer,
    headers: dict[str, str],
    close_connection: Callable[[], None],
) -> web.StreamResponse:
    """The whole answer as one object; stream faults map to their whole-body equivalents."""
    behavior = answer.behavior
    if behavior.stall_after is not None:
        await asyncio.sleep(behavior.stall_seconds)
    if behavior.malformed_after is not None:
        return web.Response(body=b"{not json", content_type="application/json", headers=headers)
    if behavior.error_event_after is not None:
        return _error(500, "fake error", headers)
    payload = json.dumps(answer.whole(), ensure_ascii=False).encode()
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
