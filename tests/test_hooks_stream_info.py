"""What ``observe_stream`` tells hooks, against the per-chunk reading it replaced.

``observe_stream`` keeps ``CallInfo`` current chunk by chunk only until the
first content; after it, it collects the text, the finish reason and the
usage and takes provider, model and id from the last chunk at the end
(issue 17: hooks on streams cost too much per chunk). ``reference_stream``
below is the code it replaced, reading every field of every chunk. For any
chunk sequence (several choices, usage and finish reasons anywhere, the
provider changing, no content at all), ended normally, by an error or by the
consumer closing early, both must tell the same events with the same
``CallInfo``. A real-server test checks the streamed answer's fields too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatkit
from chatkit._hooks import CallInfo, HookRunner, observe_stream
from chatkit._request import build_request
from chatkit._types import ChatCompletionChunk, CompletionUsage
from chatkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.anyio

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = ("provider", "response_model", "response_id", "usage", "finish_reason", "text")


async def reference_stream(
    runner: HookRunner, call: CallInfo, chunks: AsyncGenerator[ChatCompletionChunk, None]
) -> AsyncIterator[ChatCompletionChunk]:
    """``observe_stream`` before issue 17: every field of every chunk read."""
    await runner.emit("on_call_start", call)
    error: BaseException | None = None
    pieces: list[str] = []
    try:
        async for chunk in chunks:
            call.provider = chunk.provider
            if call.time_to_first_content is None and chunk.has_content:
                call.time_to_first_content = time.monotonic() - call.started
                await runner.emit("on_first_content", call)
            call.response_model, call.response_id = chunk.model, chunk.id
            if chunk.usage is not None:
                call.usage = chunk.usage
            for choice in chunk.choices:
                if choice.index == 0:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                    if choice.finish_reason is not None:
                        call.finish_reason = choice.finish_reason
            yield chunk
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            error = exc
        raise
    finally:
        call.text = "".join(pieces)
        call.duration = time.monotonic() - call.started
        call.error = error
        await runner.emit("on_call_end", call)
        await chunks.aclose()


class Snapshots:
    """Each event with the CallInfo fields as they were when it fired."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def _snap(self, event: str, call: CallInfo) -> None:
        fields = tuple(getattr(call, name) for name in FIELDS)
        error = type(call.error).__name__ if call.error is not None else None
        self.seen.append((event, *fields, call.time_to_first_content is not None, error))

    def on_call_start(self, call: CallInfo) -> None:
        self._snap("start", call)

    def on_first_content(self, call: CallInfo) -> None:
        self._snap("first", call)

    def on_call_end(self, call: CallInfo) -> None:
        self._snap("end", call)


class Broken(Exception):
    pass


# -- chunk sequences ------------------------------------------------------------------

_text = st.sampled_from(["", " token", "é😀", "x"])
_finish = st.sampled_from([None, None, None, "stop", "length", "tool_calls"])


@st.composite
def _choice(draw: st.DrawFn, index: int) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    kind = draw(st.sampled_from(["content", "content", "content", "role", "empty", "reasoning"]))
    if kind == "content":
        delta["content"] = draw(_text)
    elif kind == "role":
        delta = {"role": "assistant", "content": draw(_text)}
    elif kind == "reasoning":
        delta["reasoning_content"] = draw(_text)
    return {"index": index, "delta": delta, "finish_reason": draw(_finish)}


@st.composite
def _chunk(draw: st.DrawFn) -> ChatCompletionChunk:
    indexes = draw(st.lists(st.integers(0, 2), max_size=3, unique=True))
    body: dict[str, Any] = {
        "id": draw(st.sampled_from(["c-1", "c-2"])),
        "object": "chat.completion.chunk",
        "created": 1,
        "model": draw(st.sampled_from(["m-a", "m-b"])),
        "choices": [draw(_choice(index)) for index in indexes],
    }
    if draw(st.integers(0, 4)) == 0:
        total = draw(st.integers(0, 50))
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": total, "total_tokens": total + 1}
    chunk = ChatCompletionChunk.model_validate(body)
    provider = draw(st.sampled_from([None, "A", "B"]))
    if provider is not None:
        chunk.__dict__["provider"] = provider
    return chunk


_ENDS = st.sampled_from(["normal", "error", "close"])


async def _observe(
    observer: Any, chunks: list[ChatCompletionChunk], end: str, close_after: int
) -> list[tuple[Any, ...]]:
    hook = Snapshots()
    runner = HookRunner([hook])
    request = build_request(
        model="m", messages=[{"role": "user", "content": "Hi"}], stream=True, params={}
    )
    call = CallInfo(request=request, label="x", attempts=[])

    async def source() -> AsyncGenerator[ChatCompletionChunk, None]:
        for chunk in chunks:
            yield chunk
        if end == "error":
            raise Broken("cut")

    observed = observer(runner, call, source())
    taken = 0
    try:
        async for _ in observed:
            taken += 1
            if end == "close" and taken >= close_after:
                break
    except Broken:
        pass
    await observed.aclose()
    return hook.seen


@PROPERTY
@given(st.lists(_chunk(), max_size=8), _ENDS, st.integers(1, 8))
async def test_call_info_is_what_reading_every_chunk_gave(
    chunks: list[ChatCompletionChunk], end: str, close_after: int
) -> None:
    expected = await _observe(reference_stream, chunks, end, close_after)
    got = await _observe(observe_stream, chunks, end, close_after)
    assert got == expected


async def test_a_streamed_answer_is_told_as_the_stream_assembled_it(
    server: FakeOpenAIServer,
) -> None:
    hook = Snapshots()
    client = chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test", hooks=[hook])
    async with client:
        stream = await client.chat.completions.create(
            messages=[{"role": "user", "content": "Hi"}],
            model="gpt-4o-mini",
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for _ in stream:
                pass
        final = stream.get_final_completion()
    end = hook.seen[-1]
    assert end[0] == "end"
    assert end[1:7] == (
        final.provider,
        final.model,
        final.id,
        final.usage,
        final.choices[0].finish_reason,
        final.choices[0].message.content,
    )
    assert isinstance(final.usage, CompletionUsage) and final.choices[0].message.content
    assert end[7] is True and end[8] is None
