"""A fake Anthropic Messages API server for tests.

It speaks the wire format Anthropic documents, not an approximation of it:

- https://docs.anthropic.com/en/api/messages: ``POST /v1/messages``, the
  request body (``model``, ``max_tokens``, ``messages`` of user/assistant
  turns, top-level ``system``) and the ``Message`` object answered when
  ``stream`` is not true;
- https://docs.anthropic.com/en/docs/build-with-claude/streaming: named SSE
  events ``message_start``, ``ping``, ``content_block_start`` /
  ``content_block_delta`` (``text_delta``, ``input_json_delta``,
  ``thinking_delta``, ``signature_delta``) / ``content_block_stop``,
  ``message_delta`` (``stop_reason``, cumulative ``usage``), ``message_stop``,
  and ``error`` events inside a 200 stream;
- https://docs.anthropic.com/en/api/errors: ``{"type": "error", "error":
  {"type": ..., "message": ...}}`` bodies, 529 ``overloaded_error``, and the
  ``request-id`` response header;
- https://docs.anthropic.com/en/api/versioning: the ``anthropic-version``
  header is required; https://docs.anthropic.com/en/api/getting-started:
  the key travels in ``x-api-key``;
- https://docs.anthropic.com/en/api/models-list: ``GET /v1/models`` with
  ``limit`` / ``after_id`` pagination.

It is scripted with the same `Behavior` objects as `FakeOpenAIServer` and
shares its lifecycle, request recording, disconnect accounting and fault
knobs. ``Behavior.finish_reason`` takes either vocabulary: OpenAI names are
translated (``"length"`` is sent as ``max_tokens``), Anthropic names are sent
as they are. ``Behavior.error_event_type``'s default, OpenAI's
``server_error``, is sent as Anthropic's ``api_error``.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ._behavior import Behavior
from ._openai_server import FakeOpenAIServer
from ._stream import StreamPlan
from ._wire import answer_pieces, continued, prefill_of, prompt_tokens, tool_call_deltas

__all__ = ["FakeAnthropicServer"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# What a non-streamed request gets instead of an error event (same meaning).
_EVENT_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "timeout_error": 504}
_ROLES = ("user", "assistant")
_BLOCK_TYPES = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Set per request by the `_identify` middleware; the handler and the response
# hook run in that request's context.
_request_id: ContextVar[str] = ContextVar("fake_anthropic_request_id", default="req_0")
_SIGNATURE = "ZmFrZS1zaWduYXR1cmU="
_MALFORMED = b"event: content_block_delta\ndata: {not json\n\n"


def error_type_for(status: int) -> str:
    """The ``error.type`` Anthropic sends with an HTTP ``status``."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **obj}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _error(status: int, message: str, error_type: str | None = None) -> web.Response:
    return web.json_response(
        _error_body(error_type or error_type_for(status), message), status=status
    )


def _stop_reason(behavior: Behavior) -> str:
    reason = behavior.finish_reason or ("tool_calls" if behavior.tool_calls else "stop")
    return _STOP_REASONS.get(reason, reason)


def _event_error_type(behavior: Behavior) -> str:
    kind = behavior.error_event_type
    return "api_error" if kind == "server_error" else kind


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {}


# -- request validation -----------------------------------------------------


def _check_content(content: Any, where: str) -> str | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}.content: Input should be a valid string or list"
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_TYPES:
            return (
                f"{where}.content.{j}: Input tag {kind!r} does not match any of the expected tags"
            )
        if kind == "text" and not block.get("text"):
            return f"{where}.content.{j}: text content blocks must be non-empty"
    return None


