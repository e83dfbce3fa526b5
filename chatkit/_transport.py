"""HTTP transport: the only module that imports aiohttp and aiohttp_socks.

One ``Transport`` per client owns its aiohttp sessions: one per event loop and
per SOCKS proxy (aiohttp-socks binds a proxy to a connector), created lazily on
the loop that uses them. Providers see a per-call ``HTTPCall``, which tracks
the responses it opened so a stream dropped by the caller can be aborted
synchronously (``abort()``), from ``__del__`` if need be.

Foreign exceptions are translated here, once, into chatkit's error tree; a
foreign exception whose text holds a key or proxy password is chained as a
scrubbed stand-in, and status errors are scrubbed of the call's secrets too
(upstreams echo a bad key). The redaction helpers live in ``_config``.

Also here: the connection pool (``Limits``, waited for under ``Timeout.pool``),
redirects (followed by hand: never a body to another origin, never a
credential header), and the caps on decoded body sizes (``MAX_BODY_SIZE``,
``MAX_ERROR_BODY_SIZE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatkit._config import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    Limits,
    RedactedCause,
    Timeout,
    header_secrets,
    is_secret_header,
    safe_cause,
    scrub,
    scrub_error,
)
from chatkit._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ClientClosedError,
    InvalidRequestError,
    PoolTimeoutError,
    ProxyError,
    ResponseDecodeError,
    ResponseTooLargeError,
    error_from_status,
)
from chatkit._hooks import request_headers
from chatkit._pool import ConnectionPool, Permit, origin
from chatkit._proxy import ProxySettings, ProxyURL, SocksOptions
from chatkit._redirects import MAX_REDIRECTS, becomes_get, redirect_target
from chatkit._sockets import close_sockets as _close_sockets
from chatkit._sockets import connections

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_ERROR_BODY_SIZE",
    "MAX_REDIRECTS",
    "HTTPCall",
    "HTTPClient",
    "HTTPResponse",
    "RedactedCause",
    "Transport",
    "dumps",
]

# Caps on DECODED (decompressed) sizes, enforced while reading, so that a
# small gzip bomb never inflates into memory.
MAX_BODY_SIZE = 32 * 1024 * 1024
"""A non-streamed 2xx body (a completion, a models list): past it, ResponseTooLargeError."""
MAX_ERROR_BODY_SIZE = 1024 * 1024
"""An error response's body: the rest is dropped, the status error keeps the first part."""
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
        call: HTTPCall,
        provider: str,
        proxy: ProxyURL | None = None,
        permit: Permit | None = None,
    ) -> None:
        self._raw = raw
        self._call = call
        self._provider = provider
        self._proxy = proxy
        self._permit = permit
        self._loop = asyncio.get_running_loop()
        self.status: int = raw.status
        self.headers: Mapping[str, str] = raw.headers

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (``iter_any``: never ``readline``, no line cap)."""
        while True:
            data = await self._read_some()
            if not data:
                return
            yield data

    async def _read_some(self) -> bytes:
        failure = None
        try:
            return await self._raw.content.readany()
        except BaseException as exc:
            failure = self._call.translate(exc, self._provider, reading=True, proxy=self._proxy)
            if failure is exc:
                raise
        # Raised outside the except block so that the foreign exception
        # does not ride along as __context__ (it may hold a secret).
        raise failure

    async def read(self) -> bytes:
        """The whole (decoded) body, up to ``MAX_BODY_SIZE`` bytes.

        Read piece by piece and given up at the cap: aiohttp inflates a
        compressed body as it is read, so a gzip bomb stops at the cap too.
        """
        limit = MAX_BODY_SIZE  # read at call time: tests lower the module constant
        parts: list[bytes] = []
        size = 0
        while data := await self._read_some():
            size += len(data)
            if size > limit:
                self.close()  # the rest is never read
                raise ResponseTooLargeError(
                    f"{self._provider}: the response body is larger than {limit} bytes"
                    " once decompressed (chatkit's MAX_BODY_SIZE cap)",
                    provider=self._provider,
                )
            parts.append(data)
        return b"".join(parts)

    async def json(self) -> Any:
        body = await self.read()
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            raise ResponseDecodeError(
                f"{self._provider}: response body is {what} ({body[:80]!r})",
                provider=self._provider,
            ) from exc

    def close(self) -> None:
        """Drop the connection now; the server sees the disconnect."""
        self._raw.close()
        if self._permit is not None:
            self._permit.release_soon()

    def interrupt(self) -> None:
        """Fail a read in progress, then drop the connection (on the response's loop).

        aiohttp's session close drops the connections in use without telling
        the bodies reading from them, so a read already waiting would wait
        forever; here it fails, and ``translate`` names the closed client.
        """
        import aiohttp

        if not self._raw.content.is_eof():
            self._raw.content.set_exception(aiohttp.ClientConnectionError("the client was closed"))
        self.close()


@dataclass
class _LoopSessions:
    loop: asyncio.AbstractEventLoop
    pool: ConnectionPool
    # None: the session for direct and HTTP-proxy requests; otherwise one per
    # SOCKS proxy URL, in least-recently-used order.
    sessions: dict[str | None, aiohttp.ClientSession] = field(default_factory=dict)


class Transport:
    """Owns the aiohttp sessions of one client."""

    def __init__(self, proxy: ProxySettings | None = None, *, limits: Limits = DEFAULT_LIMITS):
        if not isinstance(limits, Limits):
            raise InvalidRequestError("limits must be a chatkit.Limits", field="limits")
        self.proxy = proxy or ProxySettings()
        self.limits = limits
        self._per_loop: dict[int, _LoopSessions] = {}
        # Every call's responses not yet released, for aclose() to interrupt.
        self._responses: set[HTTPResponse] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"Transport(proxy={self.proxy!r})"

    def call(
        self,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        proxy: ProxySettings | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HTTPCall:
        """A handle for one chat call.

        ``proxy`` is the call's own setting (``create(..., proxy=...)``): it
        overrides the client's; a provider's own settings override both.
        """
        return HTTPCall(self, self.proxy, timeout, dict(headers or {}), call_proxy=proxy)

    def _slot(self) -> _LoopSessions:
        if self._closed:
            raise ClientClosedError("the client is closed; create a new one to make more calls")
        loop = asyncio.get_running_loop()
        slot = self._per_loop.get(id(loop))
        if slot is None or slot.loop is not loop:
            self._forget_dead_loops()
            slot = self._per_loop[id(loop)] = _LoopSessions(loop, ConnectionPool(self.limits, loop))
        return slot

    def _session(self, proxy: ProxyURL | None) -> aiohttp.ClientSession:
        import aiohttp

        slot = self._slot()
        key = proxy.url if proxy is not None and proxy.is_socks else None
        session = slot.sessions.pop(key, None)
        if session is None or session.closed:
            limit = self.limits.max_connections or 0  # aiohttp: 0 means no limit
            per_host = self.limits.max_connections_per_host or 0
            if proxy is None or key is None:
                connector: aiohttp.BaseConnector = aiohttp.TCPConnector(
                    limit=limit, limit_per_host=per_host
                )
            else:
                connector = _socks_connector(proxy.socks_options(), limit, per_host)
                _evict_idle(slot.sessions, _MAX_SOCKS_SESSIONS - 1, slot.loop)
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
        # before fork) cannot be closed the usual way (that awaits on their loop).
        for loop_id, slot in list(self._per_loop.items()):
            if slot.loop.is_closed():
                for session in slot.sessions.values():
                    _close_soon(session, slot.loop)
                del self._per_loop[loop_id]

    async def aclose(self) -> None:
        """Close this loop's sessions; other loops' are closed on (or without) their loop."""
        self._closed = True
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is always awaited
            loop = None
        for response in list(self._responses):
            if response._loop is loop:
                response.interrupt()
            elif not response._loop.is_closed():
                response._loop.call_soon_threadsafe(response.interrupt)
        self._responses.clear()
        for slot in list(self._per_loop.values()):
            for session in slot.sessions.values():
                if slot.loop is loop:
                    await session.close()
                else:
                    _close_soon(session, slot.loop)
        self._per_loop.clear()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed


def _socks_connector(
    options: SocksOptions, limit: int, limit_per_host: int = 0
) -> aiohttp.BaseConnector:
    from aiohttp_socks import ProxyConnector, ProxyType

    return ProxyConnector(
        host=options.host,
        port=options.port,
        proxy_type=ProxyType.SOCKS4 if options.version == 4 else ProxyType.SOCKS5,
        username=options.username,
        password=options.password,
        rdns=options.remote_dns,
        limit=limit,
        limit_per_host=limit_per_host,
    )


def _evict_idle(
    sessions: dict[str | None, aiohttp.ClientSession], keep: int, loop: asyncio.AbstractEventLoop
) -> None:
    """Drop the least recently used idle SOCKS sessions beyond ``keep``."""
    socks = [key for key in sessions if key is not None]
    for key in socks[: max(len(socks) - keep, 0)]:
        connector = sessions[key].connector
        if connector is not None and connections(connector)[1]:
            continue  # a response is still streaming through it
        _close_soon(sessions.pop(key), loop)


# Closing tasks started by ``_close_soon``: asyncio keeps only weak references
# to tasks, and nobody awaits these.
_closing: set[asyncio.Task[None]] = set()


def _close_soon(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    """Close ``session`` without awaiting it: on its own loop, or by hand if that loop is gone.

    A session can only be closed on its own loop (closing awaits there). A
    closed loop (a finished ``asyncio.run``, a parent process before fork)
    never runs again: its sockets are closed directly, so the server sees the
    disconnect now rather than at garbage collection.
    """
    if not loop.is_closed():
        try:
            # A callback, not a coroutine: on a loop that is open but idle (a
            # run_until_complete user) it waits for the next run without
            # leaving a never-awaited coroutine behind.
            loop.call_soon_threadsafe(_start_closing, session)
            return
        except RuntimeError:  # the loop closed meanwhile
            pass
    connector = session.connector
    session.detach()  # the session now reads as closed and never touches the connector
    if connector is not None and not connector.closed:
        _close_sockets(connector)


def _start_closing(session: aiohttp.ClientSession) -> None:
    task = asyncio.get_running_loop().create_task(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


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


async def _error_body(raw: aiohttp.ClientResponse) -> bytes:
    """Up to ``MAX_ERROR_BODY_SIZE`` decoded bytes of an error response.

    ``content.read(n)`` returns whatever has arrived, so it loops. When the
    body breaks off or stalls, the status already says what went wrong: keep
    the part that arrived rather than turn a 503 into a connection error.
    """
    parts: list[bytes] = []
    size = 0
    try:
        while size < MAX_ERROR_BODY_SIZE:
            data = await raw.content.read(MAX_ERROR_BODY_SIZE - size)
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
    malformed = _malformed(exc)
    if malformed is not None:
        # aiohttp words an unparsable response as a "400" of its own making;
        # no server answered 400: the bytes were not HTTP, or broke off.
        what = "connection lost while reading" if reading else "malformed HTTP response"
        return APIConnectionError(
            f"{provider}: {what}: {scrub(malformed, secrets)}", provider=provider
        )
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.IncompleteReadError):
        action = "connection lost while reading" if reading else "cannot connect"
        return APIConnectionError(f"{provider}: {action}: {detail}", provider=provider)
    return exc


def _malformed(exc: BaseException) -> str | None:
    """What aiohttp found wrong in the response's bytes, or None when it is another failure."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return None
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.message}"[:300]
    if isinstance(exc, aiohttp.ClientPayloadError):
        inner = exc.__cause__
        message = getattr(inner, "message", None)
        if isinstance(message, str):
            return f"{type(inner).__name__}: {message}"[:300]
        return f"{exc}"[:300]
    return None


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


