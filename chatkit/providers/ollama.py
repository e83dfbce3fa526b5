"""Ollama's native chat API: ``POST /api/chat``, streamed as NDJSON.

Wire references (what this file translates to and from):

- request and response objects: https://docs.ollama.com/api/chat and
  https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
- streaming (one JSON object per line, ``done: true`` last):
  https://docs.ollama.com/api/streaming
- errors (``{"error": "..."}`` bodies, error lines mid-stream):
  https://docs.ollama.com/api/errors
- tools: https://docs.ollama.com/capabilities/tool-calling; thinking
  (``think``, ``message.thinking``): https://docs.ollama.com/capabilities/thinking;
  ``format``: https://docs.ollama.com/capabilities/structured-outputs
- model list: ``GET /api/tags``, https://docs.ollama.com/api/tags

NDJSON is not SSE: lines are split here, from raw reads, with a size cap.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, ClassVar
from urllib.parse import urlsplit

from chatkit._config import check_base_url, env_value
from chatkit._errors import (
    APIStatusError,
    InvalidRequestError,
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
    StreamStart,
    body_reads,
    check_stream_type,
    compact_json,
    completion_from_chunk,
    decode_error,
    iso_timestamp,
    json_object,
    loads,
    new_completion_id,
    new_tool_call_id,
    objects_with_string,
    pause_every,
    stream_ended_early,
    token_usage,
    tool_call_delta,
    translated_errors,
    truncated,
)
from chatkit.providers._http import HTTPProvider
from chatkit.providers._ollama_request import chat_body, unsupported_param

__all__ = ["Ollama", "ollama_base_url"]

DEFAULT_PORT = 11434
_MAX_LINE = 16 * 1024 * 1024
# Runs of blank lines (CRLF ones included), collapsed in C: a flood of them
# costs no Python loop.
_BLANK_LINES = re.compile(rb"\n(?:[ \t\r]*\n)+")


def ollama_base_url(address: str) -> str:
    """The base URL for an ``OLLAMA_HOST``-style address.

    Like Ollama itself: ``host``, ``host:port`` and ``:port`` mean http on port
    11434 unless given; a URL with a scheme keeps its scheme's default port.
    A bind-all address (0.0.0.0, ::) means this machine.
    """
    value = address.strip()
    has_scheme = "://" in value
    parts = urlsplit(value if has_scheme else f"http://{value}")
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequestError(
            f"base_url: bad port in Ollama address {address!r}", field="base_url"
        ) from None
    host = parts.hostname or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    if port is None and not has_scheme:
        port = DEFAULT_PORT
    netloc = host if port is None else f"{host}:{port}"
    return check_base_url(f"{parts.scheme}://{netloc}{parts.path}")


class Ollama(HTTPProvider):
    """A local or remote Ollama server, through its native ``/api/chat``.

    The address comes from ``base_url=``, else ``OLLAMA_HOST``, else
    ``http://localhost:11434``. No key is needed; ``api_key=`` (or
    ``OLLAMA_API_KEY``) is sent as a bearer token, for servers behind an
    authenticating proxy or ollama.com. Images must be data URLs: Ollama does
    not fetch URLs, and chatkit does not fetch them on its behalf.
    """

    name: ClassVar[str] = "Ollama"
    default_base_url: ClassVar[str] = "http://localhost:11434"
    default_model: str = "llama3.2"
    capabilities: ClassVar[Capabilities] = Capabilities()
    max_line_size: int = _MAX_LINE

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        default_model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        keep_alive: str | float | None = None,
        proxy: str | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        address = base_url or env_value("OLLAMA_HOST") or self.default_base_url
        if not isinstance(address, str):
            raise InvalidRequestError("base_url must be a string URL", field="base_url")
        super().__init__(
            api_key,
            ollama_base_url(address),
            key_required=False,
            default_model=default_model,
            default_headers=default_headers,
            proxy=proxy,
            proxies=proxies,
            trust_env=trust_env,
            rate_limit=rate_limit,
            # Optional, so not ``api_key_env``: a set OLLAMA_API_KEY does not
            # make Ollama "configured" (OLLAMA_HOST does, see is_configured).
            key_env=("OLLAMA_API_KEY",),
        )
        self.keep_alive = keep_alive

    @classmethod
    def is_configured(cls) -> bool:
        """Whether the environment points at an Ollama server (``OLLAMA_HOST``).

        Nothing is probed: finding out whether a server answers would be I/O.
        """
        return env_value("OLLAMA_HOST") is not None

    # -- before any I/O ------------------------------------------------------

    def _unsupported_param(self, request: ChatRequest) -> str | None:
        return unsupported_param(request)

    def _unsupported_message(self, param: str, request: ChatRequest) -> str:
        return (
            f"{self.name} has no equivalent of {param}={request.params[param]!r}; pass"
            " Ollama fields in extra_body={...} instead"
        )

    def _check_body(self, request: ChatRequest) -> None:
        self._body(request, stream=request.stream)

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        model = request.model or self.default_model
        return chat_body(request, model=model, stream=stream, keep_alive=self.keep_alive)

    # -- HTTP ----------------------------------------------------------------

    def _open(
        self, http: HTTPCall, method: str, path: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[HTTPResponse]:
        opened = http.open(
            method,
            f"{self.base_url}{path}",
            provider=self.name,
            proxy_settings=self.proxy_settings,
            **kwargs,
        )
        return translated_errors(opened, _refine)

    def _chat(
        self, request: ChatRequest, http: HTTPCall, *, stream: bool
    ) -> AbstractAsyncContextManager[HTTPResponse]:
        accept = "application/x-ndjson" if stream else "application/json"
        return self._open(
            http,
            "POST",
            "/api/chat",
            headers=self._headers_for(accept, request.extra_headers),
            json_body=self._body(request, stream=stream),
            params=request.extra_query or None,
        )

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        reader = _ResponseReader(self.name)
        async with self._chat(request, http, stream=True) as response:
            check_stream_type(response, self.name, "ndjson")
            lines = _ndjson(response, self.max_line_size, self.name)
            async with aclosing(lines):
                async for line in lines:
                    chunk = reader.read_raw(line)
                    if chunk is not None:
                        yield chunk
                    if reader.finished:
                        break
        if not reader.finished:
            raise stream_ended_early(self.name, "its done line")

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        async with self._chat(request, http, stream=False) as response:
            raw = await response.read()
        chunk = _ResponseReader(self.name).read_raw(raw)
        return completion_from_chunk(chunk, self.name)

    async def list_models(self, http: HTTPCall) -> list[Model]:
        """The models pulled onto the server (``GET /api/tags``)."""
        async with self._open(
            http, "GET", "/api/tags", headers=self._headers_for("application/json")
        ) as response:
            body = await response.read()
        payload = loads(body, self.name, "model list")
        items = payload.get("models") if isinstance(payload, dict) else None
        return list(_models(items, self.name))


# -- response translation ----------------------------------------------------


class _Lines:
    """Splits a byte stream at newlines; a line over ``limit`` bytes is an error."""

    def __init__(self, limit: int, provider: str) -> None:
        self._limit = limit
        self._provider = provider
        self._parts: list[bytes] = []
        self._size = 0

    def _check(self, size: int) -> None:
        if size > self._limit:
            raise ResponseDecodeError(
                f"{self._provider}: an NDJSON line exceeds {self._limit} bytes",
                provider=self._provider,
            )

    def feed(self, data: bytes) -> list[bytes]:
        self._parts.append(data)
        self._size += len(data)
        if b"\n" not in data:
            self._check(self._size)
            return []
        # Joining only when a line ends keeps a long line linear, not quadratic.
        block = b"".join(self._parts)
        block = _BLANK_LINES.sub(b"\n", block)
        lines = block.split(b"\n")
        rest = lines.pop()
        self._parts = [rest] if rest else []
        self._size = len(rest)
        self._check(max(self._size, *(len(line) for line in lines)))
        return lines

    def flush(self) -> list[bytes]:
        rest = b"".join(self._parts)
        self._parts, self._size = [], 0
        return [rest]


def _decode(line: bytes, provider: str) -> dict[str, Any]:
    obj = json_object(line, provider, "response line")
    if "error" in obj:
        # Ollama's errors are bare strings; give the event builder a message.
        raise error_from_event({"message": str(obj["error"])}, provider=provider)
    return obj


async def _ndjson(response: HTTPResponse, limit: int, provider: str) -> AsyncGenerator[bytes]:
    """The body's non-blank lines, as they complete.

    The last line is checked here: a body that ends inside a line that does
    not parse was cut off (a connection failure, retried before content),
    which the caller could not tell from a malformed line; unless it is the
    only line and does not even start like one (a plain-text page).
    """
    lines = _Lines(limit, provider)
    step = pause_every()
    # Dropped at the first line: a body with none may be no stream at all.
    start: StreamStart | None = StreamStart()
    async with aclosing(body_reads(response)) as reads:
        async for data in reads:
            if start is not None:
                start.keep(data)
            produced = False
            for line in lines.feed(data):
                if line.strip():
                    produced = True
                    start = None
                    yield line
            await step(produced)
    for line in lines.flush():
        if line.strip():
            try:
                loads(line, provider, "response line")
            except ResponseDecodeError as exc:
                if start is not None:
                    # The whole body, unparsed: a text page is not a torn stream.
                    start.check(response, provider, "ndjson")
                raise truncated(provider, "a torn last line") from exc
            yield line


class _ResponseReader:
    """Turns ``/api/chat`` response objects into OpenAI chunks, statefully.

    The ``done`` object finishes the answer and carries its counts, so the
    finishing chunk carries the usage.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.id = new_completion_id()
        self.created = int(time.time())
        self.model = ""
        self.finished = False
        self.usage: CompletionUsage | None = None
        self._tool_calls = 0
        self._opened = False

    def read_raw(self, line: bytes) -> ChatCompletionChunk | None:
        """One response object (JSON text) as a chunk, or None.

        A field of the wrong type (``"content": 5``, ``"tool_calls": 5``) is a
        malformed response, reported as such, never a TypeError.
        """
        obj = _decode(line, self.provider)
        try:
            return self.read(obj)
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            raise decode_error(self.provider, "malformed response", line) from exc

    def read(self, obj: dict[str, Any]) -> ChatCompletionChunk | None:
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        message = obj.get("message")
        if message is None:
            message = {}
        elif not isinstance(message, dict):
            raise TypeError(f"message must be an object, not {type(message).__name__}")
        content = message.get("content") or ""
        thinking = message.get("thinking") or ""
        calls = [self._tool_call(c) for c in message.get("tool_calls") or ()]
        reason = None
        if obj.get("done") is True:
            self.finished = True
            raw = obj.get("done_reason") or "stop"
            reason = "tool_calls" if raw == "stop" and self._tool_calls else raw
            prompt = int(obj.get("prompt_eval_count") or 0)
            self.usage = token_usage(prompt, int(obj.get("eval_count") or 0))
        if not (content or thinking or calls or reason):
            return None
        delta = ChoiceDelta(
            content=content if content or not (thinking or calls) else None,
            reasoning_content=thinking or None,
            tool_calls=calls or None,
        )
        if not self._opened:
            self._opened = True
            delta.role = "assistant"
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=reason)],
            usage=self.usage if reason is not None else None,
        )
        set_provider(chunk, self.provider)
        return chunk

    def _tool_call(self, call: Any) -> ChoiceDeltaToolCall:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ResponseDecodeError(
                f"{self.provider}: a tool call without a function: {call!r:.200}",
                provider=self.provider,
            )
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = compact_json(arguments or {})
        index = self._tool_calls
        self._tool_calls += 1
        call_id = call.get("id") or new_tool_call_id()
        return tool_call_delta(index, call_id, function.get("name", ""), arguments)


def _refine(error: APIStatusError) -> APIStatusError:
    """Ollama's error bodies are ``{"error": "text"}``: put the text in the message."""
    body = error.body
    if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
        return error
    return type(error)(
        f"{error.provider}: {error.status_code} {body['error']}",
        status_code=error.status_code,
        body=body,
        headers=error.headers,
        provider=error.provider,
    )


def _models(items: Any, provider: str) -> Iterator[Model]:
    for item in objects_with_string(items or (), "name"):
        fields = {k: item[k] for k in ("size", "digest", "details", "modified_at") if k in item}
        yield Model.model_validate(
            {
                **fields,
                "id": item["name"],
                "created": iso_timestamp(item.get("modified_at")),
                "owned_by": "ollama",
                "provider": provider,
            }
        )
