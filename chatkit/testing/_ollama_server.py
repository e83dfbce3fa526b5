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

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from ._behavior import Behavior
from ._openai_server import FakeOpenAIServer
from ._stream import StreamPlan
from ._wire import answer_pieces, prompt_tokens

__all__ = ["FakeOllamaServer"]

_ROLES = ("system", "user", "assistant", "tool")
_MALFORMED = b"{not json\n"
# An empty line: NDJSON readers skip it, so a trickle can send it while stalled.
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
        # Ollama streams unless told not to.
        self.stream = body.get("stream", True) is not False
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

    def plan(self) -> StreamPlan:
        """The lines; fault positions count them (no opening line)."""
        return StreamPlan(
            opening=b"",
            items=self.items(),
            closing=self.closing(),
            malformed=_MALFORMED,
            error_event=_line({"error": "fake error event"}),
            keepalive=_KEEPALIVE,
        )

    def payload(self) -> bytes:
        return json.dumps(self.whole(), ensure_ascii=False).encode()

    def error_response(self, headers: dict[str, str]) -> web.Response:
        return _error(500, "fake error", headers)


class FakeOllamaServer(FakeOpenAIServer):
    """A scripted Ollama server on 127.0.0.1.

    Used like `FakeOpenAIServer` (``async with``, ``run_in_thread()``,
    ``script()``, ``fail()``, ``requests``, ``wait_for_disconnects()``);
    ``base_url`` is ``http://127.0.0.1:PORT``, what ``OLLAMA_HOST`` holds.
    Any model name is answered; ``models`` are what ``/api/tags`` lists.
    """

    _default_models = ("llama3.2:latest",)
    _stream_headers: ClassVar[Mapping[str, str]] = {"Content-Type": "application/x-ndjson"}

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: clients append ``/api/chat`` themselves."""
        return self.url

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/chat", self._chat),
            web.get("/api/tags", self._tags),
            web.get("/api/version", self._version),
            web.get("/", self._root),
        ]

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        pass  # Ollama sends no request-id header

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
        return await self._serve_json(
            request,
            unparsable="invalid character in request body",
            invalid=invalid_request,
        )

    def _bad_request(self, message: str) -> web.Response:
        return _error(400, message)

    def _build_answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> _Answer:
        return _Answer(behavior, body)

    def _status_error(
        self, behavior: Behavior, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        assert behavior.status is not None
        message = f"fake error: HTTP {behavior.status}"
        if behavior.status == 404:
            message = f'model "{body["model"]}" not found, try pulling it first'
        return _error(behavior.status, message, headers)