# The task whose requests the caller bounds by the call's deadline itself (the
# retry layer's non-streamed attempt, under one asyncio.timeout): they arm no
# aiohttp ``total`` timer of their own, one timer per call instead of two.
# A task, not a flag: a task the provider spawns is not under that timeout.
DEADLINE_OWNER: ContextVar[asyncio.Task[Any] | None] = ContextVar("chatkit_deadline_owner")


def deadline_owned() -> bool:
    """Whether the running task's requests are bounded by their caller (above)."""
    owner = DEADLINE_OWNER.get(None)
    return owner is not None and owner is asyncio.current_task()


def _client_timeout(timeout: Timeout, deadline: float | None, owned: bool) -> aiohttp.ClientTimeout:
    if owned:  # connect and read still bound the connection and the silences
        return _untotalled(timeout.connect, timeout.read)
    import aiohttp

    total = timeout.total
    if deadline is not None:
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        total = remaining if total is None else min(total, remaining)
    # aiohttp's ``connect`` covers its pool wait plus connecting (TCP, TLS,
    # proxy handshake). Its pool never waits here: a request holds a `ConnectionPool`
    # permit (same limits) before reaching it, and that wait is Timeout.pool's.
    # So ``connect`` bounds the real connection set-up only, TLS included,
    # which ``sock_connect`` (the TCP connect alone) would not.
    return aiohttp.ClientTimeout(
        total=total, connect=timeout.connect, sock_connect=timeout.connect, sock_read=timeout.read
    )


@functools.lru_cache(maxsize=32)
def _untotalled(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
