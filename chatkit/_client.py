"""``AsyncClient``: configuration, provider resolution, and the call lifecycle.

The client validates everything before any I/O, picks the provider, and hands
the call to ``RetryingCall``. It owns one ``Transport`` (the aiohttp sessions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ValidationError

from chatkit._config import DEFAULT_TIMEOUT, check_base_url, coerce_timeout
from chatkit._errors import InvalidRequestError, ResponseDecodeError
from chatkit._proxy import ProxySettings
from chatkit._request import ChatRequest, build_request
from chatkit._retry import RetryingCall, RetryPolicy
from chatkit._streaming import AsyncChatStream
from chatkit._transport import HTTPClient, Transport
from chatkit._types import ChatCompletion, Model
from chatkit.providers import (
    PROVIDERS,
    OpenAI,
    default_provider_class,
    get_provider_class,
    provider_name,
)

__all__ = ["AsyncClient", "parse_content"]

BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


def _check_headers(value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidRequestError(f"{field} must be a dict of strings", field=field)
    return dict(value)


def split_model(model: str) -> tuple[str | None, str]:
    """``"groq:llama-3.3"`` -> ``("groq", "llama-3.3")`` when the prefix names a provider."""
    prefix, sep, rest = model.partition(":")
    if sep and prefix.lower() in PROVIDERS:
        return prefix.lower(), rest
    return None, model


class AsyncClient:
    """An async chat client.

    ``provider`` is a provider instance, a provider class (instantiated with
    ``api_key`` / ``base_url``), a registered name such as ``"openai"``, or
    None: then ``base_url`` makes an OpenAI-compatible provider, or, per call,
    the model string's ``"name:"`` prefix picks one, or the first provider
    whose API key is set in the environment, or the embedded local model.
    """

    def __init__(
        self,
        provider: Any = None,
        *,
        api_key: str | Mapping[str, str] | None = None,
        base_url: str | None = None,
        proxies: Mapping[str, str | None] | str | None = None,
        proxy: str | None = None,
        timeout: Any = None,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        trust_env: bool = True,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str | Mapping):
            raise InvalidRequestError("api_key must be a string", field="api_key")
        self._api_key = api_key
        self._base_url = check_base_url(base_url) if base_url is not None else None
        self._timeout = coerce_timeout(timeout) or DEFAULT_TIMEOUT
        self._policy = RetryPolicy(max_retries=max_retries)
        self._headers = _check_headers(default_headers, "default_headers")
        self._proxy = ProxySettings.create(proxy=proxy, proxies=proxies, trust_env=trust_env)
        self._transport = Transport(self._proxy)
        self._owned: dict[type, Any] = {}
        self._provider = self._instantiate(provider) if provider is not None else None
        if self._provider is None and self._base_url is not None:
            self._provider = self._instantiate(OpenAI)
        self.chat = _Chat(self)
        self.models = _Models(self)

    @property
    def provider(self) -> Any:
        """The configured provider, or None when it is resolved per call."""
        return self._provider

    @property
    def max_retries(self) -> int:
        return self._policy.max_retries

    @property
    def timeout(self) -> Any:
        return self._timeout

    def __repr__(self) -> str:
        provider = provider_name(self._provider) if self._provider is not None else None
        return f"{type(self).__name__}(provider={provider!r}, proxy={self._proxy!r})"

    # -- providers -----------------------------------------------------------

    def _key_for(self, cls: type) -> str | None:
        if isinstance(self._api_key, Mapping):
            return self._api_key.get(provider_name(cls)) or self._api_key.get(cls.__name__)
        return self._api_key

    def _instantiate(self, spec: Any) -> Any:
        if isinstance(spec, str):
            spec = get_provider_class(spec)
        if isinstance(spec, type):
            # One instance per class per client: a provider may hold costly state
            # (the local model's child process), and the client closes what it made.
            made = self._owned.get(spec)
            if made is None:
                kwargs: dict[str, Any] = {}
                key = self._key_for(spec)
                if key is not None:
                    kwargs["api_key"] = key
                if self._base_url is not None:
                    kwargs["base_url"] = self._base_url
                made = self._owned[spec] = spec(**kwargs)
            return made
        if not callable(getattr(spec, "stream", None)):
            raise InvalidRequestError(
                "provider must be a provider class, instance or registered name, got"
                f" {type(spec).__name__}",
                field="provider",
            )
        return spec

    def _pick(self, override: Any, request: ChatRequest) -> tuple[Any, ChatRequest]:
        prefix, model = split_model(request.model)
        if prefix is not None:
            request = dataclasses.replace(request, model=model)
        if override is not None:
            return self._instantiate(override), request
        if self._provider is not None:
            return self._provider, request
        return self._instantiate(prefix or default_provider_class()), request

    def _start(
        self, override: Any, request: ChatRequest, proxy: object
    ) -> tuple[RetryingCall, HTTPClient]:
        provider, request = self._pick(override, request)
        proxy_settings = None
        if proxy is not None:
            proxy_settings = ProxySettings.create(proxy=proxy, trust_env=self._proxy.trust_env)
        http = self._transport.call(
            timeout=request.timeout or self._timeout, proxy=proxy_settings, headers=self._headers
        )
        own_call = getattr(provider, "retrying_call", None)
        if getattr(provider, "handles_retries", False) and own_call is not None:
            call: RetryingCall = own_call(request, http)
        else:
            call = RetryingCall(
                [provider], request, http, self._policy, label=str(provider_name(provider))
            )
        return call, http

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client's connections, and the providers it created. Idempotent."""
        owned, self._owned = list(self._owned.values()), {}
        try:
            for provider in owned:
                aclose = getattr(provider, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:
            await self._transport.aclose()

    close = aclose

    @property
    def is_closed(self) -> bool:
        return self._transport.closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Completions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str = ...,
        *,
        stream: Literal[True],
        **kwargs: Any,
    ) -> AsyncChatStream: ...

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str = ...,
        *,
        stream: Literal[False] = ...,
        **kwargs: Any,
    ) -> Any: ...

    def create(
        self,
        messages: Any = None,
        model: str = "",
        *,
        stream: bool = False,
        provider: Any = None,
        proxy: str | None = None,
        timeout: Any = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Any:
        """Create a chat completion.

        ``stream=False``: a coroutine resolving to a ``ChatCompletion``.
        ``stream=True``: an ``AsyncChatStream`` (``async for`` it directly, or
        ``await`` it first). Every argument is validated before any I/O.
        """
        request = build_request(
            model=model,
            messages=messages,
            stream=stream,
            params=params,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
            timeout=timeout,
        )
        call, http = self._client._start(provider, request, proxy)
        if stream:
            return AsyncChatStream(call.stream(), abort=http.abort, attempts=call.attempts)
        return call.complete()

    async def parse(
        self,
        messages: Any = None,
        model: str = "",
        *,
        response_format: type[BaseModelT],
        **kwargs: Any,
    ) -> BaseModelT:
        """Ask for JSON matching a pydantic model and return the validated object.

        The model's JSON schema is sent as ``response_format`` (``json_schema``);
        an answer that does not validate raises ``ResponseDecodeError``.
        """
        if not (isinstance(response_format, type) and issubclass(response_format, BaseModel)):
            raise InvalidRequestError(
                "response_format must be a pydantic model class", field="response_format"
            )
        if kwargs.get("stream"):
            raise InvalidRequestError("parse() does not stream", field="stream")
        kwargs.pop("stream", None)
        schema = {
            "type": "json_schema",
            "json_schema": {
                "name": response_format.__name__,
                "schema": response_format.model_json_schema(),
            },
        }
        completion = await self.create(messages, model, response_format=schema, **kwargs)
        return parse_content(completion, response_format)


def parse_content(completion: ChatCompletion, model: type[BaseModelT]) -> BaseModelT:
    """Validate a completion's JSON answer (tolerating a Markdown code fence)."""
    text = completion.text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ResponseDecodeError(
            f"{completion.provider}: the answer is not a valid {model.__name__}:"
            f" {exc.errors()[0].get('msg', exc)}; answer was {text[:200]!r}",
            provider=completion.provider,
        ) from exc


class _Chat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = _Completions(client)


class _Models:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, provider: Any = None) -> list[Model]:
        """The models the provider offers, from its list endpoint."""
        chosen = self._client._instantiate(provider) if provider is not None else None
        chosen = (
            chosen or self._client._provider or self._client._instantiate(default_provider_class())
        )
        lister = getattr(chosen, "list_models", None)
        if lister is None:
            raise InvalidRequestError(
                f"{provider_name(chosen)} has no model list endpoint", field="provider"
            )
        http = self._client._transport.call(
            timeout=self._client._timeout, headers=self._client._headers
        )
        http.start()
        models: list[Model] = await lister(http)
        return models
