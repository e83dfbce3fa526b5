"""Small pieces every HTTP provider needs: credentials, base URL, proxies, SSE reads.

Each wire API keeps its own file; what is the same for all of them (where a key
comes from and how its absence is reported, how a base URL is chosen, how an
SSE body becomes events, how OpenAI-style request fields are read and how
vendor answers become OpenAI-style objects) lives here once.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatkit._assemble import CompletionBuilder
from chatkit._config import check_base_url, check_header_value, env_value
from chatkit._errors import (
    APIConnectionError,
    APIStatusError,
    ChatkitError,
    InvalidRequestError,
    MissingAuthError,
    ResponseDecodeError,
    UnsupportedCapabilityError,
    error_from_event,
)
from chatkit._proxy import ProxySettings
from chatkit._request import ChatRequest, field_error
from chatkit._sse import SSEDecoder, SSEEvent
from chatkit._transport import HTTPCall, HTTPResponse
from chatkit._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    CompletionUsage,
    set_provider,
)

__all__ = [
    "Endpoint",
    "base64_data_url",
    "body_reads",
    "check_stream_type",
    "compact_json",
    "completion_from_chunk",
    "decode_error",
    "field_error",
    "first_unsupported_param",
    "function_declaration",
    "function_of_tool",
    "get_json",
    "image_url_of",
    "iso_timestamp",
    "json_object",
    "json_schema_of",
    "loads",
    "merge_extra_body",
    "new_completion_id",
    "new_tool_call_id",
    "objects_with_string",
    "output_token_limit",
    "pause_every",
    "provider_repr",
    "resolve_endpoint",
    "sse_batches",
    "StreamStart",
    "stop_sequences",
    "stream_ended_early",
    "text_of",
    "token_usage",
    "tool_call_arguments",
    "tool_call_delta",
    "translated_errors",
    "truncated",
]


@dataclass(frozen=True, repr=False)
class Endpoint:
    """Where a provider sends its requests, with which key and through which proxy.

    ``repr`` says whether a key is set, never what it is.
    """

    base_url: str
    api_key: str | None
    proxy_settings: ProxySettings | None

    def __repr__(self) -> str:
        return provider_repr("Endpoint", self.base_url, self.api_key)


def resolve_endpoint(
    provider: str,
    *,
    api_key: object,
    base_url: str | None,
    api_key_env: tuple[str, ...],
    base_url_env: tuple[str, ...],
    default_base_url: str,
    key_required: bool,
    proxy: str | None = None,
    proxies: Mapping[str, str] | None = None,
    trust_env: bool = True,
) -> Endpoint:
    """Resolve a provider's endpoint from its arguments, then the environment.

    Raises ``MissingAuthError`` naming the first variable of ``api_key_env``
    when ``key_required`` and no key was found. Nothing here does I/O.
    """
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidRequestError("api_key must be a string", field="api_key")
    url = check_base_url(base_url or env_value(*base_url_env) or default_base_url)
    key = api_key or env_value(*api_key_env)
    if key is not None:
        # A key copied with its newline would be sent as a broken header (or
        # refused by aiohttp mid-call): refuse it here, without quoting it.
        check_header_value(key, "api_key")
    if key is None and key_required:
        variable = api_key_env[0]
        raise MissingAuthError(
            f"{provider} needs an API key: set {variable} or pass api_key=...",
            provider=provider,
            env_var=variable,
        )
    settings = None
    if proxy is not None or proxies is not None:
        settings = ProxySettings.create(proxy=proxy, proxies=proxies, trust_env=trust_env)
    return Endpoint(url, key, settings)


# Reads in a row that completed no event before a stream yields to the event
# loop: aiohttp hands over buffered bytes without suspending, so a hostile
# upstream sending only blank lines or comments would otherwise hold the loop
# (and the deadline that cancels the call) for as long as it keeps sending.
_READS_PER_PAUSE = 8


def pause_every(reads: int = _READS_PER_PAUSE) -> Callable[[bool], Any]:
    """A step function for a read loop: ``await step(produced)`` after each read.

    It suspends (``asyncio.sleep(0)``) after ``reads`` reads in a row that
    produced nothing, and costs nothing otherwise.
    """
    idle = 0

    async def step(produced: bool) -> None:
        nonlocal idle
        if produced:
            idle = 0
            return
        idle += 1
        if idle >= reads:
            idle = 0
            await asyncio.sleep(0)

    return step


# The most bytes decoded in one go. A compressed body can inflate into one
# read of many megabytes; decoding it whole would hold the loop for as long,
# so it is cut into slices with a turn of the loop between them.
_SLICE = 256 * 1024


async def body_reads(response: HTTPResponse) -> AsyncGenerator[bytes]:
    """The body's reads, none over 256 KiB, yielding to the loop inside a big one."""
    async with aclosing(response.iter_bytes()) as reads:
        async for data in reads:
            if len(data) <= _SLICE:
                yield data
                continue
            for start in range(0, len(data), _SLICE):
                if start:
                    await asyncio.sleep(0)
                yield data[start : start + _SLICE]


