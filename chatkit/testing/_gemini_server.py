"""A fake Gemini (Generative Language API) server for tests.

It speaks the wire format Google documents:

- https://ai.google.dev/api/generate-content: ``POST
  /v1beta/models/{model}:generateContent`` answers one
  ``GenerateContentResponse`` (``candidates[].content.parts``,
  ``finishReason``, ``usageMetadata``, ``modelVersion``, ``responseId``);
  ``:streamGenerateContent?alt=sse`` streams the same objects as SSE ``data:``
  events, with no end marker: the last one carries the ``finishReason``;
- https://ai.google.dev/api/caching#Content: parts are ``text`` (``thought:
  true`` for thought summaries), ``functionCall`` (whole calls, ``args`` an
  object; https://ai.google.dev/gemini-api/docs/function-calling) with a
  ``thoughtSignature`` (https://ai.google.dev/gemini-api/docs/thought-signatures);
- https://ai.google.dev/gemini-api/docs/troubleshooting and
  https://cloud.google.com/apis/design/errors: errors are ``{"error": {"code",
  "message", "status", "details"}}``; a wrong key is a 400 with an
  ``ErrorInfo`` reason ``API_KEY_INVALID``, a missing one a 403; a 429 says
  how long to wait in a ``google.rpc.RetryInfo`` detail, not in a header;
- https://ai.google.dev/api/models#method:-models.list: ``GET /v1beta/models``
  with ``pageSize`` / ``pageToken`` pagination.

The key is accepted from the ``x-goog-api-key`` header or the ``key`` query
parameter, as Google does. It is scripted with the same `Behavior` objects as
`FakeOpenAIServer`: ``finish_reason`` takes OpenAI names (``"length"`` is sent
as ``MAX_TOKENS``) or Gemini's own (``"RECITATION"``); ``done=False`` leaves
out the final event, so the stream ends without a ``finishReason``;
``retry_after`` / ``retry_after_ms`` become a ``RetryInfo`` detail; tool calls
are sent without ids, as Gemini does.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from aiohttp import web

from ._behavior import Behavior
from ._openai_server import FakeOpenAIServer
from ._stream import StreamPlan
from ._wire import answer_pieces

__all__ = ["FakeGeminiServer"]

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CODES = {name: code for code, name in _STATUS.items()}
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
# Behavior.error_event_type speaks OpenAI / Anthropic; Google statuses pass as they are.
_EVENT_CODES = {"server_error": 500, "api_error": 500, "overloaded_error": 503}
_EVENT_CODES |= {"rate_limit_error": 429, "invalid_request_error": 400, "timeout_error": 504}
_TOP_LEVEL = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    | {"safetySettings", "cachedContent"}
)
_GENERATION = frozenset(
    {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema"}
    | {"responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP"}
    | {"topK", "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs"}
    | {"enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "mediaResolution"}
)
_DATA_FIELDS = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse"}
    | {"executableCode", "codeExecutionResult"}
)
_MALFORMED = b"data: {not json\r\n\r\n"
_UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API."
)


def status_name(code: int) -> str:
    """The ``google.rpc.Code`` name Google sends with an HTTP status."""
    return _STATUS.get(code) or ("INTERNAL" if code >= 500 else "FAILED_PRECONDITION")


def error_body(
    code: int, message: str, status: str | None = None, details: list[Any] | None = None
) -> dict[str, Any]:
    """A Google API error body."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or status_name(code),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _error(code: int, message: str, **kwargs: Any) -> web.Response:
    return web.json_response(error_body(code, message, **kwargs), status=code)


def _sse(obj: Any) -> bytes:
    # Google separates events with CRLF pairs, which the SSE spec allows.
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\r\n\r\n"


def _unknown(keys: Any, known: frozenset[str], where: str) -> str | None:
    for key in keys:
        if key not in known:
            return (
                f"Invalid JSON payload received. Unknown name {key!r} at {where!r}:"
                " Cannot find field."
            )
    return None


