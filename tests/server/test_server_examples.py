"""The embedding examples run as real processes and stream to a real HTTP client.

Each example is started with ``--base-url`` pointing at a FakeOpenAIServer
run by the test and ``--port 0``; the test reads the port from its first line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest

from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WEB_EXAMPLES = ["aiohttp_handler.py", "starlette_sse.py"]


@asynccontextmanager
async def example(name: str, upstream: FakeOpenAIServer) -> AsyncIterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        "--port",
        "0",
        "--base-url",
        upstream.base_url,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        with anyio.fail_after(60):
            first = (await process.stdout.readline()).decode()
        if not first.startswith("listening on "):
            raise AssertionError(first + (await process.stderr.read()).decode())
        yield first.split()[-1]
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            stderr = (await process.stderr.read()).decode()
            code = await process.wait()
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def parse_sse(raw: bytes) -> list[tuple[str, object]]:
    """(event name, decoded data) for each event; the name is "message" by default."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


async def get(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.read()


@pytest.mark.parametrize("name", WEB_EXAMPLES)
async def test_example_streams_answers_and_reports_errors(name: str) -> None:
    async with (
        FakeOpenAIServer(Behavior(text="Blue light scatters more.")) as upstream,
        example(name, upstream) as url,
    ):
        status, kind, raw = await get(url + "/ask?q=Why+is+the+sky+blue")
        upstream.fail(1, 404)
        missing_status, _, missing_raw = await get(url + "/ask?q=again")
        upstream.script(Behavior(text="half an answer", error_event_after=1))
        broken_status, _, broken_raw = await get(url + "/ask?q=again")
        empty_status, _, _ = await get(url + "/ask")
    assert status == 200
    assert kind.startswith("text/event-stream")
    events = parse_sse(raw)
    assert "".join(str(data) for event, data in events if event == "message") == (
        "Blue light scatters more."
    )
    assert events[-1] == ("done", {"provider": "OpenAI"})
    assert upstream.requests[0].json["messages"] == [
        {"role": "user", "content": "Why is the sky blue"}
    ]
    # An error before the first chunk is an HTTP status...
    assert missing_status == 404
    assert "404" in json.loads(missing_raw)["error"]
    # ...one after it is an error event at the end of the stream.
    assert broken_status == 200
    broken = parse_sse(broken_raw)
    assert broken[0] == ("message", "half")
    assert broken[-1][0] == "error"
    assert empty_status == 400


@pytest.mark.parametrize("name", WEB_EXAMPLES)
async def test_example_streams_before_the_answer_ends_and_cancels_on_disconnect(
    name: str,
) -> None:
    # Upstream stalls after the first word: the browser must already have it.
    async with (
        FakeOpenAIServer(Behavior(text="first second", stall_after=1)) as upstream,
        example(name, upstream) as url,
        aiohttp.ClientSession() as session,
    ):
        response = await session.get(url + "/ask?q=hi")
        assert response.status == 200
        received = b""
        with anyio.fail_after(30):
            while b'"first"' not in received:
                received += await response.content.readany()
        response.close()  # the browser tab goes away
        assert await upstream.wait_for_disconnects(1)
