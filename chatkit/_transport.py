"""HTTP transport: the only module that imports aiohttp and aiohttp_socks.

One ``Transport`` per client owns its aiohttp sessions: one per event loop and
per SOCKS proxy (aiohttp-socks binds a proxy to a connector), created lazily on
the loop that uses them. Providers see a per-call ``HTTPClient``, which tracks
the responses it opened so a stream dropped by the caller can be aborted
synchronously (``abort()``), from ``__del__`` if need be.

Foreign exceptions are translated here, once, into chatkit's error tree; a
foreign exception whose text holds a key or proxy password is chained as a
scrubbed stand-in (the redaction helpers live in ``_config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatkit._config import (
    DEFAULT_TIMEOUT,
    RedactedCause,
    Timeout,
    header_secrets,
    safe_cause,
    scrub,
)
from chatkit._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ProxyError,
    ResponseDecodeError,
    error_from_status,
)
from chatkit._proxy import ProxySettings, ProxyURL, SocksOptions

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HTTPClient", "HTTPResponse", "RedactedCause", "Transport", "dumps"]

_MAX_ERROR_BODY = 1024 * 1024
_USER_AGENT = "chatkit/0.1"
# Sessions kept per loop for distinct SOCKS proxies: callers that rotate
# proxies per call must not grow one connection pool per proxy forever.
_MAX_SOCKS_SESSIONS = 16


# One encoder for every request: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(body: Any) -> bytes:
    """Compact JSON bytes for a request body."""
    return _ENCODER.encode(body).encode()


class HTTPResponse:
    """A response with a 2xx status whose body has not been read yet."""

    def __init__(
        self,
        raw: aiohttp.ClientResponse,
        call: HTTPClient,
        provider: str,
        proxy: ProxyURL | None = None,
    ) -> None:
        self._raw = raw
        self._call = call
        self._provider = provider
        self._proxy = proxy
        self.status: int = raw.status
        self.headers: Mapping[str, str] = raw.headers

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (``iter_any``: never ``readline``, no line cap)."""
        reader = self._raw.content
        while True:
            failure = None
            try:
                data = await reader.readany()
            except BaseException as exc:
                failure = self._call.translate(exc, self._provider, reading=True, proxy=self._proxy)
                if failure is exc:
                    raise
            # Raised outside the except block so that the foreign exception
            # does not ride along as __context__ (it may hold a secret).
            if failure is not None:
                raise failure
            if not data:
                return
            yield data

    async def read(self) -> bytes:
        failure = None
        try:
            return await self._raw.read()
        except BaseException as exc:
            failure = self._call.translate(exc, self._provider, reading=True, proxy=self._proxy)
            if failure is exc:
                raise
        raise failure

    async def json(self) -> Any:
        body = await self.read()
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ResponseDecodeError(
                f"{self._provider}: response body is not JSON ({body[:80]!r})",
                provider=self._provider,
            ) from exc

    def close(self) -> None:
        """Drop the connection now; the server sees the disconnect."""
        self._raw.close()


@dataclass
class _LoopSessions:
    loop: asyncio.AbstractEventLoop
    # None: the session for direct and HTTP-proxy requests; otherwise one per
    # SOCKS proxy URL, in least-recently-used order.
    sessions: dict[str | None, aiohttp.ClientSession] = field(default_factory=dict)