def invalid_request(body: Any) -> str | None:
    """Why the Gemini API would refuse ``body`` with a 400, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    problem = _unknown(body, _TOP_LEVEL, "")
    config = body.get("generationConfig")
    if problem is None and isinstance(config, dict):
        problem = _unknown(config, _GENERATION, "generation_config")
    if problem is not None:
        return problem
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in (None, "user", "model"):
            return f"Please use a valid role: user, model. (contents[{i}].role: {role!r})"
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )
        for j, part in enumerate(parts):
            fields = _DATA_FIELDS.intersection(part) if isinstance(part, dict) else set()
            if len(fields) != 1:
                return (
                    f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof"
                    " field 'data' must have one initialized field"
                )
    return None


def _words(parts: Any) -> int:
    count = 0
    for part in parts or ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            count += len(part["text"].split())
    return count


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {}


class _Answer:
    """The ``GenerateContentResponse`` objects of one answer to ``behavior``."""

    def __init__(
        self, behavior: Behavior, body: dict[str, Any], model: str, number: int, *, stream: bool
    ) -> None:
        self.behavior = behavior
        self.stream = stream
        self.model = model
        self.id = f"fake-response-{number}"
        self.signature = base64.b64encode(f"fake-signature-{number}".encode()).decode()
        system = (body.get("systemInstruction") or {}).get("parts")
        self.prompt = _words(system) + sum(_words(c.get("parts")) for c in body["contents"])
        config = body.get("generationConfig") or {}
        self.candidates = max(int(config.get("candidateCount") or 1), 1)
        reason = behavior.finish_reason or "stop"
        self.finish = _FINISH.get(reason, reason)
        self.thoughts = list(behavior.reasoning or ())
        self.pieces = answer_pieces(behavior)
        self.calls = [self._call_part(n, c) for n, c in enumerate(behavior.tool_calls or ())]

    def _call_part(self, n: int, call: dict[str, Any]) -> dict[str, Any]:
        part: dict[str, Any] = {
            "functionCall": {"name": call["name"], "args": _arguments(call.get("arguments", ""))}
        }
        if n == 0:
            part["thoughtSignature"] = self.signature
        return part

    def response(
        self, parts: list[dict[str, Any]], *, finish: bool, generated: int, thought: int
    ) -> dict[str, Any]:
        candidates = []
        for index in range(self.candidates):
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if finish:
                candidate["finishReason"] = self.finish
            candidate["index"] = index
            candidates.append(candidate)
        usage = {"promptTokenCount": self.prompt, "candidatesTokenCount": generated}
        usage["totalTokenCount"] = self.prompt + generated + thought
        if thought:
            usage["thoughtsTokenCount"] = thought
        return {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.id,
        }

    def items(self) -> list[bytes]:
        """One event per thought piece, text piece and function call."""
        parts = [{"text": t, "thought": True} for t in self.thoughts]
        parts += [{"text": piece} for piece in self.pieces] + self.calls
        items = []
        thought = 0
        for n, part in enumerate(parts, 1):
            thought += 1 if part.get("thought") else 0
            generated = n - thought
            items.append(
                _sse(self.response([part], finish=False, generated=generated, thought=thought))
            )
        return items

    def closing(self) -> bytes:
        generated = len(self.pieces) + len(self.calls)
        final = self.response(
            [{"text": ""}], finish=True, generated=generated, thought=len(self.thoughts)
        )
        return _sse(final) if self.behavior.done else b""

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.thoughts:
            parts.append({"text": "".join(self.thoughts), "thought": True})
        if self.pieces:
            parts.append({"text": "".join(self.pieces)})
        parts += self.calls
        generated = len(self.pieces) + len(self.calls)
        return self.response(
            parts or [{"text": ""}], finish=True, generated=generated, thought=len(self.thoughts)
        )

    def error(self) -> tuple[int, str]:
        """The code and status of the error this behavior's error event reports."""
        kind = self.behavior.error_event_type
        if kind in _CODES:
            return _CODES[kind], kind
        code = _EVENT_CODES.get(kind, 500)
        return code, status_name(code)

    def plan(self) -> StreamPlan:
        """The events; fault positions count them (no opening event)."""
        code, status = self.error()
        return StreamPlan(
            opening=b"",
            items=self.items(),
            closing=self.closing(),
            malformed=_MALFORMED,
            error_event=_sse(error_body(code, "fake error event", status)),
        )

    def payload(self) -> bytes:
        return json.dumps(self.whole(), ensure_ascii=False).encode()

    def error_response(self, headers: dict[str, str]) -> web.Response:
        code, status = self.error()
        body = error_body(code, "fake error", status)
        return web.json_response(body, status=code, headers=headers)


