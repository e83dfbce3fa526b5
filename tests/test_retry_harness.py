"""Harness shared by the retry tests, and tests that it really sees leaks.

Fake servers run in their own threads (``run_in_thread``), so the test's event
loop holds only the client's tasks and a leaked task is easy to spot. Every
scripted answer carries ``Connection: close``, so a finished call holds no
pooled connection and ``open_connections()`` counts exactly the leaked ones.
``ask()`` runs one call through the async or the sync client and reports
what the caller saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import transport_probe

import chatkit
from chatkit import AsyncClient, Attempt, Timeout
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
CLOSE = {"Connection": "close"}
FAST = Timeout(connect=2.0, read=2.0, total=10.0)

Client: type[chatkit.Client] | None
try:
    from chatkit import Client as _SyncClient
    from chatkit import _portal

    Client = _SyncClient
except ImportError:  # pragma: no cover - the sync facade is built in parallel
    Client = None

SYNC_MISSING = "chatkit.Client (the sync facade) is not available yet"
CLIENT_KINDS = [
    "async",
    pytest.param("sync", marks=pytest.mark.skipif(Client is None, reason=SYNC_MISSING)),
]


def answer(**fields: Any) -> Behavior:
    """A Behavior whose response closes its connection when done."""
    headers = {**CLOSE, **fields.pop("headers", {})}
    return Behavior(headers=headers, **fields)


def failing(times: int, status: int, **fields: Any) -> list[Behavior]:
    return [answer(status=status, **fields) for _ in range(times)]


def named(name: str, url: str, **kwargs: Any) -> OpenAI:
    """An OpenAI-compatible provider at ``url`` that calls itself ``name``."""
    cls = type(name, (OpenAI,), {"name": name})
    provider: OpenAI = cls(base_url=url, **kwargs)
    return provider


def refused_url() -> str:
    """A base URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def serve(*defaults: Behavior) -> Iterator[list[FakeOpenAIServer]]:
    """One fake server per default behavior, each on its own thread."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FakeOpenAIServer(d).run_in_thread()) for d in defaults]


@dataclasses.dataclass
class Outcome:
    """What the caller saw, and what was left behind."""

    text: str | None = None
    provider: str | None = None
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    error: BaseException | None = None
    elapsed: float = 0.0
    open_connections: int = 0
    leftover_tasks: int = 0
    chunk_providers: set[str | None] = dataclasses.field(default_factory=set)
    chunk_ids: set[str] = dataclasses.field(default_factory=set)

    @property
    def providers_tried(self) -> list[str]:
        return [a.provider for a in self.attempts]

    def summary(self) -> tuple[Any, ...]:
        """Everything but timings: equal for equal behaviour."""
        kinds = tuple(
            (a.provider, type(a.error).__name__ if a.error else None) for a in self.attempts
        )
        error = type(self.error).__name__ if self.error else None
        return self.text or "", self.provider, kinds, error


def _record_error(outcome: Outcome, exc: BaseException) -> None:
    outcome.error = exc
    found = getattr(exc, "attempts", None)
    if found is not None:
        outcome.attempts = list(found)


async def _ask_async(
    provider: Any, stream: bool, limits: Timeout, outcome: Outcome, **create: Any
) -> None:
    client = AsyncClient(provider, timeout=limits)
    try:
        if stream:
            chat = client.chat.completions.create(messages=MESSAGES, stream=True, **create)
            try:
                async for chunk in chat:
                    outcome.chunk_providers.add(chunk.provider)
                    outcome.chunk_ids.add(chunk.id)
            except chatkit.ChatkitError as exc:
                _record_error(outcome, exc)
            finally:
                await chat.aclose()
            outcome.text, outcome.provider = chat.text, chat.provider
            outcome.attempts = outcome.attempts or list(chat.attempts)
        else:
            try:
                completion = await client.chat.completions.create(messages=MESSAGES, **create)
            except chatkit.ChatkitError as exc:
                _record_error(outcome, exc)
            else:
                outcome.text, outcome.provider = completion.text, completion.provider
                outcome.attempts = list(completion.attempts)
        outcome.open_connections = transport_probe.open_connections(client._transport)
    finally:
        await client.aclose()


def _ask_sync(
    provider: Any, stream: bool, limits: Timeout, outcome: Outcome, **create: Any
) -> None:
    assert Client is not None
    loop = _portal.current()
    before = loop.run(_snapshot())
    with Client(provider, timeout=limits) as client:
        if stream:
            # The sync create() waits for the first chunk: a failed call raises here.
            try:
                chat = client.chat.completions.create(messages=MESSAGES, stream=True, **create)
            except chatkit.ChatkitError as exc:
                _record_error(outcome, exc)
                chat = None
            try:
                for chunk in chat or ():
                    outcome.chunk_providers.add(chunk.provider)
                    outcome.chunk_ids.add(chunk.id)
            except chatkit.ChatkitError as exc:
                _record_error(outcome, exc)
            finally:
                if chat is not None:
                    chat.close()
            if chat is not None:
                outcome.text, outcome.provider = chat.text, chat.provider
                outcome.attempts = outcome.attempts or list(chat.attempts)
        else:
            try:
                completion = client.chat.completions.create(messages=MESSAGES, **create)
            except chatkit.ChatkitError as exc:
                _record_error(outcome, exc)
            else:
                outcome.text, outcome.provider = completion.text, completion.provider
                outcome.attempts = list(completion.attempts)
        outcome.open_connections = loop.run(_open_connections(client._async))
    outcome.leftover_tasks = loop.run(_new_since(before))


async def _open_connections(client: AsyncClient) -> int:
    return transport_probe.open_connections(client._transport)


async def _snapshot() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks()


async def _new_since(before: set[asyncio.Task[Any]]) -> int:
    return await leftover_tasks(before | {asyncio.current_task()})  # type: ignore[arg-type]


async def ask(
    kind: str,
    provider: Any,
    *,
    stream: bool,
    limits: Timeout = FAST,
    **create: Any,
) -> Outcome:
    """One chat call through the ``kind`` ("async" / "sync") client, with the
    client's ``limits``; chatkit errors land in ``Outcome.error``."""
    outcome = Outcome()
    before = asyncio.all_tasks()
    started = time.monotonic()
    if kind == "async":
        await _ask_async(provider, stream, limits, outcome, **create)
        outcome.elapsed = time.monotonic() - started
        outcome.leftover_tasks = await leftover_tasks(before)
    else:
        # The sync client runs on chatkit's own loop thread; leaks are counted there.
        run = functools.partial(_ask_sync, provider, stream, limits, outcome, **create)
        await anyio.to_thread.run_sync(run)
        outcome.elapsed = time.monotonic() - started
    return outcome


