"""Anthropic's Messages API, translated to and from chatkit's OpenAI-style types.

Requests are translated by ``_anthropic_request``; this module sends them and
maps the answers back. Streaming events (message_start, content_block_start /
delta / stop, message_delta, message_stop, ping, error) become
``ChatCompletionChunk`` objects: text, tool calls (one index per tool_use
block, in order), thinking as ``delta.reasoning_content``, and usage plus
finish_reason on the chunk that ends the answer.

Wire format: https://docs.anthropic.com/en/api/messages (request and Message),
https://docs.anthropic.com/en/docs/build-with-claude/streaming (events),
https://docs.anthropic.com/en/api/errors (error bodies, ``request-id``),
https://docs.anthropic.com/en/api/versioning (``anthropic-version``),
https://docs.anthropic.com/en/api/models-list (``GET /v1/models``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from chatkit._config import is_number
from chatkit._errors import (
    APIError,
    APIStatusError,
    InvalidRequestError,
    ResponseDecodeError,
    error_from_event,
)
from chatkit._ratelimit import RateLimit
from chatkit._request import ChatRequest
from chatkit._sse import SSEEvent
from chatkit._transport import HTTPCall
from chatkit._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChunkChoice,
    CompletionUsage,
    Model,
)
from chatkit.providers._anthropic_request import (
    DEFAULT_MAX_TOKENS,
    messages_body,
    unsupported_param,
)
from chatkit.providers._base import Capabilities
from chatkit.providers._common import (
    check_stream_type,
    decode_error,
    iso_timestamp,
    loads,
    objects_with_string,
    sse_batches,
    stream_ended_early,
    tool_call_delta,
    truncated,
)
from chatkit.providers._http import HTTPProvider

__all__ = ["Anthropic", "finish_reason"]

API_VERSION = "2023-06-01"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's ``stop_reason`` as an OpenAI ``finish_reason``.

    Reasons without an OpenAI counterpart (``pause_turn``) pass through as is.
    """
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, stop_reason)


def _usage(*sources: Mapping[str, Any] | None) -> CompletionUsage:
    """OpenAI usage from Anthropic usage objects; later sources win field by field.

    Anthropic's ``input_tokens`` leaves out cached prompt tokens; OpenAI's
    ``prompt_tokens`` counts them, so cache reads and writes are added back,
    and shown apart as OpenAI does: ``prompt_tokens_details.cached_tokens``
    (read from the cache) and ``cache_creation_tokens`` (written to it, an
    Anthropic-only figure kept as an extra field).
    """
    merged: dict[str, int] = {}
    for source in sources:
        if source:
            merged.update((k, v) for k, v in source.items() if is_number(v, integer=True))
    cache_read = merged.get("cache_read_input_tokens", 0)
    cache_creation = merged.get("cache_creation_input_tokens", 0)
    prompt = merged.get("input_tokens", 0) + cache_creation + cache_read
    completion = merged.get("output_tokens", 0)
    fields: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "cache_read_input_tokens" in merged or "cache_creation_input_tokens" in merged:
        fields["prompt_tokens_details"] = {
            "cached_tokens": cache_read,
            "cache_creation_tokens": cache_creation,
        }
    return CompletionUsage.model_validate(fields)


# What the counting endpoint takes of a Messages request (no max_tokens, no stream).
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def _refine(error: APIStatusError, request_id: str | None) -> APIStatusError:
    """``error`` with what Anthropic's answer adds to it: the request id.

    An error event arrives inside a 200 response (or is a 200 body), so its
    id is that response's.
    """
    error.request_id = request_id
    return error


