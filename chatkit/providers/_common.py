"""Small pieces every HTTP provider needs: credentials, base URL, proxies, SSE reads.

Each wire API keeps its own file; what is the same for all of them (where a key
comes from and how its absence is reported, how a base URL is chosen, how an
SSE body becomes events) lives here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from chatkit._config import check_base_url, env_value
from chatkit._errors import InvalidRequestError, MissingAuthError
from chatkit._proxy import ProxySettings
from chatkit._sse import SSEDecoder, SSEEvent
from chatkit._transport import HTTPResponse

__all__ = ["Endpoint", "resolve_endpoint", "sse_batches"]


@dataclass(frozen=True, repr=False)
class Endpoint:
    """Where a provider sends its requests, with which key and through which proxy.

    ``repr`` says whether a key is set, never what it is.
    """

    base_url: str
    api_key: str | None
    proxy_settings: ProxySettings | None

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"Endpoint(base_url={self.base_url!r}, api_key={key})"


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


async def sse_batches(response: HTTPResponse) -> AsyncIterator[list[SSEEvent]]:
    """The response body's SSE events, one list per network read.

    Batches rather than single events: one generator step per read keeps the
    per-event cost on the hot path down to the caller's own loop.
    """
    decoder = SSEDecoder()
    async for data in response.iter_bytes():
        events = decoder.feed(data)
        if events:
            yield events
    tail = decoder.flush()
    if tail:
        yield tail