def truncated(provider: str, what: str = "a torn last event") -> APIConnectionError:
    """The error for a body that broke off mid-event: a connection failure."""
    return APIConnectionError(
        f"{provider}: the stream was truncated ({what} at the end of the body)",
        provider=provider,
    )


_STREAM_TYPES = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}
# Pages, not streams: an HTML error or login page answered with 200 (a captive
# portal, a misconfigured gateway, a web UI URL given as base_url).
_PAGE_TYPES = ("text/html", "application/xhtml+xml")


def check_stream_type(response: HTTPResponse, provider: str, expected: str) -> None:
    """Refuse a 200 answer that is a web page, not the ``expected`` stream.

    A page has no events, so without this check it would end like a dropped
    connection and be retried; it is the wrong endpoint, which retrying cannot fix.
    Other content types pass: servers label streams loosely.
    """
    content_type = response.headers.get("Content-Type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media in _PAGE_TYPES:
        wanted = _STREAM_TYPES.get(expected, expected)
        raise ResponseDecodeError(
            f"{provider}: the server answered {media} instead of {wanted}"
            " (is base_url the API endpoint?)",
            provider=provider,
        )


# How much of a body that has produced no event is kept, to say what it was if
# it never does: error objects and pages are small, and a flood of blank lines
# before the first event must not grow this.
_START_LIMIT = 64 * 1024
_SNIPPET = 200
_SSE_FIELDS = (b"data", b"event", b"id", b"retry")
# A run of characters a key could be made of, at the end of a cut snippet: it
# may be the start of a key, which scrubbing (whole keys only) would not catch.
_TORN_TOKEN = re.compile(r"[\w\-.~+/=]+$")


class StreamStart:
    """The first bytes of a stream body, kept while it has produced no event.

    A 200 answer that ends without one is either a stream cut short (a
    connection failure, retried) or no stream at all: a JSON error object or
    a plain-text page answered by a proxy, a gateway or a misrouted base URL.
    Retrying cannot fix that, and its text is the only hint of what went wrong.
    """

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def keep(self, data: bytes) -> None:
        room = _START_LIMIT - self._size
        if not self._size:
            data = data.lstrip()
        if room > 0 and data:
            piece = data[:room]
            self._parts.append(piece)
            self._size += len(piece)

    def check(self, response: HTTPResponse, provider: str, expected: str) -> None:
        """Raise when the body, which produced no event, was not an ``expected`` stream.

        Returns (the caller reports a truncation) for an empty body and for
        one that looks like the start of the stream, torn.
        """
        error = not_a_stream(b"".join(self._parts), response, provider, expected)
        if error is not None:
            raise error


def not_a_stream(
    head: bytes, response: HTTPResponse, provider: str, expected: str
) -> ChatkitError | None:
    """The error for a stream body that held ``head`` and no event, or None.

    A JSON object with an ``error`` is the typed status error it describes;
    anything that does not start like the ``expected`` stream is a decode
    error quoting its content type and start. None for an empty body or the
    torn start of a stream: those were cut off.
    """
    text = head.strip()
    if not text:
        return None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict) and payload.get("error"):
        error = payload["error"]
        described = error if isinstance(error, dict) else {"message": str(error)}
        return error_from_event(described, provider=provider)
    if _starts_like(expected, text):
        return None
    content_type = response.headers.get("Content-Type", "") or "none"
    wanted = _STREAM_TYPES.get(expected, expected)
    return ResponseDecodeError(
        f"{provider}: the answer is not a {wanted} stream (Content-Type:"
        f" {content_type[:100]}): {_snippet(text)!r}",
        provider=provider,
    )


