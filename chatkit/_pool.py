"""The connection pool's permits: ``Limits`` enforced before aiohttp sees a request.

aiohttp's connector counts its own limits too, but waiting for them counts as
its connect timeout and cannot be told apart from a slow connect. So a request
first takes a permit here, for its host and then overall, under
``Timeout.pool``; aiohttp, given the same limits, then never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

from chatkit._config import Limits

__all__ = ["ConnectionPool", "Permit", "origin"]


class ConnectionPool:
    """The connection permits of one Transport on one loop (``Limits``)."""

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        total = limits.max_connections
        self.total = asyncio.Semaphore(total) if total is not None else None
        # host -> [semaphore, users]; dropped when no permit holder nor waiter uses it.
        self.hosts: dict[str, list[Any]] = {}

    async def acquire(self, origin: str, wait: float | None) -> Permit:
        permit = Permit(self, origin)
        per_host = self.limits.max_connections_per_host
        if per_host is not None:
            entry = self.hosts.setdefault(origin, [asyncio.Semaphore(per_host), 0])
            entry[1] += 1
            permit.host = entry[0]
        try:
            if (permit.host is not None and permit.host.locked()) or (
                self.total is not None and self.total.locked()
            ):
                async with asyncio.timeout(wait):
                    await permit.take()
            else:
                await permit.take()  # free slots: no timer to arm
        except BaseException:
            permit.release()  # a cancelled or timed-out wait holds nothing
            raise
        return permit


class Permit:
    """One request's hold on the pool; released once, when its response ends."""

    def __init__(self, pool: ConnectionPool, origin: str) -> None:
        self.pool = pool
        self.origin = origin
        self.host: asyncio.Semaphore | None = None
        self.held_host = False
        self.held_total = False
        self.released = False

    async def take(self) -> None:
        if self.host is not None:
            await self.host.acquire()
            self.held_host = True
        if self.pool.total is not None:
            await self.pool.total.acquire()
            self.held_total = True

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.held_total and self.pool.total is not None:
            self.pool.total.release()
        if self.host is not None:
            if self.held_host:
                self.host.release()
            entry = self.pool.hosts.get(self.origin)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.pool.hosts[self.origin]

    def release_soon(self) -> None:
        """``release``, from any thread (``HTTPCall.abort`` may run in ``__del__``)."""
        loop = self.pool.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread (__del__ elsewhere)
            running = None
        if running is loop:
            self.release()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.release)


def origin(url: str) -> str:
    """``scheme://host:port`` with the default port filled in: what "same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"