def invalid_request(body: Any) -> str | None:
    """Why Anthropic would refuse ``body`` with a 400, or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return (
                f"messages.{i}.role: Unexpected role {role!r}. The Messages API accepts a"
                ' top-level `system` parameter, not "system" as an input message role.'
            )
        problem = _check_content(message.get("content"), f"messages.{i}")
        if problem is not None:
            return problem
    prefill = prefill_of(messages)
    if prefill is not None and prefill != prefill.rstrip():
        return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    system = body.get("system")
    extra = [{"content": system}] if system else []
    return prompt_tokens([*extra, *body["messages"]])


# -- answers ----------------------------------------------------------------


class _Answer:
    """The events (or the Message) of one answer to ``behavior``."""

    def __init__(self, behavior: Behavior, body: dict[str, Any], request_id: str) -> None:
        self.behavior = behavior
        self.stream = body.get("stream") is True
        self.request_id = request_id
        self.id = "msg_fake" + request_id.removeprefix("req_")
        self.model = body["model"]
        self.prompt = _prompt_tokens(body)
        self.stop_reason = _stop_reason(behavior)
        stops = body.get("stop_sequences")
        matched = stops[0] if self.stop_reason == "stop_sequence" and stops else None
        self.stop_sequence: str | None = matched
        self.pieces = answer_pieces(behavior)
        self.calls = behavior.tool_calls or []
        self.items = self._items()

    def _items(self) -> list[bytes]:
        """One entry per content delta; block starts and stops ride along."""
        items: list[bytes] = []
        for block, (kind, deltas, opener, closer) in enumerate(self._blocks()):
            start = _event("content_block_start", {"index": block, "content_block": opener})
            stop = _event("content_block_stop", {"index": block})
            events = [_event("content_block_delta", {"index": block, "delta": d}) for d in deltas]
            if kind == "tool_use":
                # A tool_use block's start already carries content: the call's id and name.
                events.insert(0, b"")
            events[0] = start + events[0]
            events[-1] = events[-1] + closer + stop
            items.extend(events)
        return items

    def _blocks(self) -> list[tuple[str, list[dict[str, Any]], dict[str, Any], bytes]]:
        blocks: list[tuple[str, list[dict[str, Any]], dict[str, Any], bytes]] = []
        if self.behavior.reasoning:
            deltas = [{"type": "thinking_delta", "thinking": t} for t in self.behavior.reasoning]
            signature = {
                "index": len(blocks),
                "delta": {"type": "signature_delta", "signature": _SIGNATURE},
            }
            closer = _event("content_block_delta", signature)
            blocks.append(("thinking", deltas, {"type": "thinking", "thinking": ""}, closer))
        if self.pieces:
            deltas = [{"type": "text_delta", "text": piece} for piece in self.pieces]
            blocks.append(("text", deltas, {"type": "text", "text": ""}, b""))
        # The OpenAI fake's tool-call deltas, regrouped: a head opens a tool_use
        # block, the argument fragments after it fill that block's list.
        fragments: list[dict[str, Any]] = []
        for delta in tool_call_deltas(self.calls):
            call = delta["tool_calls"][0]
            if "id" in call:
                fragments = []
                opener = {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": call["function"]["name"],
                    "input": {},
                }
                blocks.append(("tool_use", fragments, opener, b""))
            else:
                fragments.append(
                    {"type": "input_json_delta", "partial_json": call["function"]["arguments"]}
                )
        return blocks

    def opening(self) -> bytes:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt, "output_tokens": 1},
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def closing(self) -> bytes:
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        usage = {"output_tokens": len(self.items)}
        closing = _event("message_delta", {"delta": delta, "usage": usage})
        if self.behavior.done:
            closing += _event("message_stop", {})
        return closing

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.behavior.reasoning:
            thinking = "".join(self.behavior.reasoning)
            content.append({"type": "thinking", "thinking": thinking, "signature": _SIGNATURE})
        if self.pieces:
            content.append({"type": "text", "text": "".join(self.pieces)})
        for index, call in enumerate(self.calls):
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id", f"call_{index}"),
                    "name": call["name"],
                    "input": _arguments_object(call.get("arguments", "")),
                }
            )
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": self.model,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": {"input_tokens": self.prompt, "output_tokens": len(self.items)},
        }

    def error_event(self) -> bytes:
        error = _error_body(_event_error_type(self.behavior), "fake error event")
        return _event("error", {"error": error["error"]})

    def plan(self) -> StreamPlan:
        """The events; fault positions count content deltas."""
        return StreamPlan(
            opening=self.opening(),
            items=self.items,
            closing=self.closing(),
            malformed=_MALFORMED,
            error_event=self.error_event(),
        )

    def payload(self) -> bytes:
        return json.dumps(self.message(), ensure_ascii=False).encode()

    def error_response(self, headers: dict[str, str]) -> web.Response:
        kind = _event_error_type(self.behavior)
        body = _error_body(kind, "fake error", self.request_id)
        return web.json_response(body, status=_EVENT_STATUS.get(kind, 500), headers=headers)


class FakeAnthropicServer(FakeOpenAIServer):
    """A scripted Anthropic Messages API server on 127.0.0.1.

    Used like `FakeOpenAIServer` (``async with``, ``run_in_thread()``,
    ``script()``, ``fail()``, ``requests``, ``wait_for_disconnects()``);
    ``base_url`` is ``http://127.0.0.1:PORT``, without ``/v1``, as Anthropic
    clients take it. With ``api_key`` set, requests need that ``x-api-key``.
    """

    _default_models = ("claude-fake",)

    # Per server and made on first use, so the constructor stays the base class's.
    @functools.cached_property
    def _request_ids(self) -> Iterator[int]:
        return itertools.count(1)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: clients append ``/v1/messages`` themselves."""
        return self.url

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
            web.get("/v1/models", self._list_models),
        ]

    def _middlewares(self) -> list[Middleware]:
        return [*super()._middlewares(), self._identify]

    @web.middleware
    async def _identify(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        _request_id.set(f"req_{next(self._request_ids)}")
        return await handler(request)

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["request-id"] = _request_id.get()

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        key = request.headers.get("x-api-key")
        if key == self._api_key:
            return None
        message = "x-api-key header is required" if key is None else "invalid x-api-key"
        return _error(401, message)

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "limit: Input should be a valid integer")
        after = request.query.get("after_id")
        start = self._models.index(after) + 1 if after in self._models else 0
        page = self._models[start : start + max(limit, 1)]
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in page
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": start + len(page) < len(self._models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if "anthropic-version" not in request.headers:
            return _error(400, "anthropic-version: header is required")
        return await self._serve_json(
            request,
            unparsable="There was an issue with your request body: invalid JSON",
            invalid=invalid_request,
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, words as tokens."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "messages: Field required")
        if not isinstance(messages, list) or not isinstance(body.get("model"), str):
            return _error(400, "model and messages are required")
        if "max_tokens" in body or "stream" in body:
            return _error(400, "max_tokens: Extra inputs are not permitted")
        return web.json_response({"input_tokens": _prompt_tokens(body)})

    def _bad_request(self, message: str) -> web.Response:
        return _error(400, message)

    def _build_answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> _Answer:
        # A final assistant message is a prefill: the answer continues it.
        prefill = prefill_of(body["messages"])
        if prefill is not None:
            behavior = continued(behavior, prefill)
        return _Answer(behavior, body, _request_id.get())

    def _status_error(
        self, behavior: Behavior, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        assert behavior.status is not None
        kind = behavior.error_type or error_type_for(behavior.status)
        message = f"Fake error: HTTP {behavior.status}."
        error = _error_body(kind, message, _request_id.get())
        return web.json_response(error, status=behavior.status, headers=headers)