def _starts_like(expected: str, text: bytes) -> bool:
    """Whether ``text`` (stripped, not empty) could be the start of the stream."""
    if expected == "ndjson":
        return text.startswith(b"{")
    line = text.split(b"\n", 1)[0].rstrip(b"\r")
    if line.startswith(b":"):
        return True  # a comment, as keep-alives are
    name, colon, _ = line.partition(b":")
    if colon:
        return name in _SSE_FIELDS
    # No colon yet: the first field's name, torn, or a field with no value.
    return any(field.startswith(line) for field in _SSE_FIELDS)


def _snippet(text: bytes) -> str:
    decoded = text[: _SNIPPET * 4].decode("utf-8", "replace")
    if len(decoded) <= _SNIPPET:
        return decoded
    return _TORN_TOKEN.sub("", decoded[:_SNIPPET]) + "..."


async def sse_batches(
    response: HTTPResponse, provider: str
) -> AsyncGenerator[tuple[list[SSEEvent], bool]]:
    """The response body's SSE events, one list per network read, and whether
    the list is the body's unterminated tail.

    Batches rather than single events: one generator step per read keeps the
    per-event cost on the hot path down to the caller's own loop. The tail
    (what was still pending at the end of the body) is flagged: a tail event
    that does not parse was torn by a truncated body (see :func:`truncated`).
    A body that ends without any event raises when it was no stream at all
    (see :class:`StreamStart`).
    """
    decoder = SSEDecoder()
    step = pause_every()
    start: StreamStart | None = StreamStart()
    async with aclosing(body_reads(response)) as reads:
        async for data in reads:
            if start is not None:
                start.keep(data)
            events = decoder.feed(data)
            if events:
                start = None
                yield events, False
            await step(bool(events))
    tail = decoder.flush()
    if tail:
        yield tail, True
    elif start is not None:
        start.check(response, provider, "sse")


def provider_repr(name: str, base_url: str, api_key: str | None) -> str:
    """A provider's repr: whether a key is set, never what it is."""
    return f"{name}(base_url={base_url!r}, api_key={'set' if api_key else 'none'})"


# -- requests: OpenAI-style input read the same way for every vendor ---------


def first_unsupported_param(
    request: ChatRequest, refused: Mapping[str, Callable[[Any], bool]]
) -> str | None:
    """The first parameter of ``request`` whose value asks for what ``refused`` lists."""
    for name, asks in refused.items():
        value = request.params.get(name)
        if value is not None and asks(value):
            return name
    return None


def text_of(content: Any) -> str:
    """Message content as plain text: a string as is, text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text")
    return ""


def image_url_of(part: Mapping[str, Any]) -> str:
    """An ``image_url`` part's URL; the part may hold it bare or as ``{"url": ...}``."""
    image = part["image_url"]
    url: str = image["url"] if isinstance(image, Mapping) else image
    return url


def base64_data_url(url: str) -> tuple[str, str] | None:
    """``(media type, data)`` of a ``data:<type>;base64,<data>`` URL, else None."""
    header, comma, data = url.removeprefix("data:").partition(",")
    media_type, _, encoding = header.partition(";")
    if not url.startswith("data:") or not comma or encoding != "base64" or not media_type:
        return None
    return media_type, data


def tool_call_arguments(function: Mapping[str, Any], field: str) -> dict[str, Any]:
    """An assistant tool call's arguments (OpenAI sends JSON text) as an object."""
    raw = function.get("arguments") or "{}"
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        parsed = None
    except RecursionError:
        # Valid JSON nested past the parser's limit: the caller's input, not a crash.
        raise field_error("tool call arguments nest too deeply", field) from None
    if not isinstance(parsed, dict):
        raise field_error("tool call arguments must be a JSON object", field)
    return parsed


def function_of_tool(tool: Any, where: str, provider: str) -> Mapping[str, Any]:
    """A function tool's ``function``; any other kind of tool is refused."""
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
        raise UnsupportedCapabilityError(
            f"{where}: {provider} takes function tools only", field=where
        )
    return function


def function_declaration(function: Mapping[str, Any]) -> dict[str, Any]:
    """A function tool's name, and its description when it has one; vendors add the schema."""
    declaration: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    return declaration


