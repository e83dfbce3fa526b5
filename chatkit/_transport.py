"""HTTP transport: the only module that imports aiohttp and aiohttp_socks.

One ``Transport`` per client owns its aiohttp sessions: one per event loop and
per SOCKS proxy (aiohttp-socks binds a proxy to a connector), created lazily on
the loop that uses them. Providers see a per-call ``HTTPClient``, which tracks
the responses it opened so a stream dropped by the caller can be aborted
synchronously (``abort()``), from ``__del__`` if need be.

Foreign exceptions are translated here, once, into chatkit's error tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatkit._config import DEFAULT_TIMEOUT, Timeout
from chatkit._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ProxyError,
    ResponseDecodeError,
    error_from_status,
)
from chatkit._proxy import ProxySettings, ProxyURL

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HTTPClient", "HTTPResponse", "Transport", "dumps"]

_MAX_ERROR_BODY = 1024 * 1024
_USER_AGENT = "chatkit/0.1"


def dumps(body: Any) -> bytes:
    """Compact JSON bytes for a request body."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class HTTPResponse:
    """A response with a 2xx status whose body has not been read yet."""

    def __init__(self, raw: aiohttp.ClientResponse, call: HTTPClient, provider: str) -> None:
        self._raw = raw
        self._call = call
        self._provider = provider
        self.status: int = raw.status
        self.headers: Mapping[str, str] = raw.headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (``iter_any``: never ``readline``, no line cap)."""
        reader = self._raw.content
        while True:
            try:
                data = await reader.readany()
            except BaseException as exc:
                raise self._call.translate(exc, self._provider, reading=True) from exc
            if not data:
                return
            yield data

    async def read(self) -> bytes:
        try:
            return await self._raw.read()
        except BaseException as exc:
            raise self._call.translate(exc, self._provider, reading=True) from exc

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
        """A handle for one chat call. ``proxy`` overrides the client's proxy settings."""
        return HTTPClient(self, proxy or self.proxy, timeout, dict(headers or {}))

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
        session = slot.sessions.get(key)
        if session is None or session.closed:
            if key is None:
                connector: aiohttp.BaseConnector = aiohttp.TCPConnector(limit=self._limit)
            else:
                from aiohttp_socks import ProxyConnector

                connector = ProxyConnector.from_url(key, rdns=True, limit=self._limit)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": _USER_AGENT},
                trust_env=False,
            )
            slot.sessions[key] = session
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
    ) -> None:
        self._transport = transport
        self._proxy = proxy
        self._current_proxy: ProxyURL | None = None
        self._open: weakref.WeakSet[HTTPResponse] = weakref.WeakSet()
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
        own) overrides the client's.
        """
        proxy = (proxy_settings or self._proxy).for_url(url)
        session = self._transport._session(proxy)
        client_timeout = _client_timeout(self.timeout, self.deadline)
        body = dumps(json_body) if json_body is not None else None
        send_headers = {"Content-Type": "application/json"} if body is not None else {}
        send_headers.update(self.headers)
        send_headers.update(headers or {})
        http_proxy = proxy.url if proxy is not None and not proxy.is_socks else None
        self._current_proxy = proxy
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
            raise self.translate(exc, provider) from exc
        response = HTTPResponse(raw, self, provider)
        self._open.add(response)
        try:
            if raw.status >= 400:
                raise await self._status_error(raw, provider)
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
        self, raw: aiohttp.ClientResponse, provider: str
    ) -> BaseException:
        try:
            body = await raw.content.read(_MAX_ERROR_BODY)
        except BaseException as exc:
            return self.translate(exc, provider, reading=True)
        return error_from_status(raw.status, body, dict(raw.headers), provider=provider)

    def translate(self, exc: BaseException, provider: str, *, reading: bool = False) -> BaseException:
        """Map an aiohttp / aiohttp_socks / OS exception to chatkit's tree."""
        import aiohttp

        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | APIError):
            return exc
        proxy = self._current_proxy
        secrets = self._proxy.secrets() + (proxy.secrets() if proxy else ())
        detail = _scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
        if isinstance(exc, TimeoutError):
            what = "reading the response" if reading else "connecting or waiting for headers"
            return APITimeoutError(f"{provider}: timed out {what} ({detail})", provider=provider)
        if _is_proxy_failure(exc, proxy, reading):
            return ProxyError(f"{provider}: proxy {proxy} failed: {detail}", provider=provider)
        if isinstance(exc, aiohttp.ClientError | OSError | asyncio.IncompleteReadError):
            action = "connection lost while reading" if reading else "cannot connect"
            return APIConnectionError(f"{provider}: {action}: {detail}", provider=provider)
        return exc


def _is_proxy_failure(exc: BaseException, proxy: ProxyURL | None, reading: bool) -> bool:
    if proxy is None or reading:
        return False
    import aiohttp

    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return True
    if proxy.is_socks:
        from aiohttp_socks import ProxyError as SocksProxyError

        # Through a SOCKS connector every connect-time failure is the proxy's:
        # a wrong password shows up as a closed connection, not a proxy error.
        return isinstance(exc, SocksProxyError | OSError | aiohttp.ClientError | EOFError)
    return False


def _client_timeout(timeout: Timeout, deadline: float | None) -> aiohttp.ClientTimeout:
    import aiohttp

    total = timeout.total
    if deadline is not None:
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        total = remaining if total is None else min(total, remaining)
    return aiohttp.ClientTimeout(
        total=total, connect=timeout.connect, sock_connect=timeout.connect, sock_read=timeout.read
    )
