"""``AsyncClient``: configuration, provider resolution, and the call lifecycle.

The client validates everything before any I/O, picks the provider, and hands
the call to ``RetryingCall``. It owns one ``Transport`` (the aiohttp sessions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel

from chatkit._aliases import ProviderSpec, TimeoutTypes
from chatkit._config import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    Limits,
    Timeout,
    check_base_url,
    check_header_value,
    coerce_timeout,
)
from chatkit._counting import TokenCount, count_prompt
from chatkit._errors import ClientClosedError, InvalidRequestError
from chatkit._health import (
    CircuitBreaker,
    ProviderHealth,
    StateStore,
    check_state,
    health_of,
    provider_identity,
)
from chatkit._hooks import CallInfo, HookRunner, observe_complete, observe_stream
from chatkit._parsed import ParsedChatCompletion
from chatkit._parsed_stream import AsyncParsedChatStream
from chatkit._prices import Price, PriceTable
from chatkit._proxy import ProxySettings
from chatkit._request import ChatRequest, build_request, check_headers
from chatkit._resume import Resume
from chatkit._retry import RetryingCall, RetryPolicy, own_retrying_call
from chatkit._retry_provider import IterListProvider
from chatkit._streaming import AsyncChatStream
from chatkit._structured import create_request, prepare_parse
from chatkit._transport import HTTPCall, Transport
from chatkit._types import ChatCompletion, Model
from chatkit.providers import (
    OpenAI,
    default_provider_class,
    get_provider_class,
    model_for,
    provider_name,
    split_model,
)
from chatkit.providers._base import (
    Provider,
    SupportsAclose,
    SupportsListModels,
    is_provider_class,
    rate_limit_of,
    supports_strict_schema,
)

__all__ = ["AsyncClient"]

BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


def _check_api_key(value: object) -> str | Mapping[str, str] | None:
    """A key as it may go into a header; a mapping of keys per provider name too."""
    if value is None:
        return None
    if isinstance(value, str):
        return check_header_value(value, "api_key")
    if isinstance(value, Mapping):
        for name, key in value.items():
            if not isinstance(name, str):
                raise InvalidRequestError("api_key keys must be provider names", field="api_key")
            check_header_value(key, f"api_key[{name}]")
        return dict(value)
    raise InvalidRequestError("api_key must be a string", field="api_key")


def _not_a_provider(what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"provider must be a provider class, instance or registered name, got {what}",
        field="provider",
    )


class AsyncClient:
    """An async chat client.

    ``provider`` is a provider instance, a provider class (instantiated with
    ``api_key`` / ``base_url``), a registered name such as ``"openai"``, or
    None: then ``base_url`` makes an OpenAI-compatible provider, or, per call,
    the model string's ``"name:"`` prefix picks one, or the first provider
    whose API key is set in the environment, or the embedded local model.
    With a provider fixed, the model string goes upstream as it is (Ollama's
    ``"mistral:7b"`` stays whole); see ``chatkit.providers.model_for``.

    ``limits`` caps the connections the client keeps open (``chatkit.Limits``).
    ``breaker`` (a ``CircuitBreaker``, or ``True`` for the defaults) skips a
    provider that keeps failing, for its single provider; a ``RetryProvider``
    takes its own. ``state`` is where that health lives (in memory by default).
    ``hooks`` are objects told what each call and attempt did (``chatkit.hooks``).
    ``prices`` adds to (or overrides) the shipped price table that
    ``completion.cost`` and ``stream.cost`` come from: ``{"openai:gpt-4o-mini":
    chatkit.Price(input=0.15, output=0.60)}``, dollars per million tokens.
    ``resume`` (``True`` or a ``chatkit.Resume``) continues a stream that broke
    off after content on a provider that can continue it (docs/resilience.md);
    given explicitly (``True``, ``False`` or a ``Resume``) it wins over a
    ``RetryProvider``'s own ``resume``; ``None`` (the default) leaves that one.
    A closed client raises ``ClientClosedError`` at once for every new call.
    """

    def __init__(
        self,
        provider: ProviderSpec | None = None,
        *,
        api_key: str | Mapping[str, str] | None = None,
        base_url: str | None = None,
        proxies: Mapping[str, str | None] | str | None = None,
        proxy: str | None = None,
        timeout: TimeoutTypes = None,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        trust_env: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        breaker: CircuitBreaker | bool | None = None,
        state: StateStore | None = None,
        hooks: Sequence[object] | None = None,
        prices: Mapping[str, Price] | None = None,
        resume: Resume | bool | None = None,
    ) -> None:
        self._api_key = _check_api_key(api_key)
        self._resume = Resume.coerce(resume)
        # An explicit False (off) wins over a RetryProvider's own resume; None
        # (unset) leaves it.
        self._resume_given = resume is not None
        self._hooks = HookRunner(hooks) if hooks else None
        self._prices = PriceTable(prices)
        self._breaker = CircuitBreaker.coerce(breaker)
        self._state = check_state(state)
        self._base_url = check_base_url(base_url) if base_url is not None else None
        self._timeout = coerce_timeout(timeout) or DEFAULT_TIMEOUT
        self._policy = RetryPolicy(max_retries=max_retries)
        self._headers = check_headers(default_headers, "default_headers")
        if not isinstance(limits, Limits):
            raise InvalidRequestError(
                f"limits must be a chatkit.Limits, got {type(limits).__name__}", field="limits"
            )
        self._proxy = ProxySettings.create(proxy=proxy, proxies=proxies, trust_env=trust_env)
        self._transport = Transport(self._proxy, limits=limits)
        self._owned: dict[type[Provider], Provider] = {}
        self._provider = self._instantiate(provider) if provider is not None else None
        if self._provider is None and self._base_url is not None:
            self._provider = self._instantiate(OpenAI)
        self.chat = _Chat(self)
        self.models = _Models(self)

    @property
    def provider(self) -> Provider | None:
        """The configured provider, or None when it is resolved per call."""
        return self._provider

    @property
    def max_retries(self) -> int:
        return self._policy.max_retries

    def health(self) -> list[ProviderHealth]:
        """Per provider: breaker state, failures in the window, open until, in flight.

        A ``RetryProvider`` reports each member; a client whose provider is
        chosen per call reports nothing.
        """
        provider = self._provider
        if isinstance(provider, IterListProvider):
            return provider.health()
        if provider is None:
            return []
        identity = provider_identity(provider)
        limit = rate_limit_of(provider)
        return [health_of(provider_name(provider), identity, self._state, self._breaker, limit)]

    async def count_tokens(
        self,
        messages: Any,
        model: str | None = "",
        *,
        provider: ProviderSpec | None = None,
        tools: list[dict[str, Any]] | None = None,
        timeout: TimeoutTypes = None,  # noqa: ASYNC109 - chatkit's Timeout, as create()
    ) -> TokenCount:
        """The tokens ``messages`` (and ``tools``) take for ``model``: exact from
        the provider's counting endpoint (Anthropic, Gemini), otherwise an
        estimate with ``estimated=True``. Validated like a call, before I/O."""
        params: dict[str, Any] = {"tools": tools} if tools is not None else {}
        request = build_request(
            model=model, messages=messages, stream=False, params=params, timeout=timeout
        )
        self._check_open()
        chosen, routed = self._choose(provider, request.model)
        if routed != request.model:
            request = dataclasses.replace(request, model=routed)
        timeouts = request.timeout or self._timeout
        return await count_prompt(
            chosen, request, lambda: self._transport.call(timeout=timeouts, headers=self._headers)
        )

    @property
    def timeout(self) -> Timeout:
        return self._timeout

    def __repr__(self) -> str:
        provider = provider_name(self._provider) if self._provider is not None else None
        return f"{type(self).__name__}(provider={provider!r}, proxy={self._proxy!r})"

    # -- providers -----------------------------------------------------------

    def _key_for(self, cls: type) -> str | None:
        if isinstance(self._api_key, Mapping):
            return self._api_key.get(provider_name(cls)) or self._api_key.get(cls.__name__)
        return self._api_key

    def _instantiate(self, spec: ProviderSpec) -> Provider:
        if isinstance(spec, str):
            spec = get_provider_class(spec)
        if not isinstance(spec, type):
            if not isinstance(spec, Provider):
                raise _not_a_provider(type(spec).__name__)
            return spec
        # Checked on a class too, before calling it: provider=int must not get api_key=.
        if not is_provider_class(spec):
            raise _not_a_provider(f"the class {spec.__name__}")
        # One instance per class per client: a provider may hold costly state
        # (the local model's child process), and the client closes what it made.
        made = self._owned.get(spec)
        if made is None:
            kwargs: dict[str, str | Mapping[str, str]] = {}
            key = self._key_for(spec)
            if key is not None:
                kwargs["api_key"] = key
            if self._base_url is not None:
                kwargs["base_url"] = self._base_url
            made = self._owned[spec] = spec(**kwargs)
        return made

    def _choose(self, override: ProviderSpec | None, model: str) -> tuple[Provider, str]:
        """The provider for one call and the model string it receives.

        A ``"name:"`` prefix chooses the provider only when none is fixed
        (per call or on the client); a fixed provider gets ``model_for``'s
        answer (the string unchanged, its own name stripped, or an error).
        """
        if override is not None:
            provider = self._instantiate(override)
        elif self._provider is not None:
            provider = self._provider
        else:
            prefix, rest = split_model(model)
            if prefix is not None:
                return self._instantiate(prefix), rest
            return self._instantiate(default_provider_class()), model
        return provider, model_for(provider, model)

    def _check_open(self) -> None:
        if self._transport.closed:
            # At once, before any provider is made: a closed client is the
            # caller's mistake, not a network failure worth retrying.
            raise ClientClosedError(
                f"{type(self).__name__} is closed; create a new client for more calls"
            )

    def _start(
        self, override: ProviderSpec | None, request: ChatRequest, proxy: str | None
    ) -> tuple[RetryingCall, HTTPCall]:
        self._check_open()
        provider, model = self._choose(override, request.model)
        if model != request.model:
            request = dataclasses.replace(request, model=model)
        proxy_settings = None
        if proxy is not None:
            proxy_settings = ProxySettings.create(proxy=proxy, trust_env=self._proxy.trust_env)
        http = self._transport.call(
            timeout=request.timeout or self._timeout, proxy=proxy_settings, headers=self._headers
        )
        call = own_retrying_call(provider, request, http)
        if call is None:
            call = RetryingCall(
                [provider],
                request,
                http,
                self._policy,
                label=str(provider_name(provider)),
                breaker=self._breaker,
                state=self._state if self._breaker or _rate_limited(provider) else None,
            )
        call.prices = self._prices
        if self._resume_given:
            call.resume = self._resume
        if self._hooks is not None:
            call.hooks = self._hooks
            call.info = CallInfo(request, call.label, call.attempts)
        return call, http

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client's connections, and the providers it created. Idempotent."""
        owned, self._owned = list(self._owned.values()), {}
        try:
            for provider in owned:
                if isinstance(provider, SupportsAclose):
                    await provider.aclose()
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

    # The overloads spell out every named argument, so that a wrong type for
    # one fails the caller's type check; **params are the OpenAI parameters
    # (checked at run time, before any I/O, unknown names included).
    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: Literal[False] = False,
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> Coroutine[Any, Any, ChatCompletion]: ...

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: Literal[True],
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> AsyncChatStream: ...

    @overload
    def create(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        stream: bool,
        provider: ProviderSpec | None = ...,
        proxy: str | None = ...,
        timeout: TimeoutTypes = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> Coroutine[Any, Any, ChatCompletion] | AsyncChatStream: ...

    def create(
        self,
        messages: Any = None,
        model: str | None = "",
        *,
        stream: bool = False,
        provider: ProviderSpec | None = None,
        proxy: str | None = None,
        timeout: TimeoutTypes = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Coroutine[Any, Any, ChatCompletion] | AsyncChatStream:
        """Create a chat completion.

        ``stream=False``: a coroutine resolving to a ``ChatCompletion``.
        ``stream=True``: an ``AsyncChatStream`` (``async for`` it directly, or
        ``await`` it first). Every argument is validated before any I/O.
        """
        request = create_request(
            messages,
            model,
            stream=stream,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
            **params,
        )
        call, http = self._client._start(provider, request, proxy)
        hooks, info = call.hooks, call.info
        if stream:
            if hooks is not None and info is not None:
                chunks = observe_stream(hooks, info, call.stream(), self._client._prices.call_cost)
            else:
                chunks = call.stream()
            return AsyncChatStream(
                chunks,
                abort=http.abort,
                attempts=call.attempts,
                prices=self._client._prices,
                resumes=call.resumes,
            )
        if hooks is not None and info is not None:
            return observe_complete(hooks, info, call.complete())
        return call.complete()

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: type[BaseModelT],
        stream: Literal[False] = False,
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, ParsedChatCompletion[BaseModelT]]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: type[BaseModelT],
        stream: Literal[True],
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> AsyncParsedChatStream[BaseModelT]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: None = None,
        stream: Literal[False] = False,
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, ParsedChatCompletion[None]]: ...

    @overload
    def parse(
        self,
        messages: Any = ...,
        model: str | None = ...,
        *,
        response_format: None = None,
        stream: Literal[True],
        max_validation_retries: int = ...,
        **kwargs: Any,
    ) -> AsyncParsedChatStream[Any]: ...

    def parse(
        self,
        messages: Any = None,
        model: str | None = "",
        *,
        response_format: type[BaseModel] | None = None,
        stream: bool = False,
        max_validation_retries: int = 0,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, ParsedChatCompletion[Any]] | AsyncParsedChatStream[Any]:
        """Ask for JSON matching a pydantic model; get a ``ParsedChatCompletion``
        (the validated object at ``.parsed`` / ``choices[0].message.parsed``).

        The schema goes as ``response_format`` (``json_schema``), in OpenAI's
        strict form with ``"strict": true`` for a provider that declares
        ``Capabilities.strict_json_schema``. ``tools`` made by
        ``chatkit.pydantic_function_tool`` get their arguments validated.
        ``max_validation_retries``: answers that do not validate are fed back
        with the error, within the call's ``timeout``; then
        ``ResponseDecodeError``. A refusal raises ``ContentRefusedError``.
        ``stream=True``: an ``AsyncParsedChatStream`` of partial objects.
        See docs/structured-outputs.md.
        """
        client = self._client

        def strict() -> bool:
            client._check_open()
            chosen, _ = client._choose(kwargs.get("provider"), model or "")
            return supports_strict_schema(chosen)

        call = prepare_parse(
            self.create,
            check_request=create_request,
            messages=messages,
            model=model,
            response_format=response_format,
            stream=stream,
            max_validation_retries=max_validation_retries,
            kwargs=kwargs,
            strict=strict,
            default_timeout=client._timeout,
            prices=client._prices,
        )
        if stream:
            return AsyncParsedChatStream(call)
        return call.complete()


class _Chat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = _Completions(client)


class _Models:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, provider: ProviderSpec | None = None) -> list[Model]:
        """The models the provider offers, from its list endpoint."""
        self._client._check_open()
        chosen = self._client._instantiate(provider) if provider is not None else None
        chosen = (
            chosen or self._client._provider or self._client._instantiate(default_provider_class())
        )
        if not isinstance(chosen, SupportsListModels):
            raise InvalidRequestError(
                f"{provider_name(chosen)} has no model list endpoint", field="provider"
            )
        http = self._client._transport.call(
            timeout=self._client._timeout, headers=self._client._headers
        )
        http.start()
        return await chosen.list_models(http)


def _rate_limited(provider: Provider) -> bool:
    return rate_limit_of(provider) is not None
