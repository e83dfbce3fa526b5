"""OpenAI Chat Completions, and every server that speaks it.

One wire format, one file: OpenAI itself, OpenAI-compatible vendors (through
``base_url`` presets) and local servers (vLLM, llama.cpp, LM Studio) all run
through ``OpenAI``. Chunks are validated straight from the SSE bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from pydantic import ValidationError

from chatkit._config import check_base_url, env_value
from chatkit._errors import (
    InvalidRequestError,
    MissingAuthError,
    ResponseDecodeError,
    StreamInterrupted,
    error_from_event,
)
from chatkit._proxy import ProxySettings
from chatkit._request import ChatRequest
from chatkit._sse import SSEDecoder
from chatkit._transport import HTTPClient
from chatkit._types import ChatCompletion, ChatCompletionChunk, Model, set_provider
from chatkit.providers._base import Capabilities

__all__ = ["OpenAI"]


class OpenAI:
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
    capabilities: ClassVar[Capabilities] = Capabilities()

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
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidRequestError("api_key must be a string", field="api_key")
        explicit_url = base_url is not None
        url = base_url or env_value(*self.base_url_env) or self.default_base_url
        self.base_url = check_base_url(url)
        key = api_key or env_value(*self.api_key_env)
        if key is None and self.requires_key and not explicit_url:
            variable = self.api_key_env[0]
            raise MissingAuthError(
                f"{self.name} needs an API key: set {variable} or pass api_key=...",
                provider=self.name,
                env_var=variable,
            )
        self._api_key = key
        if default_model is not None:
            self.default_model = default_model
        self._headers = dict(default_headers or {})
        self.proxy_settings: ProxySettings | None = None
        if proxy is not None or proxies is not None:
            self.proxy_settings = ProxySettings.create(
                proxy=proxy, proxies=proxies, trust_env=trust_env
            )

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={key})"

    def check_request(self, request: ChatRequest) -> None:
        """Fail before I/O when the request needs a capability this API lacks."""
        self.capabilities.check(request, self.name)

    def _auth_headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        headers.update(self._headers)
        return headers

    def _request_headers(self, request: ChatRequest) -> dict[str, str]:
        accept = "text/event-stream" if request.stream else "application/json"
        return {**self._auth_headers(accept), **request.extra_headers}

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": request.messages,
        }
        body.update(request.params)
        body.update(request.extra_body)
        body["stream"] = stream
        return body

    async def stream(
        self, request: ChatRequest, http: HTTPClient
    ) -> AsyncIterator[ChatCompletionChunk]:
        name = self.name
        validate = ChatCompletionChunk.model_validate_json
        decoder = SSEDecoder()
        finished = done = False
        async with http.open(
            "POST",
            f"{self.base_url}/chat/completions",
            provider=name,
            headers=self._request_headers(request),
            json_body=self._body(request, True),
            params=request.extra_query or None,
            proxy_settings=self.proxy_settings,
        ) as response:
            async for data in response.iter_bytes():
                for event in decoder.feed(data):
                    if event.data == "[DONE]":
                        done = True
                        break
                    chunk = self._parse(validate, event.data, event.event)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finished = True
                    set_provider(chunk, name)
                    yield chunk
                if done:
                    return
            for event in decoder.flush():
                if event.data == "[DONE]":
                    return
                chunk = self._parse(validate, event.data, event.event)
                finished = finished or bool(chunk.choices and chunk.choices[0].finish_reason)
                set_provider(chunk, name)
                yield chunk
        if not finished:
            raise StreamInterrupted(
                f"{name}: the stream ended before a finish_reason or [DONE]", provider=name
            )

    def _parse(self, validate: Any, data: str, event: str) -> ChatCompletionChunk:
        try:
            chunk: ChatCompletionChunk = validate(data)
        except ValidationError as exc:
            raise ResponseDecodeError(
                f"{self.name}: stream event is not a valid chunk: {data[:200]!r}",
                provider=self.name,
            ) from exc
        if not chunk.choices:
            extra = chunk.__pydantic_extra__
            if extra and "error" in extra:
                raise error_from_event(extra["error"], provider=self.name)
            if event == "error":
                raise error_from_event(extra or data, provider=self.name)
        return chunk

    async def complete(self, request: ChatRequest, http: HTTPClient) -> ChatCompletion:
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
        set_provider(completion, self.name)
        return completion

    async def list_models(self, http: HTTPClient) -> list[Model]:
        async with http.open(
            "GET",
            f"{self.base_url}/models",
            provider=self.name,
            headers=self._auth_headers("application/json"),
            proxy_settings=self.proxy_settings,
        ) as response:
            payload = await response.json()
        items = payload.get("data", []) if isinstance(payload, dict) else []
        models = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                model = Model.model_validate(item)
                model.provider = self.name
                models.append(model)
        return models
