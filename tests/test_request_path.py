"""The non-streamed request path with one deadline owner (issue 17).

A non-streamed attempt runs under the retry layer's ``asyncio.timeout`` for
the call's deadline, so the transport arms no aiohttp ``total`` timer of its
own for that task's requests; the connect and read timeouts stay. A stream
is still bounded by the transport's total after its first content. These
tests hold the timeouts contract (docs/architecture.md) on both paths.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

import chatkit
from chatkit import APITimeoutError, StreamInterrupted, Timeout
from chatkit._transport import DEADLINE_OWNER, _client_timeout, deadline_owned
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hi"}]
GUARD = 20  # seconds: far above every timeout below, so a hang fails the test


async def test_a_non_streamed_call_ends_at_its_total_deadline(server: FakeOpenAIServer) -> None:
    server.script(Behavior(stall_after=0, stall_seconds=30))
    timeout = Timeout(total=0.5, read=30)
    async with chatkit.AsyncClient(OpenAI(base_url=server.base_url, api_key="sk-test")) as client:
        started = time.monotonic()
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError) as caught:
            await client.chat.completions.create(messages=HELLO, timeout=timeout)
    assert time.monotonic() - started < 5
    assert "deadline" in str(caught.value)


async def test_a_non_streamed_call_keeps_its_read_timeout(server: FakeOpenAIServer) -> None:
    server.script(Behavior(stall_after=0, stall_seconds=30))
    timeout = Timeout(total=60, read=0.3)
    client = chatkit.AsyncClient(
        OpenAI(base_url=server.base_url, api_key="sk-test"), timeout=timeout, max_retries=0
    )
    async with client:
        started = time.monotonic()
        with anyio.fail_after(GUARD), pytest.raises(APITimeoutError) as caught:
            await client.chat.completions.create(messages=HELLO)
    assert time.monotonic() - started < 5
    assert "waiting for headers" in str(caught.value)


async def test_a_stream_after_content_is_still_bounded_by_the_total(
    server: FakeOpenAIServer,
) -> None:
    server.script(Behavior(stall_after=2, stall_seconds=30))
    timeout = Timeout(total=0.8, read=30)
    async with chatkit.AsyncClient(OpenAI(base_url=server.base_url, api_key="sk-test")) as client:
        started = time.monotonic()
        texts = []
        with anyio.fail_after(GUARD), pytest.raises(StreamInterrupted) as caught:
            async for chunk in client.chat.completions.create(
                messages=HELLO, stream=True, timeout=timeout
            ):
                texts.append(chunk.text)
    assert time.monotonic() - started < 5
    assert "".join(texts)
    assert isinstance(caught.value.__cause__, APITimeoutError)


async def test_only_the_owning_task_skips_the_total_timer() -> None:
    assert not deadline_owned()
    token = DEADLINE_OWNER.set(asyncio.current_task())
    try:
        assert deadline_owned()
        # A task started under the owner inherits the variable, not the timeout.
        assert not await asyncio.create_task(_owned_in_a_task())
    finally:
        DEADLINE_OWNER.reset(token)
    assert not deadline_owned()


async def _owned_in_a_task() -> bool:
    return deadline_owned()


async def test_the_untotalled_timeout_keeps_connect_and_read() -> None:
    timeout = Timeout(connect=3.0, read=7.0, total=600.0)
    deadline = asyncio.get_running_loop().time() + 2.0
    owned = _client_timeout(timeout, deadline, owned=True)
    assert owned.total is None
    assert (owned.connect, owned.sock_connect, owned.sock_read) == (3.0, 3.0, 7.0)
    bounded = _client_timeout(timeout, deadline, owned=False)
    assert bounded.total is not None and bounded.total <= 2.0
    assert (bounded.connect, bounded.sock_read) == (3.0, 7.0)