class Transport:
    """Owns the aiohttp sessions of one client."""

    def __init__(self, proxy: ProxySettings | None = None, *, connection_limit: int = 256):
        self.proxy = proxy or ProxySettings()
        self._limit = connection_limit
        self._per_loop: dict[int, _LoopSessions] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Transport(proxy={self.proxy!r})"

    def call(
        self,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        proxy: ProxySettings | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HTTPClient:
        """A handle for one chat call.

        ``proxy`` is the call's own setting (``create(..., proxy=...)``): it
        overrides the client's; a provider's own settings override both.
        """
        return HTTPClient(self, self.proxy, timeout, dict(headers or {}), call_proxy=proxy)

    def _session(self, proxy: ProxyURL | None) -> aiohttp.ClientSession:
        import aiohttp

        if self._closed:
            raise APIConnectionError("the client is closed")
        loop = asyncio.get_running_loop()
        slot = self._per_loop.get(id(loop))
        if slot is None or slot.loop is not loop:
            self._forget_dead_loops()
            slot = self._per_loop[id(loop)] = _LoopSessions(loop)
        key = proxy.url if proxy is not None and proxy.is_socks else None
        session = slot.sessions.pop(key, None)
        if session is None or session.closed:
            if proxy is None or key is None:
                connector: aiohttp.BaseConnector = aiohttp.TCPConnector(limit=self._limit)
            else:
                connector = _socks_connector(proxy.socks_options(), self._limit)
                _evict_idle(slot.sessions, _MAX_SOCKS_SESSIONS - 1)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": _USER_AGENT},
                trust_env=False,
            )
        slot.sessions[key] = session  # (re)inserted last: most recently used
        return session

    def _forget_dead_loops(self) -> None:
        # Sessions of a closed loop (a finished asyncio.run, a parent process
        # before fork) cannot be closed from here; detach them so they neither
        # warn nor get reused.
        for loop_id, slot in list(self._per_loop.items()):
            if slot.loop.is_closed():
                for session in slot.sessions.values():
                    _detach(session)
                del self._per_loop[loop_id]

    async def aclose(self) -> None:
        """Close this loop's sessions; sessions of closed loops are detached."""
        self._closed = True
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is always awaited
            loop = None
        for slot in list(self._per_loop.values()):
            for session in slot.sessions.values():
                if slot.loop is loop:
                    await session.close()
                else:
                    _detach(session)
        self._per_loop.clear()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def open_connections(self) -> int:
        """Connections currently held, idle or in use, across sessions (for tests)."""
        total = 0
        for slot in self._per_loop.values():
            for session in slot.sessions.values():
                connector = session.connector
                if connector is None or connector.closed:
                    continue
                total += len(getattr(connector, "_acquired", ()))
                total += sum(len(v) for v in getattr(connector, "_conns", {}).values())
        return total

    def session_count(self) -> int:
        """Open aiohttp sessions across loops (for tests of the SOCKS session cap)."""
        return sum(
            1
            for slot in self._per_loop.values()
            for session in slot.sessions.values()
            if not session.closed
        )


def _socks_connector(options: SocksOptions, limit: int) -> aiohttp.BaseConnector:
    from aiohttp_socks import ProxyConnector, ProxyType

    return ProxyConnector(
        host=options.host,
        port=options.port,
        proxy_type=ProxyType.SOCKS4 if options.version == 4 else ProxyType.SOCKS5,
        username=options.username,
        password=options.password,
        rdns=options.remote_dns,
        limit=limit,
    )


def _evict_idle(sessions: dict[str | None, aiohttp.ClientSession], keep: int) -> None:
    """Drop the least recently used idle SOCKS sessions beyond ``keep``."""
    socks = [key for key in sessions if key is not None]
    for key in socks[: max(len(socks) - keep, 0)]:
        connector = sessions[key].connector
        if connector is not None and getattr(connector, "_acquired", None):
            continue  # a response is still streaming through it
        _detach(sessions.pop(key))


def _detach(session: aiohttp.ClientSession) -> None:
    connector = session.connector
    if connector is not None and not connector.closed:
        with contextlib.suppress(Exception):
            connector._close()
    session._connector = None


