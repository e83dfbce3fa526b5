"""Clients nobody here wrote talk to the gateway: the official openai package and curl.

chatkit's own clients (async and sync) are pointed at it too, as at any
OpenAI-compatible server. Sync clients run in a worker thread: the gateway
and the fake upstream share the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, cast

import anyio
import openai
import pytest
from server_support import MESSAGES, UPSTREAM_KEY, gateway, sse_events, streamed_text

import chatkit
from chatkit.testing import Behavior, FakeOpenAIServer

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

pytestmark = pytest.mark.anyio

ANSWER = "The quick brown fox"
GATEWAY_KEY = "gw-key-for-tests"


def sync_openai(url: str, key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def async_openai(url: str, key: str = GATEWAY_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


# -- the official openai package -----------------------------------------------------


async def test_openai_async_streamed_and_not() -> None:
    async with (
        FakeOpenAIServer(Behavior(text=ANSWER), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
        async_openai(url) as client,
    ):
        completion = await client.chat.completions.create(model="gpt-x", messages=MESSAGES)
        stream = await client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        models = await client.models.list()
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert "".join(pieces) == ANSWER
    assert len(pieces) > 2
    assert [m.id for m in models.data] == ["fake-model"]


async def test_openai_sync_streamed_and_not() -> None:
    async with (
        FakeOpenAIServer(Behavior(text=ANSWER), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):

        def use() -> tuple[str, str, list[str]]:
            with sync_openai(url) as client:
                completion = client.chat.completions.create(model="gpt-x", messages=MESSAGES)
                stream = client.chat.completions.create(
                    model="gpt-x",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                pieces = []
                usage = ""
                for chunk in stream:
                    if chunk.choices:
                        pieces.append(chunk.choices[0].delta.content or "")
                    if chunk.usage is not None:
                        usage = str(chunk.usage.total_tokens)
                return completion.choices[0].message.content or "", usage, pieces

        text, usage, pieces = await anyio.to_thread.run_sync(use)
    assert text == ANSWER
    assert "".join(pieces) == ANSWER
    assert int(usage) > 0


async def test_openai_sees_statuses_as_its_own_error_types() -> None:
    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):
        async with async_openai(url, key="wrong") as client:
            with pytest.raises(openai.AuthenticationError) as denied:
                await client.chat.completions.create(model="m", messages=MESSAGES)
        async with async_openai(url) as client:
            upstream.fail(1, 429, retry_after=3)
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            upstream.fail(1, 404)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
            # Deliberately a role openai does not know: the gateway refuses it.
            robot = cast("list[ChatCompletionMessageParam]", [{"role": "robot", "content": "Hi"}])
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(model="m", messages=robot)
    assert denied.value.status_code == 401
    assert limited.value.response.headers["retry-after"] == "3"
    assert bad.value.body is not None
    assert "messages[0].role" in str(bad.value)


async def test_openai_gets_an_error_event_mid_stream_as_an_exception() -> None:
    behavior = Behavior(text="alpha beta gamma", error_event_after=1)
    async with (
        FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
        async_openai(url) as client,
    ):
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        pieces: list[str] = []
        with pytest.raises(openai.APIError) as broke:
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "alpha"
    assert "stream broke off" in broke.value.message


async def test_openai_async_client_breaking_out_cancels_the_upstream() -> None:
    behavior = Behavior(text="one two three", stall_after=1)
    async with (
        FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):
        async with async_openai(url) as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
        assert await upstream.wait_for_disconnects(1)


# -- chatkit's own clients, as clients of the gateway ------------------------------------


async def test_chatkit_async_client_through_the_gateway() -> None:
    async with (
        FakeOpenAIServer(Behavior(text=ANSWER), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
        chatkit.AsyncClient(base_url=url + "/v1", api_key=GATEWAY_KEY) as client,
    ):
        stream = client.chat.completions.create(messages=MESSAGES, stream=True)
        text = "".join([chunk.text async for chunk in stream])
        completion = await client.chat.completions.create(messages=MESSAGES)
        upstream.script(Behavior(text="x y z", error_event_after=1))
        with pytest.raises(chatkit.StreamInterrupted) as broke:
            async for _ in client.chat.completions.create(messages=MESSAGES, stream=True):
                pass
    assert text == ANSWER
    assert completion.text == ANSWER
    assert broke.value.partial_text == "x"


async def test_chatkit_sync_client_through_the_gateway() -> None:
    async with (
        FakeOpenAIServer(Behavior(text=ANSWER), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):

        def use() -> tuple[str, str, int]:
            with chatkit.Client(base_url=url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as client:
                with client.chat.completions.create(messages=MESSAGES, stream=True) as stream:
                    text = "".join(chunk.text for chunk in stream)
                completion = client.chat.completions.create(messages=MESSAGES)
                upstream.fail(1, 429, retry_after=0)
                try:
                    client.chat.completions.create(messages=MESSAGES, stream=True).until_done()
                except chatkit.RateLimitError as exc:
                    return text, completion.text, exc.status_code
                return text, completion.text, 0

        text, whole, status = await anyio.to_thread.run_sync(use)
    assert text == ANSWER
    assert whole == ANSWER
    assert status == 429


# -- curl -------------------------------------------------------------------------------------

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


async def curl(*args: str) -> tuple[int, str, str]:
    assert CURL is not None
    result = await anyio.run_process(
        [CURL, "--silent", "--show-error", "--no-buffer", "--max-time", "30", *args],
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def curl_post(url: str, body: dict[str, Any] | str, key: str | None = GATEWAY_KEY) -> list[str]:
    args = [
        "--write-out",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "--data",
        body if isinstance(body, str) else json.dumps(body),
    ]
    if key is not None:
        args += ["-H", f"Authorization: Bearer {key}"]
    return [*args, url + "/v1/chat/completions"]


@needs_curl
async def test_curl_streamed_not_streamed_and_errors() -> None:
    async with (
        FakeOpenAIServer(Behavior(text=ANSWER), api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):
        streamed = await curl(*curl_post(url, {"messages": MESSAGES, "stream": True}))
        whole = await curl(*curl_post(url, {"messages": MESSAGES}))
        unauthorized = await curl(*curl_post(url, {"messages": MESSAGES}, key=None))
        malformed = await curl(*curl_post(url, "{oops"))
        models = await curl("-H", f"Authorization: Bearer {GATEWAY_KEY}", url + "/v1/models")
    code, out, err = streamed
    assert code == 0, err
    body, _, status = out.rpartition("\n")
    assert status == "200"
    assert streamed_text(sse_events(body.encode())) == ANSWER
    assert sse_events(body.encode())[-1] == "[DONE]"

    body, _, status = whole[1].rpartition("\n")
    assert status == "200"
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER

    body, _, status = unauthorized[1].rpartition("\n")
    assert status == "401"
    assert json.loads(body)["error"]["code"] == "invalid_api_key"

    body, _, status = malformed[1].rpartition("\n")
    assert status == "400"
    assert "not valid JSON" in json.loads(body)["error"]["message"]

    assert json.loads(models[1])["data"][0]["id"] == "fake-model"


@needs_curl
async def test_curl_sees_the_stream_as_it_comes() -> None:
    # The upstream stalls after the first word: curl must already have it.
    behavior = Behavior(text="first second", stall_after=1)
    async with (
        FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
    ):
        assert CURL is not None
        process = await asyncio.create_subprocess_exec(
            CURL,
            "--silent",
            "--no-buffer",
            *curl_post(url, {"messages": MESSAGES, "stream": True}),
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(30):
            while b'"first"' not in seen:
                line = await process.stdout.readline()
                assert line, "curl ended before the first word"
                seen += line
        process.terminate()  # curl goes away mid-stream...
        await process.wait()
        assert await upstream.wait_for_disconnects(1)  # ...and so does the upstream request
