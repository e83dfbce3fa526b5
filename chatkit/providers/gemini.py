"""Google Gemini through the Generative Language API (``generateContent``).

Wire references (what this file translates to and from):

- requests and ``GenerateContentResponse``: https://ai.google.dev/api/generate-content
- ``Content`` / ``Part`` (text, inlineData, fileData, functionCall,
  functionResponse, thought): https://ai.google.dev/api/caching#Content
- function calling and ``toolConfig``: https://ai.google.dev/gemini-api/docs/function-calling
- thought signatures: https://ai.google.dev/gemini-api/docs/thought-signatures
- file inputs (inline data, external URLs): https://ai.google.dev/gemini-api/docs/file-input-methods
- error bodies ``{"error": {"code", "message", "status", "details"}}``:
  https://ai.google.dev/gemini-api/docs/troubleshooting
- model list: https://ai.google.dev/api/models#method:-models.list

The key travels in the ``x-goog-api-key`` header only: a key in the URL would
end up in proxies' logs and in error messages.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, ClassVar
from urllib.parse import quote

from chatkit._errors import (
    APIStatusError,
    AuthenticationError,
    ResponseDecodeError,
    error_from_event,
)
from chatkit._ratelimit import RateLimit
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall, HTTPResponse
from chatkit._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChunkChoice,
    CompletionUsage,
    Model,
    set_provider,
)
from chatkit.providers._base import Capabilities
from chatkit.providers._common import (
    check_stream_type,
    compact_json,
    completion_from_chunk,
    decode_error,
    json_object,
    loads,
    new_completion_id,
    new_tool_call_id,
    objects_with_string,
    sse_batches,
    stream_ended_early,
    tool_call_delta,
    translated_errors,
    truncated,
)
from chatkit.providers._gemini_request import generate_content_body, unsupported_param
from chatkit.providers._http import HTTPProvider

__all__ = ["Gemini"]

# https://ai.google.dev/api/generate-content#FinishReason; STOP becomes
# "tool_calls" when the candidate called a function. Other values pass through
# lower-cased so callers can still see why generation ended.
_FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"),
    "content_filter",
)
# The pydantic extra field a tool call's thought signature travels in.
_EXTRA = "extra_content"
_MODEL_FIELDS = ("displayName", "description", "inputTokenLimit", "outputTokenLimit")


class Gemini(HTTPProvider):
    """Gemini models through ``generativelanguage.googleapis.com``.

    The key comes from ``api_key=``, else ``GEMINI_API_KEY``, else
    ``GOOGLE_API_KEY``; it is required unless ``base_url`` is given (a gateway
    that adds it). ``image_url`` parts with data URLs go inline; http(s) URLs
    are sent as ``fileData`` for the API to fetch.
    """

    name: ClassVar[str] = "Gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"
    api_key_env: ClassVar[tuple[str, ...]] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    default_model: str = "gemini-2.5-flash"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        default_model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        api_version: str = "v1beta",
        proxy: str | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            key_required=base_url is None,
            default_model=default_model,
            default_headers=default_headers,
            proxy=proxy,
            proxies=proxies,
            trust_env=trust_env,
            rate_limit=rate_limit,
        )
        self.api_version = api_version.strip("/")

    # -- before any I/O ------------------------------------------------------

    def _unsupported_param(self, request: ChatRequest) -> str | None:
        return unsupported_param(request)

    def _unsupported_message(self, param: str, request: ChatRequest) -> str:
        return (
            f"{self.name} has no equivalent of {param!r}; pass Gemini fields in"
            " extra_body={...} instead"
        )

    def _check_body(self, request: ChatRequest) -> None:
        self._body(request)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        return generate_content_body(request, model=request.model or self.default_model)

    # -- HTTP ----------------------------------------------------------------

    def _auth_headers(self, accept: str) -> dict[str, str]:
        # The key travels in a header, never in the URL (see the module docstring).
        headers = {"Accept": accept}
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        return headers

    def _url(self, model: str, method: str) -> str:
        resource = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        return f"{self.base_url}/{self.api_version}/{quote(resource, safe='/')}:{method}"

    def _post(
        self, request: ChatRequest, http: HTTPCall, *, stream: bool
    ) -> AbstractAsyncContextManager[HTTPResponse]:
        model = request.model or self.default_model
        params = {"alt": "sse"} if stream else {}
        params.update(request.extra_query)
        method = "streamGenerateContent" if stream else "generateContent"
        accept = "text/event-stream" if stream else "application/json"
        opened = http.open(
            "POST",
            self._url(model, method),
            provider=self.name,
            headers=self._headers_for(accept, request.extra_headers),
            json_body=self._body(request),
            params=params or None,
            proxy_settings=self.proxy_settings,
        )
        return translated_errors(opened, _refine)

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        reader = _ResponseReader(self.name)
        async with self._post(request, http, stream=True) as response:
            check_stream_type(response, self.name, "sse")
            async for events, tail in sse_batches(response, self.name):
                for event in events:
                    try:
                        chunk = reader.read_raw(event.data)
                    except ResponseDecodeError as exc:
                        # An unterminated last event that does not parse was
                        # torn by a truncated body: a connection failure.
                        if tail:
                            raise truncated(self.name) from exc
                        raise
                    if chunk is not None:
                        yield chunk
        if not reader.finished:
            raise stream_ended_early(self.name, "a finishReason")

    async def count_tokens(self, request: ChatRequest, http: HTTPCall) -> int:
        """The prompt's tokens, from ``models/{model}:countTokens`` (the whole
        request: system instruction and tools count too)."""
        model = request.model or self.default_model
        resource = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        body = {"generateContentRequest": {"model": resource, **self._body(request)}}
        opened = http.open(
            "POST",
            self._url(model, "countTokens"),
            provider=self.name,
            headers=self._headers_for("application/json", request.extra_headers),
            json_body=body,
            proxy_settings=self.proxy_settings,
        )
        async with translated_errors(opened, _refine) as response:
            raw = await response.read()
        answer = loads(raw, self.name, "token count")
        count = answer.get("totalTokens") if isinstance(answer, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise decode_error(self.name, "token count has no totalTokens", raw)
        return count

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        async with self._post(request, http, stream=False) as response:
            raw = await response.read()
        chunk = _ResponseReader(self.name).read_raw(raw)
        return completion_from_chunk(chunk, self.name)

    async def list_models(self, http: HTTPCall) -> list[Model]:
        """Models that can ``generateContent``, every page of them."""
        models: list[Model] = []
        token: str | None = None
        for _ in range(100):  # a bound on pages, in case a server keeps paging
            params = {"pageSize": "1000", **({"pageToken": token} if token else {})}
            page = await self._get_json(http, f"{self.base_url}/{self.api_version}/models", params)
            if not isinstance(page, dict):
                raise ResponseDecodeError(
                    f"{self.name}: model list is not an object", provider=self.name
                )
            models.extend(_models(page.get("models"), self.name))
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                break
        return models


# -- response translation ----------------------------------------------------


def _decode(data: str | bytes, provider: str) -> dict[str, Any]:
    payload = json_object(data, provider, "response")
    if "error" in payload:
        raise error_from_event(payload, provider=provider)
    return payload


class _ResponseReader:
    """Turns ``GenerateContentResponse`` objects into OpenAI chunks, statefully.

    A stream is complete once a candidate reports a ``finishReason`` (or the
    prompt was blocked). The chunk that finishes carries the usage: the last
    ``usageMetadata`` seen, which Gemini repeats, growing, on every event.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.id = new_completion_id()
        self.model = ""
        self.created = int(time.time())
        self.finished = False
        self._usage_metadata: dict[str, Any] | None = None
        self._tool_calls: dict[int, int] = {}  # candidate index -> calls so far
        self._opened: set[int] = set()

    def read_raw(self, data: str | bytes) -> ChatCompletionChunk | None:
        """One ``GenerateContentResponse`` (JSON text) as a chunk, or None.

        A field of the wrong type (``"candidates": 5``, ``"parts": "x"``) is a
        malformed response, reported as such, never an AttributeError.
        """
        payload = _decode(data, self.provider)
        try:
            return self.read(payload)
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            raise decode_error(self.provider, "malformed response", data) from exc

    def read(self, payload: dict[str, Any]) -> ChatCompletionChunk | None:
        # Runs once per event: plain dict reads, and usage is only built for
        # the chunk that finishes, not for every event that repeats it.
        get = payload.get
        if isinstance(value := get("responseId"), str):
            self.id = value
        if isinstance(value := get("modelVersion"), str):
            self.model = value
        if isinstance(value := get("usageMetadata"), dict):
            self._usage_metadata = value
        candidates = get("candidates")
        finishing = False
        choices: list[ChunkChoice] = []
        for candidate in candidates or ():
            choice = self._choice(candidate)
            if choice is not None:
                choices.append(choice)
                finishing = finishing or choice.finish_reason is not None
        if not candidates and (get("promptFeedback") or {}).get("blockReason"):
            # A refused prompt gets no candidate at all, only the reason.
            self.finished = finishing = True
            delta = ChoiceDelta(role="assistant", content="")
            choices = [ChunkChoice(delta=delta, finish_reason="content_filter")]
        if not choices:
            return None
        meta = self._usage_metadata
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=_usage(meta) if finishing and meta is not None else None,
        )
        set_provider(chunk, self.provider)
        return chunk

    def _choice(self, candidate: dict[str, Any]) -> ChunkChoice | None:
        index = candidate.get("index", 0)
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[ChoiceDeltaToolCall] = []
        content = candidate.get("content")
        for part in content.get("parts") or () if content else ():
            piece = part.get("text")
            if "functionCall" in part:
                calls.append(self._tool_call(index, part))
            elif isinstance(piece, str):
                (thoughts if part.get("thought") else text).append(piece)
        raw_reason = candidate.get("finishReason")
        if not (text or thoughts or calls or raw_reason):
            return None
        if thoughts or calls:
            delta = ChoiceDelta(
                content="".join(text) if text else None,
                reasoning_content="".join(thoughts) or None,
                tool_calls=calls or None,
            )
        else:
            delta = ChoiceDelta(content="".join(text))
        if index not in self._opened:
            self._opened.add(index)
            delta.role = "assistant"
        reason = None
        if isinstance(raw_reason, str):
            self.finished = True
            reason = _FINISH_REASONS.get(raw_reason, raw_reason.lower())
            if reason == "stop" and self._tool_calls.get(index):
                reason = "tool_calls"
        return ChunkChoice(index=index, delta=delta, finish_reason=reason)

    def _tool_call(self, candidate: int, part: dict[str, Any]) -> ChoiceDeltaToolCall:
        call = part["functionCall"]
        position = self._tool_calls.get(candidate, 0)
        self._tool_calls[candidate] = position + 1
        call_id = call.get("id") or new_tool_call_id()
        arguments = compact_json(call.get("args") or {})
        delta = tool_call_delta(position, call_id, call.get("name", ""), arguments)
        if part.get("thoughtSignature"):
            # Where Google's own OpenAI-compatible endpoint puts it, so the
            # signature survives a round trip through the caller's history.
            signature = {"google": {"thought_signature": part["thoughtSignature"]}}
            setattr(delta, _EXTRA, signature)
        return delta


