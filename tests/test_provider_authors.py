"""The public surface for provider authors, and the example provider built on it.

examples/chatkit-echo-provider is a third-party package: it speaks a wire
format of its own (SSE with plain-text ``token`` events), imports only
``chatkit.providers.base``, and registers itself under the ``chatkit.providers``
entry-point group. It is installed here with pip into a temporary directory
and driven through that entry point from a separate Python process, against a
fake Echo server; the same provider is also driven in-process for the error
paths (retries, the commit point, capabilities).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import chatkit
import chatkit.providers.base as base
from chatkit._transport import HTTPCall, Transport
from chatkit.providers import ENTRY_POINT_GROUP

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chatkit-echo-provider"
MESSAGES = [{"role": "user", "content": "hello there, echo"}]


class EchoServer:
    """The Echo wire format on 127.0.0.1, with one scripted fault per request."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> EchoServer:
        app = web.Application()
        app.router.add_post("/v1/echo", self._echo)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            error = {"error": {"message": "bad key", "type": "authentication_error"}}
            return web.json_response(error, status=401)
        fault = self.faults.pop(0) if self.faults else ""
        if fault == "429":
            error = {"error": {"message": "slow down", "type": "rate_limit_error"}}
            return web.json_response(error, status=429, headers={"Retry-After": "0"})
        if fault == "json-error":
            # A 200 that is no stream at all: sse_events raises the error it describes.
            error = {"error": {"message": "no such model", "type": "invalid_request_error"}}
            return web.json_response(error)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        text = body["messages"][-1]["content"]
        words = [f"{body['model']} says:", *(f" {w}" for w in text.split())]
        if fault == "error-first":
            await response.write(_event("error", '{"message":"busy","type":"overloaded_error"}'))
            return response
        await response.write(b": keep-alive comment\n\n")
        for number, word in enumerate(words):
            if number == 2 and fault == "error-later":
                await response.write(_event("error", '{"message":"gone","type":"api_error"}'))
                return response
            if number == 0 and fault == "drop":
                return response  # the body ends with no token and no done event
            await response.write(_event("token", word))
        await response.write(_event("done", "stop"))
        return response


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


@pytest.fixture
async def server() -> AsyncIterator[EchoServer]:
    async with EchoServer() as running:
        yield running


