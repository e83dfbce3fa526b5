"""OpenAI Chat Completions, and every server that speaks it.

One wire format, one file: OpenAI itself, OpenAI-compatible vendors (through
``base_url`` presets) and local servers (vLLM, llama.cpp, LM Studio) all run
through ``OpenAI``. Chunks are validated straight from the SSE bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from pydantic import ValidationError

from chatkit._errors import ResponseDecodeError, error_from_event
from chatkit._ratelimit import RateLimit
from chatkit._request import ChatRequest
from chatkit._sse import SSEDecoder, SSEEvent
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletion, ChatCompletionChunk, Model, set_provider
from chatkit.providers._base import Capabilities
from chatkit.providers._common import (
    StreamStart,
    body_reads,
    check_stream_type,
    objects_with_string,
    stream_ended_early,
    truncated,
)
from chatkit.providers._http import EVERYTHING, HTTPProvider

__all__ = ["OpenAI"]

# Reads in a row without an event before the stream yields to the event loop
# (see _common.pause_every; inlined here because this is the hot path).
_IDLE_READS = 8


def _is_done(text: str) -> bool:
    """The end marker, with whatever whitespace a server puts around it.

    openai-python checks ``startswith("[DONE]")``; so does chatkit.
    """
    return text.lstrip().startswith("[DONE]")


class OpenAI(HTTPProvider):
    """An OpenAI-compatible Chat Completions endpoint.

    ``OpenAI()`` reads ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``. A key is
    required unless ``base_url`` is passed explicitly (local servers rarely
    want one). Subclasses declare presets by overriding the class attributes.
    """

    name: ClassVar[str] = "OpenAI"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    api_key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    base_url_env: ClassVar[tuple[str, ...]] = ("OPENAI_BASE_URL",)
    default_model: str = "gpt-4o-mini"
    requires_key: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        default_model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            # An explicit base_url is often a local server, which rarely wants a key.
            key_required=self.requires_key and base_url is None,
            default_model=default_model,
            default_headers=default_headers,
            proxy=proxy,
            proxies=proxies,
            trust_env=trust_env,
            rate_limit=rate_limit,
        )

    def _request_headers(self, request: ChatRequest) -> dict[str, str]:
        accept = "text/event-stream" if request.stream else "application/json"
        return self._headers_for(accept, request.extra_headers)

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": request.messages,
        }
        body.update(request.params)
        messages = request.messages
        if self.capabilities.continue_message and messages and messages[-1]["role"] == "assistant":
            # vLLM's and llama.cpp's way to continue a final assistant message
            # (a prefill) instead of answering it; extra_body may still say otherwise.
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body.update(request.extra_body)
        body["stream"] = stream
        if stream and self._asks_usage(request):
            body["stream_options"] = {"include_usage": True}
        return body

    def _asks_usage(self, request: ChatRequest) -> bool:
        """Whether chatkit adds ``include_usage`` itself (the caller did not set
        ``stream_options``): then the usage-only chunk is folded into the
        finishing chunk rather than handed to the caller."""
        return (
            self.capabilities.stream_usage
            and "stream_options" not in request.params
            and "stream_options" not in request.extra_body
        )

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        name = self.name
        # The validator itself, not model_validate_json: this runs once per
        # chunk and the wrapper's keyword handling is a measurable share of it.
        validate = ChatCompletionChunk.__pydantic_validator__.validate_json
        decoder = SSEDecoder()
        finished = False
        idle = 0
        # Dropped at the first event: the check at the end is for bodies with none.
        start: StreamStart | None = StreamStart()
        # With usage asked for by chatkit, the finishing chunk waits for the
        # usage-only chunk that follows it, and takes its usage.
        folds = self._asks_usage(request)
        ending: ChatCompletionChunk | None = None
        async with (
            http.open(
                "POST",
                f"{self.base_url}/chat/completions",
                provider=name,
                headers=self._request_headers(request),
                json_body=self._body(request, True),
                params=request.extra_query or None,
                proxy_settings=self.proxy_settings,
            ) as response,
            contextlib.aclosing(body_reads(response)) as reads,
        ):
            check_stream_type(response, name, "sse")
            # aclosing: returning at [DONE] must close the reader now, not
            # leave it to the loop's async-generator finalizer as a stray task.
            async for data in reads:
                if start is not None:
                    start.keep(data)
                # Plain message events come as bare strings: a read of a
                # thousand events allocates nothing the garbage collector tracks.
                events = decoder.feed_messages(data)
                if not events:
                    # aiohttp hands over buffered bytes without suspending: a
                    # flood of blank lines must not hold the loop (or the
                    # deadline that would cancel this call).
                    idle += 1
                    if idle >= _IDLE_READS:
                        idle = 0
                        await asyncio.sleep(0)
                    continue
                idle = 0
                start = None
                for event in events:
                    # The per-chunk path, kept inline: parse straight from the
                    # event text, stamp the provider, hand the chunk on.
                    text = event if isinstance(event, str) else event.data
                    if text == "[DONE]":
                        if ending is not None:
                            yield ending
                        return
                    try:
                        chunk: ChatCompletionChunk = validate(text)
                    except ValidationError as exc:
                        if _is_done(text):
                            if ending is not None:
                                yield ending
                            return
                        raise self._decode_error(text) from exc
                    choices = chunk.choices
                    chunk.__dict__["provider"] = name  # what set_provider does, minus a call
                    if ending is not None:
                        if not choices and chunk.usage is not None:
                            ending.usage, chunk = chunk.usage, ending
                            ending = None
                            yield chunk
                            continue
                        yield ending
                        ending = None
                    if not choices:
                        self._check_choiceless(chunk, event)
                    elif choices[0].finish_reason:
                        finished = True
                        if folds:
                            ending = chunk
                            continue
                    yield chunk
            if ending is not None:
                yield ending
                ending = None
            tail = decoder.flush_messages()
            if start is not None and not tail:
                # No event at all: a JSON error or a page is not a dropped stream.
                start.check(response, name, "sse")
            for event in tail:
                # What was pending when the body ended: an unterminated last
                # event. One that does not parse was torn by the truncation.
                try:
                    chunk_or_done = self._parse(event)
                except ResponseDecodeError as exc:
                    raise truncated(name) from exc
                if chunk_or_done is None:
                    return
                finished = finished or bool(
                    chunk_or_done.choices and chunk_or_done.choices[0].finish_reason
                )
                set_provider(chunk_or_done, name)
                yield chunk_or_done
        if not finished:
            raise stream_ended_early(name, "a finish_reason or [DONE]")

    def _parse(self, event: str | SSEEvent) -> ChatCompletionChunk | None:
        """One event as a chunk; None for ``[DONE]``. Raises for error events."""
        text = event if isinstance(event, str) else event.data
        if _is_done(text):
            return None
        try:
            chunk = ChatCompletionChunk.model_validate_json(text)
        except ValidationError as exc:
            raise self._decode_error(text) from exc
        if not chunk.choices:
            self._check_choiceless(chunk, event)
        return chunk

    def _decode_error(self, data: str) -> ResponseDecodeError:
        return ResponseDecodeError(
            f"{self.name}: stream event is not a valid chunk: {data[:200]!r}",
            provider=self.name,
        )

    def _check_choiceless(self, chunk: ChatCompletionChunk, event: str | SSEEvent) -> None:
        """A chunk without choices may be an error in disguise: raise it as one.

        A usage chunk or Azure's ``prompt_filter_results`` chunk sends
        ``"choices": []``; an object without ``choices`` at all is not a chunk
        (it would otherwise pass as an empty answer). ``event`` is a bare
        string for plain ``message`` events.
        """
        extra = chunk.__pydantic_extra__
        if extra and "error" in extra:
            raise error_from_event(extra["error"], provider=self.name)
        if not isinstance(event, str) and event.event == "error":
            raise error_from_event(extra or event.data, provider=self.name)
        if "choices" not in chunk.model_fields_set:
            text = event if isinstance(event, str) else event.data
            raise self._decode_error(text)

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        async with http.open(
            "POST",
            f"{self.base_url}/chat/completions",
            provider=self.name,
            headers=self._request_headers(request),
            json_body=self._body(request, False),
            params=request.extra_query or None,
            proxy_settings=self.proxy_settings,
        ) as response:
            body = await response.read()
        try:
            completion = ChatCompletion.model_validate_json(body)
        except ValidationError as exc:
            raise ResponseDecodeError(
                f"{self.name}: response is not a chat completion: {body[:200]!r}",
                provider=self.name,
            ) from exc
        extra = completion.__pydantic_extra__
        if not completion.choices and extra and "error" in extra:
            raise error_from_event(extra["error"], provider=self.name)
        if "choices" not in completion.model_fields_set:
            raise ResponseDecodeError(
                f"{self.name}: response is not a chat completion: {body[:200]!r}",
                provider=self.name,
            )
        set_provider(completion, self.name)
        return completion

    async def list_models(self, http: HTTPCall) -> list[Model]:
        payload = await self._get_json(http, f"{self.base_url}/models")
        items = payload.get("data", []) if isinstance(payload, dict) else []
        models = []
        for item in objects_with_string(items, "id"):
            model = Model.model_validate(item)
            model.provider = self.name
            models.append(model)
        return models