class _ResponseReader:
    """Turns one stream's Anthropic events into chunks (None: nothing to emit)."""

    def __init__(self, provider: str, request_id: str | None) -> None:
        self.provider = provider
        self.request_id = request_id
        self.id = ""
        self.model = ""
        self.created = 0
        self.start_usage: dict[str, Any] | None = None
        self.tool_index: dict[int, int] = {}  # content block index -> tool call ordinal
        self.finished = False
        self.stopped = False

    def tell_partial_usage(self, error: APIError) -> None:
        """A stream broke off after message_start: what is known of its usage,
        the prompt tokens, as ``error.partial_usage`` (the completion tokens
        are not known: 0, not counted; see ``chatkit._resume``)."""
        if self.start_usage is not None and not self.finished:
            known = {k: v for k, v in self.start_usage.items() if k != "output_tokens"}
            error.partial_usage = _usage(known)

    def chunk(
        self,
        delta: ChoiceDelta,
        finish: str | None = None,
        usage: CompletionUsage | None = None,
    ) -> ChatCompletionChunk:
        # Plain constructors: measured faster than model_construct (which
        # computes every default in Python) and they still validate.
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=usage,
            provider=self.provider,
        )

    def read_event(self, event: SSEEvent) -> ChatCompletionChunk | None:
        payload = loads(event.data, self.provider, "stream event")
        if not isinstance(payload, dict):
            raise decode_error(self.provider, "stream event is not an object", event.data)
        kind = payload.get("type") or event.event
        try:
            return self._dispatch(kind, payload)
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            raise decode_error(self.provider, f"malformed {kind} event", event.data) from exc

    def _dispatch(self, kind: str, payload: dict[str, Any]) -> ChatCompletionChunk | None:
        if kind == "content_block_delta":
            return self._block_delta(payload["index"], payload["delta"])
        if kind == "content_block_start":
            return self._block_start(payload["index"], payload["content_block"])
        if kind == "message_start":
            return self._message_start(payload["message"])
        if kind == "message_delta":
            return self._message_delta(payload["delta"], payload.get("usage"))
        if kind == "message_stop":
            self.stopped = self.finished = True
            return None
        if kind == "error":
            error = error_from_event(payload, provider=self.provider)
            raise _refine(error, self.request_id)
        # ping, content_block_stop, and event types added later: nothing to emit.
        return None

    def _message_start(self, message: dict[str, Any]) -> ChatCompletionChunk:
        self.id = _text(message.get("id"))
        self.model = _text(message.get("model"))
        self.created = int(time.time())
        usage = message.get("usage")
        self.start_usage = usage if isinstance(usage, dict) else None
        return self.chunk(ChoiceDelta(role="assistant", content=""))

    def _block_start(self, index: int, block: dict[str, Any]) -> ChatCompletionChunk | None:
        kind = block["type"]
        if kind == "tool_use":
            ordinal = self.tool_index[index] = len(self.tool_index)
            call_id = _text(block["id"], strict=True)
            call = tool_call_delta(ordinal, call_id, _text(block["name"], strict=True), "")
            return self.chunk(ChoiceDelta(tool_calls=[call]))
        if kind == "text" and block.get("text"):
            return self.chunk(ChoiceDelta(content=_text(block["text"], strict=True)))
        # thinking starts empty; redacted_thinking and server tool blocks carry
        # nothing an OpenAI-style chunk can hold.
        return None

    def _block_delta(self, index: int, delta: dict[str, Any]) -> ChatCompletionChunk | None:
        kind = delta["type"]
        if kind == "text_delta":
            return self.chunk(ChoiceDelta(content=_text(delta["text"], strict=True)))
        if kind == "input_json_delta":
            fragment = _text(delta["partial_json"], strict=True)
            ordinal = self.tool_index.get(index)
            if not fragment or ordinal is None:
                return None
            function = ChoiceDeltaFunctionCall(arguments=fragment)
            call = ChoiceDeltaToolCall(index=ordinal, function=function)
            return self.chunk(ChoiceDelta(tool_calls=[call]))
        if kind == "thinking_delta":
            thinking = _text(delta["thinking"], strict=True)
            return self.chunk(ChoiceDelta(reasoning_content=thinking))
        # signature_delta (thinking integrity) and citations_delta have no OpenAI field.
        return None

    def _message_delta(self, delta: dict[str, Any], usage: Any) -> ChatCompletionChunk:
        reason = delta.get("stop_reason")
        finish = finish_reason(reason if isinstance(reason, str) else None)
        if finish is not None:
            self.finished = True
        final_usage = _usage(self.start_usage, usage if isinstance(usage, dict) else None)
        return self.chunk(ChoiceDelta(), finish, final_usage)


def _text(value: Any, *, strict: bool = False) -> str:
    if isinstance(value, str):
        return value
    if strict:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return ""


