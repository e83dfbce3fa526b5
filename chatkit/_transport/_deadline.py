"""The call's deadline as aiohttp timeouts, and who owns the deadline.

Split out of the transport: the retry layer marks the task whose requests it
bounds itself (``DEADLINE_OWNER``), and each request turns the call's
``Timeout`` and deadline into an ``aiohttp.ClientTimeout`` here.
"""

from __future__ import annotations

import asyncio
import functools
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from chatkit._config import Timeout

if TYPE_CHECKING:
    import aiohttp

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