async def leftover_tasks(before: set[asyncio.Task[Any]]) -> int:
    """Tasks started since ``before`` that outlive one more turn of the loop.

    The one turn lets asyncio's async-generator finalizers finish: the OpenAI
    provider leaves ``iter_bytes()`` to be finalized by the loop after [DONE].
    A sleeping backoff or an orphaned attempt would still be there.
    """
    await asyncio.sleep(0)
    return len(asyncio.all_tasks() - before)


async def wait_until(predicate: Any, seconds: float = 5.0) -> None:
    """Poll ``predicate`` until true, for at most ``seconds``.

    For state owned by a server thread, which offers no event to wait on.
    """
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - no event crosses from the server thread
            await anyio.sleep(0.005)


# -- the harness can fail ------------------------------------------------------


@pytest.mark.anyio
async def test_harness_sees_a_connection_left_open() -> None:
    with serve(answer(stall_after=1, stall_seconds=30)) as (server,):
        client = AsyncClient(named("P", server.base_url), timeout=FAST)
        chat = client.chat.completions.create(messages=MESSAGES, stream=True)
        await chat.__anext__()
        await chat.__anext__()
        try:
            assert transport_probe.open_connections(client._transport) == 1
        finally:
            await chat.aclose()
            assert transport_probe.open_connections(client._transport) == 0
            await client.aclose()


@pytest.mark.anyio
async def test_harness_sees_a_leftover_task() -> None:
    before = asyncio.all_tasks()
    stray = asyncio.get_running_loop().create_task(asyncio.sleep(30))
    try:
        assert len(asyncio.all_tasks() - before) == 1
    finally:
        stray.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stray


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_harness_reports_a_clean_call(kind: str) -> None:
    with serve(answer(text="Hi there")) as (server,):
        outcome = await ask(kind, named("P", server.base_url), stream=True)
    assert outcome.summary() == ("Hi there", "P", (("P", None),), None)
    assert outcome.open_connections == 0
    assert outcome.leftover_tasks == 0
