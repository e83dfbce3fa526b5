"""``chatkit serve`` as a real process: start, wait until it listens, talk to it, stop it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import anyio
import pytest
from server_support import MESSAGES, UPSTREAM_KEY, sse_events, streamed_text

from chatkit.providers import Local
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

LISTENING = re.compile(r"listening on (http://\S+)")


def environment(**extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL") and k != "OLLAMA_HOST"
    }
    return {**clean, **extra}


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    async def read_until_listening(self) -> None:
        assert self.process.stderr is not None
        with anyio.fail_after(120):
            while True:
                line = (await self.process.stderr.readline()).decode()
                assert line, "chatkit serve ended before listening:\n" + "".join(self.stderr)
                self.stderr.append(line)
                found = LISTENING.search(line)
                if found:
                    self.url = found.group(1)
                    return

    async def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        assert self.process.stderr is not None
        with anyio.fail_after(30):
            rest = await self.process.stderr.read()
            code = await self.process.wait()
        self.stderr.append(rest.decode())
        return code

    @property
    def log(self) -> str:
        return "".join(self.stderr)


@asynccontextmanager
async def chatkit_serve(*args: str, env: dict[str, str]) -> AsyncIterator[Served]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatkit",
        "serve",
        "--port",
        "0",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    served = Served(process)
    try:
        await served.read_until_listening()
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [sys.executable, "-m", "chatkit", "serve", *args], env=env, check=False
    )


async def test_serve_answers_then_stops_cleanly_on_sigint() -> None:
    async with FakeOpenAIServer(Behavior(text="served answer"), api_key=UPSTREAM_KEY) as upstream:
        env = environment(OPENAI_API_KEY=UPSTREAM_KEY, CHATKIT_SERVER_API_KEY="gw-secret")
        args = ("--base-url", upstream.base_url, "-m", "house-model")
        async with chatkit_serve(*args, env=env) as served:
            assert served.url.startswith("http://127.0.0.1:")  # loopback by default
            assert "bearer token required" in served.log
            chat = served.url + "/v1/chat/completions"
            body = {"messages": MESSAGES, "stream": True}
            async with aiohttp.ClientSession() as session:
                async with session.post(chat, json=body) as denied:
                    assert denied.status == 401
                headers = {"Authorization": "Bearer gw-secret"}
                async with session.post(chat, json=body, headers=headers) as response:
                    assert response.status == 200
                    events = sse_events(await response.read())
            code = await served.stop(signal.SIGINT)
    assert code == 0, served.log
    assert streamed_text(events) == "served answer"
    assert upstream.requests[0].json["model"] == "house-model"
    assert "chatkit serve: stopped" in served.log
    assert "Traceback" not in served.log
    assert "POST /v1/chat/completions" in served.log  # the access log
    assert UPSTREAM_KEY not in served.log
    assert "gw-secret" not in served.log


async def test_serve_with_a_fallback_chain_stops_on_sigterm() -> None:
    async with FakeOpenAIServer(Behavior(text="from the chain"), api_key=UPSTREAM_KEY) as upstream:
        upstream.fail(1, 503)
        env = environment(OPENAI_API_KEY=UPSTREAM_KEY, OPENAI_BASE_URL=upstream.base_url)
        async with chatkit_serve("-p", "openai, openai", "--retries", "0", env=env) as served:
            assert "no auth" in served.log
            async with aiohttp.ClientSession() as session:
                chat = served.url + "/v1/chat/completions"
                async with session.post(chat, json={"messages": MESSAGES}) as response:
                    answer = await response.json()
                async with session.get(served.url + "/v1/models") as models:
                    listed = await models.json()
                async with session.get(served.url + "/") as page:
                    assert page.status == 200
            code = await served.stop(signal.SIGTERM)
    assert code == 0, served.log
    assert answer["choices"][0]["message"]["content"] == "from the chain"
    # A 503, then the second provider; a RetryProvider has no model list to ask for.
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"] * 2
    assert listed == {"object": "list", "data": []}


@pytest.mark.parametrize(
    ("args", "model", "sent"),
    [((), "gpt-q", "gpt-q"), (("-m", "openai:house"), None, "house")],
)
async def test_without_a_provider_requests_are_routed_per_call(
    args: tuple[str, ...], model: str | None, sent: str
) -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        env = environment(OPENAI_API_KEY=UPSTREAM_KEY, OPENAI_BASE_URL=upstream.base_url)
        async with chatkit_serve(*args, env=env) as served:
            body = (
                {"messages": MESSAGES} if model is None else {"messages": MESSAGES, "model": model}
            )
            async with (
                aiohttp.ClientSession() as session,
                session.post(served.url + "/v1/chat/completions", json=body) as response,
            ):
                answer = await response.json()
            assert await served.stop() == 0
    assert answer["provider"] == "OpenAI"
    assert upstream.requests[0].json["model"] == sent


async def test_api_key_option_wins_over_the_environment() -> None:
    async with FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream:
        env = environment(OPENAI_API_KEY=UPSTREAM_KEY, CHATKIT_SERVER_API_KEY="from-env")
        args = ("--base-url", upstream.base_url, "--api-key", "from-flag")
        async with chatkit_serve(*args, env=env) as served:
            async with aiohttp.ClientSession() as session:
                statuses = []
                for key in ("from-env", "from-flag"):
                    headers = {"Authorization": f"Bearer {key}"}
                    async with session.get(served.url + "/v1/models", headers=headers) as r:
                        statuses.append(r.status)
            assert await served.stop() == 0
    assert statuses == [401, 200]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("-p", "anthropic"), "ANTHROPIC_API_KEY"),
        (("-p", "openai,gemini"), "OPENAI_API_KEY"),
        (("-p", "nosuch"), "unknown provider 'nosuch'"),
        (("--base-url", "ftp://example"), "base_url"),
    ],
)
async def test_bad_configuration_fails_at_start_up(args: tuple[str, ...], fragment: str) -> None:
    result = await run_serve("--port", "0", *args, env=environment())
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith("chatkit: error: ")
    assert fragment in stderr
    assert "Traceback" not in stderr


async def test_debug_shows_tracebacks() -> None:
    missing = await run_serve("--debug", "-p", "anthropic", env=environment())
    assert missing.returncode == 1
    assert "Traceback" in missing.stderr.decode()
    assert "MissingAuthError" in missing.stderr.decode()
    async with FakeOpenAIServer() as upstream:
        args = ("--debug", "--base-url", upstream.base_url, "--port", str(upstream.port))
        taken = await run_serve(*args, env=environment())
    assert taken.returncode == 1
    assert "Traceback" in taken.stderr.decode()


async def test_a_port_in_use_is_one_error_line() -> None:
    async with FakeOpenAIServer() as upstream:
        env = environment()
        args = ("--base-url", upstream.base_url, "--port", str(upstream.port))
        result = await run_serve(*args, env=env)
    assert result.returncode == 1
    stderr = result.stderr.decode().splitlines()
    assert stderr[-1].startswith("chatkit: error: ")
    assert "Traceback" not in result.stderr.decode()


async def test_serve_is_listed_in_the_help() -> None:
    result = await anyio.run_process([sys.executable, "-m", "chatkit", "--help"], check=False)
    assert result.returncode == 0
    assert re.search(r"chatkit serve\s+Serve an OpenAI-compatible API", result.stdout.decode())
    own = await anyio.run_process([sys.executable, "-m", "chatkit", "serve", "--help"], check=False)
    assert "CHATKIT_SERVER_API_KEY" in own.stdout.decode()


@pytest.mark.slow
@pytest.mark.skipif(not Local.is_available(), reason="the embedded model is not installed")
async def test_serve_the_embedded_model() -> None:
    async with chatkit_serve("-p", "local", env=environment()) as served:
        assert "loading the local model" in served.log
        async with aiohttp.ClientSession() as session:
            body = {"messages": MESSAGES, "max_tokens": 5, "stream": True}
            async with session.post(served.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                events = sse_events(await r.read())
        assert await served.stop() == 0
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["provider"] == "Local"