def _usage(meta: dict[str, Any]) -> CompletionUsage:
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    fields: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
    }
    if thoughts:
        fields["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    cached = meta.get("cachedContentTokenCount")
    if cached:
        fields["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return CompletionUsage.model_validate(fields)


def _refine(error: APIStatusError) -> APIStatusError:
    """Read what Google puts in the error body, not in headers.

    A bad key is a 400 with reason API_KEY_INVALID (an authentication error to
    callers), and a 429 says how long to wait in a ``RetryInfo`` detail.
    """
    body = error.body if isinstance(error.body, dict) else {}
    raw_details = body.get("details")
    # Only a list holds details: a number or an object there is not iterated.
    details = (
        [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
    )
    has_hint = any(k.lower() in ("retry-after", "retry-after-ms") for k in error.headers)
    for detail in details:
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s") and not has_hint:
            with suppress(ValueError):
                error.headers["retry-after"] = str(max(float(delay[:-1]), 0.0))
    if not isinstance(error, AuthenticationError) and any(
        d.get("reason") == "API_KEY_INVALID" for d in details
    ):
        return AuthenticationError(
            error.message,
            status_code=error.status_code,
            body=error.body,
            headers=error.headers,
            provider=error.provider,
        )
    return error


def _models(items: Any, provider: str) -> Iterator[Model]:
    for item in objects_with_string(items or (), "name"):
        methods = item.get("supportedGenerationMethods")
        if isinstance(methods, list) and "generateContent" not in methods:
            continue  # embedding and other non-chat models
        fields = {k: item[k] for k in _MODEL_FIELDS if k in item}
        name = item["name"].removeprefix("models/")
        yield Model.model_validate(
            {**fields, "id": name, "owned_by": "google", "provider": provider}
        )
