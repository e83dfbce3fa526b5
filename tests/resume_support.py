"""Helpers shared by the resume tests (``test_resume*.py``): the answer, the
fake-server wrappers, and ``ask``, one streamed call through the async or
the sync client."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread

import chatkit
from chatkit import AsyncClient, Client, Timeout
from chatkit.providers import Anthropic, get_provider_class
from chatkit.providers.base import Capabilities
from chatkit.testing import FakeOpenAIServer

TEXT = (
    "The quick brown fox jumps over the lazy dog, then runs far away into the"
    " quiet woods where nobody will ever find it again."
)
MESSAGES = [{"role": "user", "content": "Tell me about the fox."}]
KINDS = ["async", "sync"]
FAST = Timeout(connect=2.0, read=5.0, total=20.0)
VLLM = get_provider_class("vllm")


def named(base: type[Any], name: str) -> type[Any]:
    cls: type[Any] = type(name, (base,), {"name": name})
    return cls


@dataclasses.dataclass
class Seen:
    """What the caller saw."""

    text: str = ""
    chunks: list[chatkit.ChatCompletionChunk] = dataclasses.field(default_factory=list)
    error: BaseException | None = None
    resumes: list[chatkit.ResumeRecord] = dataclasses.field(default_factory=list)
    attempts: list[chatkit.Attempt] = dataclasses.field(default_factory=list)
    final: chatkit.ChatCompletion | None = None

    @property
    def delivered(self) -> str:
        return "".join(c.choices[0].delta.content or "" for c in self.chunks if c.choices)


def _ask_sync(provider: Any, options: dict[str, Any], create: dict[str, Any]) -> Seen:
    seen = Seen()
    with Client(provider, timeout=FAST, **options) as client:
        stream = client.chat.completions.create(stream=True, **create)
        try:
            for chunk in stream:
                seen.chunks.append(chunk)
        except chatkit.ChatkitError as exc:
            seen.error = exc
        seen.text, seen.resumes, seen.attempts = stream.text, stream.resumes, stream.attempts
        seen.final = stream.get_final_completion()
    return seen


async def ask(
    kind: str,
    provider: Any,
    *,
    options: dict[str, Any] | None = None,
    messages_override: list[dict[str, Any]] | None = None,
    **create: Any,
) -> Seen:
    """One streamed call through the async or the sync client, resume on by default."""
    options = {"resume": True, "max_retries": 0, **(options or {})}
    create["messages"] = messages_override or MESSAGES
    if kind == "sync":
        return await anyio.to_thread.run_sync(_ask_sync, provider, options, create)
    seen = Seen()
    async with AsyncClient(provider, timeout=FAST, **options) as client:
        stream = client.chat.completions.create(stream=True, **create)
        try:
            async for chunk in stream:
                seen.chunks.append(chunk)
        except chatkit.ChatkitError as exc:
            seen.error = exc
        seen.text, seen.resumes, seen.attempts = stream.text, stream.resumes, stream.attempts
        seen.final = stream.get_final_completion()
    return seen


@contextlib.contextmanager
def threaded(server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    with server.run_in_thread() as running:
        yield running


def anthropic_at(server: FakeOpenAIServer) -> Anthropic:
    return Anthropic(api_key="sk-ant-test", base_url=server.base_url)


def vllm_at(server: FakeOpenAIServer, cls: type[Any] = VLLM) -> Any:
    return cls(base_url=server.base_url, default_model="fake-model")


class Scripted:
    """A third-party provider answering each request with the next script:
    its words, then a finishing chunk unless ``finish`` is False, or a reset."""

    name = "Scripted"
    capabilities = Capabilities(continue_message=True)

    def __init__(self, *scripts: tuple[list[str], str]) -> None:
        self.scripts = list(scripts)
        self.requests: list[chatkit.ChatRequest] = []

    async def stream(self, request: chatkit.ChatRequest, http: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        words, end = self.scripts.pop(0)
        chunks = [{"content": word} for word in words]
        for delta in chunks:
            yield chunk(delta, None)
        if end == "reset":
            raise chatkit.APIConnectionError("Scripted: connection reset", provider=self.name)
        if end == "finish":
            yield chunk({}, "stop")


def chunk(
    delta: dict[str, Any],
    finish: str | None,
    *,
    id: str = "scripted",
    model: str = "scripted",
    usage: dict[str, Any] | None = None,
) -> chatkit.ChatCompletionChunk:
    wire: dict[str, Any] = {
        "id": id,
        "created": 1,
        "model": model,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        wire["usage"] = usage
    return chatkit.ChatCompletionChunk.model_validate(wire)
