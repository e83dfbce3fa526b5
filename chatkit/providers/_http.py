"""The internal base class of chatkit's own HTTP providers (OpenAI, Anthropic, Gemini, Ollama).

What the built-in vendors really share lives here once: where the endpoint
comes from (arguments, then the environment), a ``repr`` that never shows the
key, the header set every request carries, the JSON GETs of model lists, and
the shape of ``check_request`` (capabilities first, then what the wire format
cannot carry, then a trial translation, all before any I/O).

Third-party providers do not need this class: the ``Provider`` protocol in
``chatkit.providers.base`` is the contract. It stays private so that it can
change with the built-in vendors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from chatkit._errors import InvalidRequestError, UnsupportedCapabilityError
from chatkit._ratelimit import RateLimit
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletionChunk
from chatkit.providers._base import Capabilities
from chatkit.providers._common import get_json, provider_repr, resolve_endpoint

__all__ = ["EVERYTHING", "HTTPProvider"]

EVERYTHING = Capabilities()


class HTTPProvider(ABC):
    """Endpoint, headers, ``repr`` and ``check_request`` of a built-in HTTP provider.

    Subclasses set the class attributes, call ``super().__init__`` from their
    own (public, documented) constructor, and override the small hooks:
    ``_auth_headers`` (how the key travels), ``_unsupported_param`` /
    ``_unsupported_message`` (what their wire format cannot express) and
    ``_check_body`` (translate once, so translation errors come before I/O).
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str]

    # Declared here so that a list of built-in providers is a list of ``Provider``s.
    @abstractmethod
    def stream(self, request: ChatRequest, http: HTTPCall) -> AsyncIterator[ChatCompletionChunk]:
        """The answer's chunks (see ``chatkit.providers.base``)."""

    api_key_env: ClassVar[tuple[str, ...]] = ()
    base_url_env: ClassVar[tuple[str, ...]] = ()
    default_model: str = ""
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        *,
        key_required: bool,
        default_model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
        key_env: tuple[str, ...] | None = None,
    ) -> None:
        # ``key_env`` is for a key variable that must not count as "configured"
        # (Ollama's optional OLLAMA_API_KEY): ``api_key_env`` is what the
        # registry and the CLI read to decide whether a provider is set up.
        endpoint = resolve_endpoint(
            self.name,
            api_key=api_key,
            base_url=base_url,
            api_key_env=self.api_key_env if key_env is None else key_env,
            base_url_env=self.base_url_env,
            default_base_url=self.default_base_url,
            key_required=key_required,
            proxy=proxy,
            proxies=proxies,
            trust_env=trust_env,
        )
        self.base_url = endpoint.base_url
        self._api_key = endpoint.api_key
        self.proxy_settings = endpoint.proxy_settings
        if default_model is not None:
            self.default_model = default_model
        self._headers = dict(default_headers or {})
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise InvalidRequestError(
                f"rate_limit must be a chatkit.RateLimit, got {type(rate_limit).__name__}",
                field="rate_limit",
            )
        self.rate_limit = rate_limit

    def __repr__(self) -> str:
        return provider_repr(type(self).__name__, self.base_url, self._api_key)

    # -- headers -------------------------------------------------------------

    def _auth_headers(self, accept: str) -> dict[str, str]:
        """``Accept`` and the credentials; default: the key as a bearer token."""
        headers = {"Accept": accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _headers_for(self, accept: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every header of a request: credentials, then the provider's, then the call's."""
        headers = self._auth_headers(accept)
        headers.update(self._headers)
        if extra:
            headers.update(extra)
        return headers

    async def _get_json(
        self, http: HTTPCall, url: str, params: Mapping[str, str] | None = None
    ) -> Any:
        """The JSON body of ``GET url`` with this provider's headers and proxy."""
        return await get_json(
            http,
            url,
            provider=self.name,
            headers=self._headers_for("application/json"),
            params=params,
            proxy_settings=self.proxy_settings,
        )

    # -- before any I/O ------------------------------------------------------

    def check_request(self, request: ChatRequest) -> None:
        """Fail before I/O when the request needs what this API cannot do."""
        # Runs on every call: a provider that can do everything has nothing to
        # check (``missing_for`` only ever names a capability that is off).
        capabilities = self.capabilities
        if capabilities is not EVERYTHING and capabilities != EVERYTHING:
            capabilities.check(request, self.name)
        param = self._unsupported_param(request)
        if param is not None:
            raise UnsupportedCapabilityError(self._unsupported_message(param, request), field=param)
        self._check_body(request)

    def _unsupported_param(self, request: ChatRequest) -> str | None:
        """The first OpenAI parameter the wire format has no equivalent for, or None."""
        del request
        return None

    def _unsupported_message(self, param: str, request: ChatRequest) -> str:
        del request
        return f"{self.name} does not support the {param!r} parameter"

    def _check_body(self, request: ChatRequest) -> None:
        """Translate ``request`` once, so that what cannot be translated fails now."""
        del request