class FakeGeminiServer(FakeOpenAIServer):
    """A scripted Gemini API server on 127.0.0.1.

    Used like `FakeOpenAIServer` (``async with``, ``run_in_thread()``,
    ``script()``, ``fail()``, ``requests``, ``wait_for_disconnects()``);
    ``base_url`` is ``http://127.0.0.1:PORT``, as Gemini clients take it. With
    ``api_key`` set, requests need that key. ``models`` are listed by
    ``GET /v1beta/models``; names containing "embedding" are listed as
    embedding-only models.
    """

    _default_models = ("gemini-2.5-flash", "gemini-2.5-pro")
    _stream_headers: ClassVar[Mapping[str, str]] = {"Content-Type": "text/event-stream"}

    # Per server and made on first use, so the constructor stays the base class's.
    @functools.cached_property
    def _responses(self) -> Iterator[int]:
        return itertools.count(1)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: clients append ``/v1beta/models/...`` themselves."""
        return self.url

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/{version:v1beta|v1}/models/{target}", self._generate),
            web.get("/{version:v1beta|v1}/models", self._list_models),
        ]

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        pass  # Google sends no request-id header

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key == self._api_key:
            return None
        if key is None:
            return _error(403, _UNREGISTERED)
        detail = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
        return _error(400, "API key not valid. Please pass a valid API key.", details=[detail])

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """``models/{model}:countTokens``: ``{"totalTokens": N}``, words as tokens,
        for ``contents`` or a whole ``generateContentRequest``."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
            inner = body.get("generateContentRequest") or body
            contents = inner["contents"]
            system = (inner.get("systemInstruction") or {}).get("parts")
            total = _words(system) + sum(_words(c.get("parts")) for c in contents)
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "Invalid countTokens request.")
        return web.json_response({"totalTokens": total})

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            size = int(request.query.get("pageSize", "50"))
            start = int(request.query.get("pageToken") or "0")
        except ValueError:
            return _error(400, "Invalid pageSize or pageToken.")
        page = self._models[start : start + max(size, 1)]
        models = []
        for name in page:
            embedding = "embedding" in name
            methods = ["embedContent" if embedding else "generateContent", "countTokens"]
            models.append(
                {
                    "name": f"models/{name}",
                    "version": "001",
                    "displayName": name,
                    "description": f"Fake {name}",
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 2048 if embedding else 65536,
                    "supportedGenerationMethods": methods,
                }
            )
        listing: dict[str, Any] = {"models": models}
        if start + len(page) < len(self._models):
            listing["nextPageToken"] = str(start + len(page))
        return web.json_response(listing)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["target"].partition(":")[2]
        if method == "countTokens":
            return await self._count_tokens(request)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method not found: {method or '(none)'}.")
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return await self._serve_json(
            request,
            unparsable="Invalid JSON payload received.",
            invalid=invalid_request,
        )

    def _build_answer(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior
    ) -> _Answer:
        model, _, method = request.match_info["target"].partition(":")
        stream = method == "streamGenerateContent"
        return _Answer(behavior, body, model, next(self._responses), stream=stream)

    def _response_headers(self, behavior: Behavior) -> dict[str, str]:
        # No Retry-After headers: Google puts its wait hint in the error body.
        return dict(behavior.headers or {})

    def _status_error(
        self, behavior: Behavior, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        status = behavior.status
        assert status is not None
        details = []
        wait = behavior.retry_after
        if behavior.retry_after_ms is not None:
            wait = behavior.retry_after_ms / 1000
        if wait is not None:
            # Google's wait hint: a protobuf Duration in the body, never Retry-After.
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"}
            )
        kind = behavior.error_type if behavior.error_type in _CODES else None
        error = error_body(status, f"Fake error: HTTP {status}.", kind, details)
        return web.json_response(error, status=status, headers=headers)

    def _bad_request(self, message: str) -> web.Response:
        return _error(400, message)
