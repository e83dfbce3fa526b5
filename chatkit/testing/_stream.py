"""Writing one streamed answer, with the faults its Behavior asks for.

Every vendor's events are encoded up front (`StreamPlan`, in that vendor's
framing) so that one writer injects the faults for all of them, and written in
batches of about `BATCH_BYTES`, so a benchmark stream of tens of thousands of chunks costs a
few hundred writes rather than one write (and one drain) per event. Only a
`delay`, a fault or the end of the stream forces a flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ._behavior import Behavior
from ._wire import (
    DONE,
    MALFORMED,
    TRICKLE,
    ChunkEncoder,
    answer_pieces,
    error_body,
    sse,
    tool_call_deltas,
)

__all__ = ["BATCH_BYTES", "Answer", "StreamPlan", "build_plan", "write_stream"]

BATCH_BYTES = 64 * 1024


@dataclass
class StreamPlan:
    """Every event of one stream, already encoded in the vendor's framing."""

    opening: bytes
    """Sent before the content chunks (b"": nothing)."""
    items: list[bytes]
    """The content chunks; fault positions count these."""
    closing: bytes
    """Sent after the content chunks when no fault ended the stream early."""
    malformed: bytes
    """What ``malformed_after`` sends: an event the client cannot parse."""
    error_event: bytes
    """What ``error_event_after`` sends, ending the stream."""
    keepalive: bytes = TRICKLE
    """What a ``trickle`` sends while stalled; clients must skip it."""
    delay_closing: bool = False
    """Wait ``delay`` before the closing too (OpenAI's finishing chunk is a chunk)."""


class Answer(Protocol):
    """One vendor's answer to one request, in both its streamed and whole forms."""

    behavior: Behavior
    stream: bool

    def plan(self) -> StreamPlan:
        """The events of the streamed answer."""
        ...

    def payload(self) -> bytes:
        """The body of the whole (non-streamed) answer."""
        ...

    def error_response(self, headers: dict[str, str]) -> web.Response:
        """What a non-streamed request gets instead of the stream's error event."""
        ...


def build_plan(
    behavior: Behavior, encoder: ChunkEncoder, *, finish_reason: str, prompt: int | None
) -> StreamPlan:
    """Encode the OpenAI stream for `behavior`; `prompt` is None unless usage was requested."""
    items = [encoder.delta({"reasoning_content": piece}) for piece in behavior.reasoning or ()]
    # Benchmarks repeat one piece thousands of times: encode each distinct piece once.
    cache: dict[str, bytes] = {}
    for piece in answer_pieces(behavior, encoder):
        event = cache.get(piece)
        if event is None:
            event = cache[piece] = encoder.delta({"content": piece})
        items.append(event)
    items.extend(encoder.delta(delta) for delta in tool_call_deltas(behavior.tool_calls or []))
    closing = encoder.finish(finish_reason)
    if prompt is not None:
        closing += encoder.usage(prompt, len(items))
    if behavior.done:
        closing += DONE
    return StreamPlan(
        opening=encoder.delta({"role": "assistant", "content": ""}),
        items=items,
        closing=closing,
        malformed=MALFORMED,
        error_event=sse(error_body("fake error event", behavior.error_event_type)),
        delay_closing=True,
    )


class _Batcher:
    """Collects events and writes them as one body chunk once enough piled up."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)

    async def add_batched(self, items: list[bytes]) -> None:
        for data in items:
            self._parts.append(data)
            self._size += len(data)
            if self._size >= BATCH_BYTES:
                await self.flush()

    async def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            await self._response.write(data)


def _fault_points(behavior: Behavior, count: int) -> dict[str, int]:
    """Where each requested fault fires, clamped to "after the last content chunk"."""
    points = {
        "stall": behavior.stall_after,
        "malformed": behavior.malformed_after,
        "error": behavior.error_event_after,
        "drop": behavior.drop_after,
    }
    if behavior.trickle is not None and behavior.stall_after is None:
        points["stall"] = 0
    return {name: min(max(at, 0), count) for name, at in points.items() if at is not None}


async def _stall(out: _Batcher, seconds: float, trickle: float | None, keepalive: bytes) -> None:
    await out.flush()
    if trickle is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    # Keep-alives keep bytes flowing (a read timeout never fires) while no event arrives.
    while (left := end - loop.time()) > trickle:
        await asyncio.sleep(trickle)
        out.add(keepalive)
        await out.flush()
    await asyncio.sleep(max(left, 0.0))


async def write_stream(
    response: web.StreamResponse,
    plan: StreamPlan,
    behavior: Behavior,
    close_connection: Callable[[], None],
) -> None:
    """Write `plan` to the prepared `response`, injecting `behavior`'s faults.

    `close_connection` ends the TCP connection mid-body (for `drop_after`).
    """
    out = _Batcher(response)
    if plan.opening:
        out.add(plan.opening)
    points = _fault_points(behavior, len(plan.items))
    # Cut the content at each fault position; between cuts it streams freely.
    cuts = sorted(set(points.values()) | {len(plan.items)})
    start = 0
    for cut in cuts:
        await _write_items(out, plan.items[start:cut], behavior.delay)
        start = cut
        if points.get("stall") == cut:
            await _stall(out, behavior.stall_seconds, behavior.trickle, plan.keepalive)
        if points.get("malformed") == cut:
            out.add(plan.malformed)
        if points.get("error") == cut:
            out.add(plan.error_event)
            await out.flush()
            return
        if points.get("drop") == cut:
            await out.flush()
            close_connection()
            return
    if plan.delay_closing and behavior.delay:
        await out.flush()
        await asyncio.sleep(behavior.delay)
    out.add(plan.closing)
    await out.flush()


async def _write_items(out: _Batcher, items: list[bytes], delay: float) -> None:
    if not delay:
        await out.add_batched(items)
        return
    for data in items:
        # Flush first so the client sees everything sent so far during the pause.
        await out.flush()
        await asyncio.sleep(delay)
        out.add(data)