def json_schema_of(response_format: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema of a ``json_schema`` response format, which must have one."""
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise field_error("json_schema needs json_schema.schema", "response_format")
    return schema


def stop_sequences(stop: str | Iterable[str]) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop)


def output_token_limit(params: Mapping[str, Any]) -> Any:
    """The answer's token budget; ``max_completion_tokens`` replaced ``max_tokens``."""
    return params.get("max_completion_tokens", params.get("max_tokens"))


def merge_extra_body(body: dict[str, Any], extra_body: Mapping[str, Any]) -> None:
    """Add ``extra_body`` one level deep: an object extends the translated one."""
    for key, value in extra_body.items():
        current = body.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            body[key] = {**current, **value}
        else:
            body[key] = value


# -- responses: vendor answers as OpenAI-style objects -----------------------


def decode_error(provider: str, what: str, data: str | bytes) -> ResponseDecodeError:
    return ResponseDecodeError(f"{provider}: {what}: {data[:200]!r}", provider=provider)


def loads(data: str | bytes, provider: str, subject: str) -> Any:
    """``data`` parsed as JSON; ``subject`` names it in errors.

    Nesting deeper than the parser's recursion limit (``[[[[...``) is a
    malformed body like any other, not a ``RecursionError``.
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise decode_error(provider, f"{subject} is not JSON", data) from exc


def json_object(data: str | bytes, provider: str, subject: str) -> dict[str, Any]:
    """``data`` parsed, which must be a JSON object; ``subject`` names it in errors."""
    parsed = loads(data, provider, subject)
    if not isinstance(parsed, dict):
        raise decode_error(provider, f"{subject} is not a JSON object", data)
    return parsed


def stream_ended_early(provider: str, missing: str) -> APIConnectionError:
    """The error for a stream that closed before ``missing``, its end marker, arrived.

    A plain connection error: before any content it is retried; after content
    the retry layer reports it as the cause of a ``StreamInterrupted``.
    """
    return APIConnectionError(
        f"{provider}: the stream ended early, before {missing}", provider=provider
    )


def new_completion_id() -> str:
    # For vendors whose answers carry no id of their own.
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_tool_call_id() -> str:
    # For vendors that rarely send call ids: OpenAI-style callers answer by id.
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call_delta(index: int, call_id: str, name: str, arguments: str) -> ChoiceDeltaToolCall:
    """The delta that opens tool call ``index``."""
    function = ChoiceDeltaFunctionCall(name=name, arguments=arguments)
    return ChoiceDeltaToolCall(index=index, id=call_id, type="function", function=function)


def compact_json(value: Any) -> str:
    """Tool call arguments, which vendors send as objects, as OpenAI's JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def token_usage(prompt: int, completion: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def completion_from_chunk(chunk: ChatCompletionChunk | None, provider: str) -> ChatCompletion:
    """A non-streamed answer, read as one chunk, assembled as a stream would be."""
    builder = CompletionBuilder()
    if chunk is not None:
        builder.add(chunk)
    completion = builder.build()
    set_provider(completion, provider)
    return completion


@asynccontextmanager
async def translated_errors(
    opened: AbstractAsyncContextManager[HTTPResponse],
    translate: Callable[[APIStatusError], APIStatusError],
) -> AsyncIterator[HTTPResponse]:
    """``opened``'s response, with status errors (from the open or the body) translated.

    ``translate`` returns the error itself when it has nothing to add.
    """
    try:
        async with opened as response:
            yield response
    except APIStatusError as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


async def get_json(
    http: HTTPCall,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    proxy_settings: ProxySettings | None,
    params: Mapping[str, str] | None = None,
) -> Any:
    """The JSON body of ``GET url`` (a model list, a page of one)."""
    async with http.open(
        "GET",
        url,
        provider=provider,
        headers=headers,
        params=params,
        proxy_settings=proxy_settings,
    ) as response:
        body = await response.read()
    return loads(body, provider, "response body")


def objects_with_string(items: Any, key: str) -> Iterator[dict[str, Any]]:
    """The objects among ``items`` whose ``key`` is a string.

    Anything else in a vendor's list is skipped rather than failing the whole
    list; ``items`` that is not a list at all holds nothing.
    """
    if not isinstance(items, list | tuple):
        return
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(key), str):
            yield item


def iso_timestamp(value: Any) -> int:
    """Seconds since the epoch for an RFC 3339 time, else 0.

    Fractions beyond microseconds (Ollama's times have nanoseconds) are cut first.
    """
    if not isinstance(value, str):
        return 0
    head, dot, rest = value.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
