"""Relaying a stream's events to the caller in as few socket writes as possible.

An upstream read usually holds many SSE events, so chatkit hands the gateway
a run of chunks without ever waiting in between. Writing each one as it comes
costs a ``send()`` system call and an HTTP chunk header per event: measured
on the gateway benchmark, that was a quarter of the gateway's CPU time. Here
the handler only queues the bytes; a writer task sends everything queued in
one write whenever the handler stops to wait for upstream, which is exactly
when the run ends. Nothing waits on a timer, so no event is delayed.

The writer is the only one that writes to the response, so the events keep
their order; the handler waits when too much is queued (the caller reads
slower than upstream sends), so memory stays bounded.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["Outbox"]

# Queued bytes past which the handler waits for the writer: enough for a few
# hundred typical events, small beside a connection's memory.
HIGH_WATER = 256 * 1024


class Outbox:
    """Bytes for one streamed response, written by a task of its own."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._parts: list[bytes] = []
        self._size = 0
        self._closing = False
        self._queued = asyncio.Event()
        self._taken = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_all())

    @property
    def queued(self) -> int:
        """Bytes queued and not yet handed to the response."""
        return self._size

    async def put(self, data: bytes) -> None:
        """Queue ``data``; raises what the writer met (the caller went away)."""
        self._check_writer()
        self._parts.append(data)
        self._size += len(data)
        self._queued.set()
        if self._size >= HIGH_WATER:
            self._taken.clear()
            await self._until(self._taken)

    async def close(self) -> None:
        """Write what is queued, then wait for the writer to finish."""
        self._closing = True
        self._queued.set()
        await self._writer

    async def abandon(self) -> None:
        """Stop the writer, dropping what is queued (the response is over)."""
        if not self._writer.done():
            self._writer.cancel()
        # Whatever it ended with was reported through put()/close(), or does
        # not matter any more: the stream is being torn down.
        await asyncio.gather(self._writer, return_exceptions=True)

    def _check_writer(self) -> None:
        if self._writer.done():
            self._writer.result()  # re-raises the writer's failure
            raise RuntimeError("the stream's writer stopped before the stream ended")

    async def _until(self, event: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not event.is_set():
            self._check_writer()

    async def _write_all(self) -> None:
        while True:
            if not self._parts:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._taken.set()
            await self._response.write(data)