@pytest.fixture
def echo_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """The example's provider class, imported from its source tree."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    # Imported by name: the package is not installed in this environment.
    module = importlib.import_module("chatkit_echo")
    yield module.EchoProvider
    sys.modules.pop("chatkit_echo", None)


# -- the public module --------------------------------------------------------


def test_base_exports_what_it_lists() -> None:
    assert len(set(base.__all__)) == len(base.__all__)
    for name in base.__all__:
        assert getattr(base, name) is not None, name
    assert base.HTTPCall is HTTPCall
    assert base.Provider is chatkit.providers.Provider


def test_the_example_uses_only_the_public_surface() -> None:
    sources = sorted(EXAMPLE.rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        assert "chatkit._" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chatkit"):
                assert node.module == "chatkit.providers.base", (path, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("chatkit") for a in node.names), path
    project = (EXAMPLE / "pyproject.toml").read_text()
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]' in project
    assert 'echo = "chatkit_echo:EchoProvider"' in project


# -- installed, found through the entry point, in another process -----------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed by pip into a directory of its own (no network)."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The build backend (hatchling) comes with chatkit's test extra.
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "chatkit_echo" / "__init__.py").is_file()
    assert list(target.glob("chatkit_echo_provider-*.dist-info/entry_points.txt"))
    return target


_SCRIPT = textwrap.dedent(
    """
    import sys
    import chatkit
    from chatkit.providers import get_provider_class

    base_url = sys.argv[1]
    print(get_provider_class("echo").__module__)
    with chatkit.Client(provider="echo", base_url=base_url, api_key="k-123") as client:
        answer = client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "ping pong"}]
        )
        print(answer.text, "|", answer.provider, "|", answer.choices[0].finish_reason)
        stream = client.chat.completions.create(
            model="echo-2", messages=[{"role": "user", "content": "one two"}], stream=True
        )
        print("".join(chunk.text for chunk in stream), "|", stream.provider)
    """
)


async def test_installed_example_runs_through_the_entry_point(installed: Path) -> None:
    async with EchoServer(api_key="k-123") as server:
        result = await anyio.run_process(
            [sys.executable, "-c", _SCRIPT, server.base_url],
            env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
            check=False,
        )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert out.splitlines() == [
        "chatkit_echo",
        "echo-1 says: ping pong | Echo | stop",
        "echo-2 says: one two | Echo",
    ]
    assert [r["model"] for r in server.requests] == ["echo-1", "echo-2"]


# -- the same provider in-process: errors and the commit point ---------------------


async def test_stream_and_complete(server: EchoServer, echo_provider: type) -> None:
    provider = echo_provider(base_url=server.base_url)
    async with chatkit.AsyncClient(provider=provider) as client:
        stream = client.chat.completions.create(model="", messages=MESSAGES, stream=True)
        pieces = [chunk.text async for chunk in stream]
        completion = await client.chat.completions.create(model="echo-9", messages=MESSAGES)
    assert pieces == ["echo-1 says:", " hello", " there,", " echo", ""]
    assert stream.provider == "Echo"
    assert stream.finish_reason == "stop"
    assert completion.text == "echo-9 says: hello there, echo"
    assert completion.provider == "Echo"
    assert "api_key=none" in repr(provider)


async def test_status_and_early_errors_are_retried(server: EchoServer, echo_provider: type) -> None:
    server.faults = ["429", "error-first", "drop"]
    async with chatkit.AsyncClient(
        provider=echo_provider(base_url=server.base_url), max_retries=3
    ) as client:
        completion = await client.chat.completions.create(model="", messages=MESSAGES)
    assert completion.text == "echo-1 says: hello there, echo"
    causes = [type(a.error).__name__ for a in completion.attempts if a.error is not None]
    assert causes == ["RateLimitError", "OverloadedError", "APIConnectionError"]
    assert len(server.requests) == 4


async def test_error_after_content_interrupts(server: EchoServer, echo_provider: type) -> None:
    server.faults = ["error-later"]
    async with chatkit.AsyncClient(provider=echo_provider(base_url=server.base_url)) as client:
        with pytest.raises(chatkit.StreamInterrupted) as caught:
            async for _ in client.chat.completions.create(model="", messages=MESSAGES, stream=True):
                pass
    assert caught.value.partial_text == "echo-1 says: hello"
    assert isinstance(caught.value.cause, chatkit.InternalServerError)
    assert len(server.requests) == 1


async def test_a_json_error_body_is_typed(server: EchoServer, echo_provider: type) -> None:
    server.faults = ["json-error"]
    async with chatkit.AsyncClient(provider=echo_provider(base_url=server.base_url)) as client:
        with pytest.raises(chatkit.BadRequestError, match="no such model"):
            await client.chat.completions.create(model="", messages=MESSAGES)
    assert len(server.requests) == 1  # a 4xx is not retried on the same provider


async def test_bad_key_and_capabilities(echo_provider: type) -> None:
    async with EchoServer(api_key="right") as server:
        provider = echo_provider(api_key="wrong", base_url=server.base_url)
        async with chatkit.AsyncClient(provider=provider) as client:
            with pytest.raises(chatkit.AuthenticationError):
                await client.chat.completions.create(model="", messages=MESSAGES)
            assert len(server.requests) == 1
            tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
            with pytest.raises(chatkit.UnsupportedCapabilityError, match="tools"):
                await client.chat.completions.create(model="", messages=MESSAGES, tools=tools)
            with pytest.raises(chatkit.UnsupportedCapabilityError, match="one choice"):
                await client.chat.completions.create(model="", messages=MESSAGES, n=2)
        assert len(server.requests) == 1  # refused before any I/O
        assert "wrong" not in repr(provider)
    with pytest.raises(chatkit.InvalidRequestError, match="base_url"):
        echo_provider(base_url="ftp://x")


async def test_sse_events_reads_a_plain_sse_body(server: EchoServer) -> None:
    """sse_events on its own, through a bare HTTPCall: every event, comments dropped."""
    transport = Transport()
    http = transport.call()
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    async with (
        transport,
        http.open("POST", f"{server.base_url}/v1/echo", provider="t", json_body=body) as response,
    ):
        events = [(e.event, e.data) async for e in base.sse_events(response, "t")]
    assert events == [("token", "m says:"), ("token", " a"), ("token", " b"), ("done", "stop")]
    assert json.loads(json.dumps(server.requests[0])) == body
