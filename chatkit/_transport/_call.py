"""``HTTPCall``: what a provider uses to talk HTTP during one call.

Split out of the transport: one call's requests (pool permits, redirects
followed by hand, the call's timeout and deadline), its status errors, and
the translation of foreign exceptions with the call's secrets scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from chatkit._config import (
    Timeout,
    header_secrets,
    is_secret_header,
    safe_cause,
    scrub_error,
)
from chatkit._errors import (
    APIConnectionError,
    APIError,
    ClientClosedError,
    PoolTimeoutError,
    ProxyError,
    error_from_status,
)
from chatkit._hooks import request_headers
from chatkit._pool import Permit, origin
from chatkit._proxy import ProxySettings, ProxyURL
from chatkit._redirects import MAX_REDIRECTS, becomes_get, redirect_target
from chatkit._transport._deadline import _client_timeout, deadline_owned
from chatkit._transport._response import HTTPResponse, _error_body, dumps
from chatkit._transport._translate import _classify

if TYPE_CHECKING:
    import aiohttp

    from chatkit._transport._sessions import Transport


class HTTPCall:
    """What a provider uses to talk HTTP during one call."""

    def __init__(
        self,
        transport: Transport,
        proxy: ProxySettings,
        timeout: Timeout,
        headers: dict[str, str],
        *,
        call_proxy: ProxySettings | None = None,
    ) -> None:
        self._transport = transport
        self._proxy = proxy
        self._call_proxy = call_proxy
        self._current_proxy: ProxyURL | None = None
        # Per provider and every request's, not the last: hedged attempts run at once.
        self.response_headers: dict[str, Mapping[str, str]] = {}  # rate budgets learn
        self._open: set[HTTPResponse] = set()
        # Secrets are only looked for when an error is translated, which is rare.
        self._sent_headers: list[Mapping[str, str]] = []
        self._proxies_used: set[ProxyURL] = set()
        self.timeout = timeout
        self.headers = headers
        # Absolute loop.time() at which the whole call (all attempts) must end.
        self.deadline: float | None = None

    def start(self) -> None:
        """Start the call's clock: ``timeout.total`` counts from here, across retries."""
        if self.deadline is None and self.timeout.total is not None:
            self.deadline = asyncio.get_running_loop().time() + self.timeout.total

    def remaining(self) -> float | None:
        """Seconds left before the call's deadline, or None when unbounded."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()

    def abort(self) -> None:
        """Close every response this call still holds (safe from ``__del__``)."""
        for response in list(self._open):
            with contextlib.suppress(Exception):
                response.close()

    def proxy_for(self, url: str, proxy_settings: ProxySettings | None = None) -> ProxyURL | None:
        """The proxy a request to ``url`` goes through, or None for a direct connection.

        A provider's own ``proxy_settings`` win (they are about that
        destination: a local model's loopback, a region-locked API), then the
        call's ``proxy=``, then the client's. Raises ``ProxyConfigError`` when
        a ``proxies`` dict has no entry for the URL's scheme.
        """
        settings = proxy_settings or self._call_proxy or self._proxy
        return settings.for_url(url)

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        provider: str,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        proxy_settings: ProxySettings | None = None,
    ) -> AsyncIterator[HTTPResponse]:
        """Send a request; yield the 2xx response, raise the typed error otherwise.

        The call's timeout and deadline apply; ``proxy_settings`` (a provider's
        own) overrides the call's and the client's (see `proxy_for`).
        Redirects are followed here, not by aiohttp (see ``_redirects``).
        """
        body = dumps(json_body) if json_body is not None else None
        send_headers = {"Content-Type": "application/json"} if body is not None else {}
        send_headers.update(self.headers)
        send_headers.update(headers or {}, **request_headers.get())  # hooks' (traceparent)
        self._sent_headers.append(dict(send_headers))  # whole: the secrets to scrub
        for _ in range(MAX_REDIRECTS + 1):
            proxy = self.proxy_for(url, proxy_settings)
            raw, permit = await self._send(method, url, body, send_headers, params, proxy, provider)
            response = HTTPResponse(raw, self, provider, proxy, permit)
            self._open.add(response)
            self._transport._responses.add(response)
            try:
                target = redirect_target(
                    raw.status,
                    raw.headers.get("Location"),
                    str(raw.url),
                    url,
                    has_body=body is not None,
                    headers=dict(raw.headers),
                    provider=provider,
                )
                if target is None:
                    if not 200 <= raw.status < 300:
                        raise await self._status_error(raw, provider, proxy)
                    self.response_headers[provider] = raw.headers
                    yield response
                    return
            finally:
                self._open.discard(response)
                self._transport._responses.discard(response)
                # Unread or partly read bodies are dropped, not drained: closing
                # is what lets the server see the disconnect promptly.
                if raw.content.is_eof() and not raw.closed:
                    raw.release()
                else:
                    raw.close()
                permit.release()
            if origin(target) != origin(url):
                # Credentials never cross origins.
                for name in [name for name in send_headers if is_secret_header(name)]:
                    del send_headers[name]
            url, params = target, None  # the Location already holds the query
            if becomes_get(raw.status, method):
                # What browsers, curl and aiohttp do: the next hop is a GET.
                method, body = "GET", None
                send_headers.pop("Content-Type", None)
        raise APIConnectionError(
            f"{provider}: more than {MAX_REDIRECTS} redirects, giving up", provider=provider
        )

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        params: Mapping[str, str] | None,
        proxy: ProxyURL | None,
        provider: str,
    ) -> tuple[aiohttp.ClientResponse, Permit]:
        """One HTTP exchange, holding a pool permit that the caller releases."""
        session = self._transport._session(proxy)
        permit = await self._acquire(url, provider)
        http_proxy = proxy.url if proxy is not None and not proxy.is_socks else None
        self._current_proxy = proxy
        if proxy is not None:
            self._proxies_used.add(proxy)
        failure = None
        try:
            raw = await session.request(
                method,
                url,
                data=body,
                headers=headers,
                params=params,
                proxy=http_proxy,
                timeout=_client_timeout(self.timeout, self.deadline, deadline_owned()),
                allow_redirects=False,
            )
        except BaseException as exc:
            permit.release()
            failure = self.translate(exc, provider, proxy=proxy)
            if failure is exc:
                raise
        if failure is not None:
            raise failure  # outside the except block: see HTTPResponse._read_some
        return raw, permit

    async def _acquire(self, url: str, provider: str) -> Permit:
        """A pool permit for ``url``, waited for under ``Timeout.pool`` and the deadline."""
        pool = self._transport._slot().pool
        wait = self.timeout.pool
        remaining = self.remaining()
        if remaining is not None:
            wait = max(remaining, 0.0) if wait is None else min(wait, max(remaining, 0.0))
        try:
            return await pool.acquire(origin(url), wait)
        except TimeoutError:
            pass
        limits = pool.limits
        raise PoolTimeoutError(
            f"{provider}: timed out waiting for a free connection"
            f" (Timeout.pool={self.timeout.pool}, Timeout.total={self.timeout.total};"
            f" every connection is busy: Limits.max_connections={limits.max_connections},"
            f" max_connections_per_host={limits.max_connections_per_host};"
            " raise Limits.max_connections or Timeout.pool)",
            provider=provider,
        )

    def scrub(self, error: BaseException) -> None:
        """Remove this call's secrets from a chatkit error a provider raised
        (an error event, a decode error quoting the body), in place."""
        if isinstance(error, APIError):
            scrub_error(error, self._secrets(self._current_proxy))

    def _secrets(self, proxy: ProxyURL | None) -> tuple[str, ...]:
        """Every secret of this call: its credential headers and proxy passwords."""
        secrets = [header_secrets(sent) for sent in (self.headers, *self._sent_headers)]
        secrets += [used.secrets() for used in {*self._proxies_used, proxy} if used is not None]
        secrets += [own.secrets() for own in (self._proxy, self._call_proxy) if own is not None]
        return tuple(secret for group in secrets for secret in group)

    async def _status_error(
        self, raw: aiohttp.ClientResponse, provider: str, proxy: ProxyURL | None
    ) -> BaseException:
        if raw.status == 407 and proxy is not None and not proxy.is_socks:
            # A plain-http target goes through an HTTP proxy without CONNECT,
            # so the proxy's refusal arrives as an ordinary response.
            return ProxyError(
                f"{provider}: proxy {proxy.without_credentials} refused the request:"
                " HTTP 407 Proxy Authentication Required (check the user name and password)",
                provider=provider,
            )
        error = error_from_status(
            raw.status, await _error_body(raw), dict(raw.headers), provider=provider
        )
        return scrub_error(error, self._secrets(proxy))

    def translate(
        self,
        exc: BaseException,
        provider: str,
        *,
        reading: bool = False,
        proxy: ProxyURL | None = None,
    ) -> BaseException:
        """Map an aiohttp / aiohttp_socks / OS exception to chatkit's tree.

        Returns ``exc`` itself when it needs no translation. Otherwise the
        chatkit error comes with ``__cause__`` set: ``exc``, or a
        ``RedactedCause`` when ``exc``'s text holds a proxy password or key.
        """
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | APIError):
            return exc
        if proxy is None:
            proxy = self._current_proxy
        secrets = self._secrets(proxy)
        error: BaseException
        if self._transport.closed:
            # aclose() pulled the connection from under this call: not a
            # network failure, and retrying would only fail the same way.
            error = ClientClosedError(f"{provider}: the client was closed during the call")
        else:
            error = _classify(exc, provider, proxy, reading, secrets)
        if error is exc:
            return exc
        error.__cause__ = safe_cause(exc, secrets)
        error.__suppress_context__ = True
        return error


# The name before 0.2; third-party providers written against it keep working.
# New code imports ``HTTPCall`` from ``chatkit.providers.base``.
HTTPClient = HTTPCall