def _completion(message: dict[str, Any], provider: str) -> ChatCompletion:
    """A non-streamed Message as a ChatCompletion."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message["content"]:
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "thinking":
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
            tool_calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "reasoning_content": "".join(thinking) or None,
        "tool_calls": tool_calls or None,
    }
    usage = message.get("usage")
    return ChatCompletion.model_validate(
        {
            "id": message.get("id", ""),
            "created": int(time.time()),
            "model": message.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": reply,
                    "finish_reason": finish_reason(message.get("stop_reason")),
                }
            ],
            "usage": _usage(usage if isinstance(usage, dict) else None),
            "provider": provider,
        }
    )


def _model(item: dict[str, Any], provider: str) -> Model:
    created = iso_timestamp(item.get("created_at"))
    extra = {k: v for k, v in item.items() if k not in ("id", "created_at", "type")}
    return Model(id=item["id"], created=created, owned_by="anthropic", provider=provider, **extra)


class Anthropic(HTTPProvider):
    """Claude through the Anthropic Messages API.

    ``Anthropic()`` reads ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL``
    (default ``https://api.anthropic.com``; requests go to
    ``{base_url}/v1/messages``). ``max_tokens`` is the default answer budget,
    since the API requires one. ``json_object`` output is not offered (the API
    has no such mode); ``json_schema`` is sent as ``output_config.format``.
    """

    name: ClassVar[str] = "Anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    api_key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    base_url_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_BASE_URL",)
    default_model: str = "claude-sonnet-4-5"
    # continue_message: a final assistant message is a prefill the model continues.
    capabilities: ClassVar[Capabilities] = Capabilities(json_object=False, continue_message=True)

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        default_model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        default_headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            key_required=True,
            default_model=default_model,
            default_headers=default_headers,
            proxy=proxy,
            proxies=proxies,
            trust_env=trust_env,
            rate_limit=rate_limit,
        )
        if not is_number(max_tokens, integer=True) or max_tokens < 1:
            raise InvalidRequestError("max_tokens must be an integer >= 1", field="max_tokens")
        self.max_tokens = max_tokens

    # -- requests ------------------------------------------------------------

    def _unsupported_param(self, request: ChatRequest) -> str | None:
        return unsupported_param(request)

    def _check_body(self, request: ChatRequest) -> None:
        self._body(request, stream=request.stream)

    def _auth_headers(self, accept: str) -> dict[str, str]:
        return {
            "Accept": accept,
            "anthropic-version": API_VERSION,
            "x-api-key": self._api_key or "",
        }

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        return messages_body(
            request,
            model=request.model or self.default_model,
            default_max_tokens=self.max_tokens,
            stream=stream,
        )

    def _open(self, http: HTTPCall, request: ChatRequest, *, stream: bool) -> Any:
        accept = "text/event-stream" if stream else "application/json"
        return http.open(
            "POST",
            f"{self.base_url}/v1/messages",
            provider=self.name,
            headers=self._headers_for(accept, request.extra_headers),
            json_body=self._body(request, stream=stream),
            params=request.extra_query or None,
            proxy_settings=self.proxy_settings,
        )

    # -- calls ---------------------------------------------------------------

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        reader: _ResponseReader | None = None
        try:
            async with self._open(http, request, stream=True) as response:
                check_stream_type(response, self.name, "sse")
                reader = _ResponseReader(self.name, response.headers.get("request-id"))
                async for events, tail in sse_batches(response, self.name):
                    for event in events:
                        try:
                            chunk = reader.read_event(event)
                        except ResponseDecodeError as exc:
                            # An unterminated last event that does not parse was
                            # torn by a truncated body: a connection failure.
                            if tail:
                                raise truncated(self.name) from exc
                            raise
                        if chunk is not None:
                            yield chunk
                        if reader.stopped:
                            return
            if not reader.finished:
                raise stream_ended_early(self.name, "message_stop")
        except APIError as exc:
            if reader is not None:
                reader.tell_partial_usage(exc)
            raise

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        async with self._open(http, request, stream=False) as response:
            raw = await response.read()
            request_id = response.headers.get("request-id")
        message = loads(raw, self.name, "response")
        if isinstance(message, dict) and message.get("type") == "error":
            error = error_from_event(message, provider=self.name)
            raise _refine(error, request_id)
        try:
            return _completion(message, self.name)
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            raise decode_error(self.name, "response is not a Message", raw) from exc

    async def count_tokens(self, request: ChatRequest, http: HTTPCall) -> int:
        """The prompt's tokens, from ``POST /v1/messages/count_tokens``."""
        full = self._body(request, stream=False)
        body = {key: full[key] for key in _COUNTED if key in full}
        async with http.open(
            "POST",
            f"{self.base_url}/v1/messages/count_tokens",
            provider=self.name,
            headers=self._headers_for("application/json", request.extra_headers),
            json_body=body,
            proxy_settings=self.proxy_settings,
        ) as response:
            raw = await response.read()
        answer = loads(raw, self.name, "token count")
        count = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise decode_error(self.name, "token count has no input_tokens", raw)
        return count

    async def list_models(self, http: HTTPCall) -> list[Model]:
        """Every model the key can use, following the list's pages."""
        models: list[Model] = []
        params = {"limit": "1000"}
        while True:
            page = await self._get_json(http, f"{self.base_url}/v1/models", params)
            items = page.get("data") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise decode_error(self.name, "model list has no data", json.dumps(page))
            models.extend(_model(item, self.name) for item in objects_with_string(items, "id"))
            last = page.get("last_id")
            if (
                not page.get("has_more")
                or not isinstance(last, str)
                or last == params.get("after_id")
            ):
                return models
            params = {"limit": "1000", "after_id": last}
