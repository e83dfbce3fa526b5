"""``Transport``: the aiohttp sessions of one client, per event loop and per SOCKS proxy.

Split out of the transport: session lifetime (created lazily on the loop that
uses them, evicted, closed on their own loop or by hand once it is gone) is
apart from what one call does with them (``_call``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatkit._config import DEFAULT_LIMITS, DEFAULT_TIMEOUT, Limits, Timeout
from chatkit._errors import ClientClosedError, InvalidRequestError
from chatkit._pool import ConnectionPool
from chatkit._proxy import ProxySettings, ProxyURL, SocksOptions
from chatkit._sockets import close_sockets as _close_sockets
from chatkit._sockets import connections
from chatkit._transport._call import HTTPCall

if TYPE_CHECKING:
    import aiohttp

    from chatkit._transport._response import HTTPResponse

_USER_AGENT = "chatkit/0.1"
# Sessions kept per loop for distinct SOCKS proxies: callers that rotate
# proxies per call must not grow one connection pool per proxy forever.
_MAX_SOCKS_SESSIONS = 16


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