class HTTPClient:
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
        self._open: set[HTTPResponse] = set()
        # Secrets are only looked for when an error is translated, which is rare.
        self._sent_headers: Mapping[str, str] = headers
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
        """
        proxy = self.proxy_for(url, proxy_settings)
        session = self._transport._session(proxy)
        client_timeout = _client_timeout(self.timeout, self.deadline)
        body = dumps(json_body) if json_body is not None else None
        send_headers = {"Content-Type": "application/json"} if body is not None else {}
        send_headers.update(self.headers)
        send_headers.update(headers or {})
        http_proxy = proxy.url if proxy is not None and not proxy.is_socks else None
        self._current_proxy = proxy
        self._sent_headers = send_headers
        failure = None
        try:
            raw = await session.request(
                method,
                url,
                data=body,
                headers=send_headers,
                params=params,
                proxy=http_proxy,
                timeout=client_timeout,
            )
        except BaseException as exc:
            failure = self.translate(exc, provider, proxy=proxy)
            if failure is exc:
                raise
        if failure is not None:
            raise failure  # outside the except block: see HTTPResponse.iter_bytes
        response = HTTPResponse(raw, self, provider, proxy)
        self._open.add(response)
        try:
            if raw.status >= 400:
                raise await self._status_error(raw, provider, proxy)
            yield response
        finally:
            self._open.discard(response)
            # Unread or partly read bodies are dropped, not drained: closing is
            # what lets the server see the disconnect promptly.
            if raw.content.is_eof() and not raw.closed:
                raw.release()
            else:
                raw.close()

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
        return error_from_status(
            raw.status, await _error_body(raw), dict(raw.headers), provider=provider
        )

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
        secrets = header_secrets(self._sent_headers) + self._proxy.secrets()
        if proxy is not None:
            secrets += proxy.secrets()
        if self._call_proxy is not None:
            secrets += self._call_proxy.secrets()
        error = _classify(exc, provider, proxy, reading, secrets)
        if error is exc:
            return exc
        error.__cause__ = safe_cause(exc, secrets)
        error.__suppress_context__ = True
        return error


async def _error_body(raw: aiohttp.ClientResponse) -> bytes:
    """Up to ``_MAX_ERROR_BODY`` bytes of an error response.

    ``content.read(n)`` returns whatever has arrived, so it loops. When the
    body breaks off or stalls, the status already says what went wrong: keep
    the part that arrived rather than turn a 503 into a connection error.
    """
    parts: list[bytes] = []
    size = 0
    try:
        while size < _MAX_ERROR_BODY:
            data = await raw.content.read(_MAX_ERROR_BODY - size)
            if not data:
                break
            parts.append(data)
            size += len(data)
    except Exception:  # the status says enough: see the docstring
        pass
    return b"".join(parts)


def _classify(
    exc: BaseException,
    provider: str,
    proxy: ProxyURL | None,
    reading: bool,
    secrets: tuple[str, ...],
) -> BaseException:
    import aiohttp

    detail = scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
    shown = proxy.without_credentials if proxy is not None else None
    proxy_failure = _proxy_failure(exc, proxy, reading)
    if isinstance(exc, TimeoutError) or proxy_failure == "timeout":
        what = "reading the response" if reading else "connecting or waiting for headers"
        via = f" through proxy {shown}" if proxy is not None and not reading else ""
        return APITimeoutError(f"{provider}: timed out {what}{via} ({detail})", provider=provider)
    if proxy_failure == "refused" and isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyError(
            f"{provider}: proxy {shown} refused the tunnel: HTTP {exc.status} {exc.message}"
            + (" (check the user name and password)" if exc.status == 407 else ""),
            provider=provider,
        )
    if proxy_failure is not None and isinstance(exc, asyncio.IncompleteReadError):
        return ProxyError(
            f"{provider}: proxy {shown} closed the connection during the SOCKS handshake"
            " (wrong user name or password?)",
            provider=provider,
        )
    if proxy_failure is not None:
        return ProxyError(f"{provider}: proxy {shown} failed: {detail}", provider=provider)
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.IncompleteReadError):
        action = "connection lost while reading" if reading else "cannot connect"
        return APIConnectionError(f"{provider}: {action}: {detail}", provider=provider)
    return exc


def _proxy_failure(exc: BaseException, proxy: ProxyURL | None, reading: bool) -> str | None:
    """``"timeout"``, ``"refused"`` or ``"failed"`` when the proxy is to blame, else None."""
    if proxy is None or reading:
        return None
    import aiohttp

    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return "refused"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "failed"
    if proxy.is_socks:
        import aiohttp_socks
        import python_socks

        if isinstance(exc, aiohttp_socks.ProxyTimeoutError | python_socks.ProxyTimeoutError):
            return "timeout"
        socks_errors = (
            aiohttp_socks.ProxyError,
            aiohttp_socks.ProxyConnectionError,
            python_socks.ProxyError,
            python_socks.ProxyConnectionError,
            # A SOCKS5 proxy that rejects the password just closes the
            # connection mid-handshake: python-socks sees an incomplete read.
            asyncio.IncompleteReadError,
        )
        if isinstance(exc, socks_errors):
            return "failed"
    return None


def _client_timeout(timeout: Timeout, deadline: float | None) -> aiohttp.ClientTimeout:
    import aiohttp

    total = timeout.total
    if deadline is not None:
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        total = remaining if total is None else min(total, remaining)
    return aiohttp.ClientTimeout(
        total=total, connect=timeout.connect, sock_connect=timeout.connect, sock_read=timeout.read
    )
