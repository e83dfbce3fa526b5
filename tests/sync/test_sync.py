"""The sync ``Client``: its surface, errors, and where it can be called from.

Every behaviour is checked against a real fake server on 127.0.0.1; where
the sync client must behave like ``AsyncClient`` (retries, timeouts, errors)
both run the same scenario and their outcomes are compared.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pydantic
import pytest

import chatkit
from chatkit import (
    APITimeoutError,
    AuthenticationError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatStream,
    Client,
    InvalidRequestError,
    StreamInterrupted,
    Timeout,
    _client,
    _portal,
    _sync,
)
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"
PACKAGE = Path(chatkit.__file__).parent


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key="sk-test").run_in_thread() as running:
        yield running


def make_client(server: FakeOpenAIServer, **kwargs: Any) -> Client:
    kwargs.setdefault("max_retries", 0)
    return Client(provider=OpenAI(base_url=server.base_url, api_key="sk-test"), **kwargs)


def make_async_client(server: FakeOpenAIServer, **kwargs: Any) -> chatkit.AsyncClient:
    kwargs.setdefault("max_retries", 0)
    provider = OpenAI(base_url=server.base_url, api_key="sk-test")
    return chatkit.AsyncClient(provider=provider, **kwargs)


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[Client]:
    with make_client(server) as made:
        yield made


def frames(exc: BaseException) -> list[str]:
    """The files of every frame in the exception's traceback."""
    return [Path(frame.filename).as_posix() for frame in traceback.extract_tb(exc.__traceback__)]


def raised_in(exc: BaseException, module: str) -> bool:
    return any(name.endswith(f"chatkit/{module}") for name in frames(exc))


# -- surface -------------------------------------------------------------------


def test_non_streamed_call_returns_a_chat_completion(
    client: Client, server: FakeOpenAIServer
) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == ANSWER
    assert reply.provider == "OpenAI"
    assert [a.ok for a in reply.attempts] == [True]
    assert server.requests[-1].json["stream"] is False


def test_seed_example_loop(client: Client, server: FakeOpenAIServer) -> None:
    pieces = []
    for message in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], stream=True
    ):
        pieces.append(message.choices[0].delta.content or "")
    assert "".join(pieces) == ANSWER
    assert server.requests[-1].json["stream"] is True


def test_stream_keeps_text_usage_provider_and_final_completion(client: Client) -> None:
    stream = client.chat.completions.create(
        messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, ChatStream)
    assert stream.provider == "OpenAI"  # known once create() returned
    assert stream.text == ""  # nothing handed over yet
    with stream:
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.text for c in chunks) == ANSWER
    assert stream.text == ANSWER
    assert stream.finish_reason == "stop"
    assert stream.provider == "OpenAI"
    assert stream.usage is not None and stream.usage == chunks[-1].usage
    assert stream.done
    assert [a.ok for a in stream.attempts] == [True]
    final = stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER
    assert final.usage == stream.usage
    assert final.attempts is stream.attempts
    assert "ChatStream" in repr(stream) and "done" in repr(stream)


def test_next_reads_piece_by_piece_and_until_done_reads_the_rest(client: Client) -> None:
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    assert "open" in repr(stream)
    first = next(stream)
    second = next(stream)
    assert first.choices[0].delta.role == "assistant"
    assert stream.text == second.text == "Hello!"
    assert not stream.done
    final = stream.until_done()
    assert final.text == ANSWER == stream.text
    with pytest.raises(StopIteration):
        next(stream)
    assert list(stream) == []


def test_an_empty_answer_is_a_finished_stream(client: Client, server: FakeOpenAIServer) -> None:
    server.script(Behavior(chunks=[]))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    assert [c.text for c in stream] == ["", ""]  # the role opener and the finish chunk
    assert stream.finish_reason == "stop" and stream.text == ""


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def test_parse_returns_the_validated_model(client: Client, server: FakeOpenAIServer) -> None:
    server.script(Behavior(text='{"city": "Paris", "celsius": 21}'))
    completion = client.chat.completions.parse(messages=HELLO, response_format=Weather)
    assert completion.parsed == Weather(city="Paris", celsius=21)
    assert completion.provider == "OpenAI" and len(completion.attempts) == 1
    assert server.requests[-1].json["response_format"]["type"] == "json_schema"


def test_models_list(client: Client) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["fake-model"]
    assert models[0].provider == "OpenAI"


def test_same_arguments_as_async_client() -> None:
    def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
        signature = inspect.signature(function)
        return [(p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()]

    assert parameters(Client.__init__) == parameters(chatkit.AsyncClient.__init__)
    assert parameters(_sync._Completions.create) == parameters(_client._Completions.create)
    assert parameters(_sync._Completions.parse) == parameters(_client._Completions.parse)
    assert parameters(_sync._Models.list) == parameters(_client._Models.list)


def test_client_properties_and_repr_hide_the_key(server: FakeOpenAIServer) -> None:
    with make_client(server, max_retries=3, timeout=12) as client:
        assert isinstance(client.provider, OpenAI)
        assert client.max_retries == 3
        assert client.timeout.total == 12
        assert repr(client).startswith("Client(provider='OpenAI'")
        assert "sk-test" not in repr(client)
        assert not client.is_closed
    assert client.is_closed


def test_invalid_arguments_fail_in_the_callers_thread_before_any_io(
    client: Client, server: FakeOpenAIServer
) -> None:
    with pytest.raises(InvalidRequestError, match="role"):
        client.chat.completions.create(messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidRequestError):
        client.chat.completions.create(messages="not a list", stream=True)
    assert server.requests == []


def test_a_closed_client_refuses_new_calls(server: FakeOpenAIServer) -> None:
    client = make_client(server)
    client.close()
    client.close()  # idempotent
    with pytest.raises(chatkit.ClientClosedError, match="closed"):
        client.chat.completions.create(messages=HELLO)


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_error_status_keeps_its_type_and_the_original_frames(
    client: Client, server: FakeOpenAIServer, stream: bool
) -> None:
    server.fail(1, 401)
    with pytest.raises(AuthenticationError) as caught:
        client.chat.completions.create(messages=HELLO, stream=stream)
    assert caught.value.status_code == 401
    # Raised on the loop thread, in the transport; re-raised here, in this test.
    assert raised_in(caught.value, "_transport/_call.py")
    assert any(name.endswith("tests/sync/test_sync.py") for name in frames(caught.value))


def test_mid_stream_failure_arrives_after_the_chunks_before_it(
    client: Client, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(drop_after=3))
    received = []
    with pytest.raises(StreamInterrupted) as caught:
        for chunk in client.chat.completions.create(messages=HELLO, stream=True):
            received.append(chunk.text)
    assert "".join(received) == "Hello! How can"
    assert caught.value.partial_text == "Hello! How can"
    assert raised_in(caught.value, "_retry.py")


# -- the same engine as AsyncClient -------------------------------------------


def run_async(server: FakeOpenAIServer, stream: bool, **kwargs: Any) -> Any:
    """Run one call through AsyncClient: its completion, or its error."""

    async def call() -> Any:
        async with make_async_client(server, **kwargs) as client:
            try:
                if stream:
                    result = client.chat.completions.create(messages=HELLO, stream=True)
                    return await result.until_done()
                return await client.chat.completions.create(messages=HELLO)
            except Exception as exc:
                return exc

    return asyncio.run(call())


def run_sync(server: FakeOpenAIServer, stream: bool, **kwargs: Any) -> Any:
    with make_client(server, **kwargs) as client:
        try:
            if stream:
                return client.chat.completions.create(messages=HELLO, stream=True).until_done()
            return client.chat.completions.create(messages=HELLO)
        except Exception as exc:
            return exc


def attempts_of(completion: ChatCompletion) -> list[tuple[str, int | None, bool]]:
    return [(a.provider, a.status_code, a.ok) for a in completion.attempts]


@pytest.mark.parametrize("stream", [False, True])
def test_retries_behave_as_in_async_client(server: FakeOpenAIServer, stream: bool) -> None:
    outcomes = []
    for run in (run_async, run_sync):
        server.fail(1, 503, retry_after=0)
        outcomes.append(run(server, stream, max_retries=2))
    async_result, sync_result = outcomes
    assert isinstance(sync_result, ChatCompletion), sync_result
    assert sync_result.text == async_result.text == ANSWER
    assert attempts_of(sync_result) == attempts_of(async_result)
    assert attempts_of(sync_result) == [("OpenAI", 503, False), ("OpenAI", None, True)]


@pytest.mark.parametrize(
    ("stall_after", "expected"),
    [(0, APITimeoutError), (2, StreamInterrupted)],
    ids=["before-content", "mid-stream"],
)
def test_read_timeout_behaves_as_in_async_client(
    server: FakeOpenAIServer, stall_after: int, expected: type[Exception]
) -> None:
    errors = []
    for run in (run_async, run_sync):
        server.script(Behavior(stall_after=stall_after))
        errors.append(run(server, True, timeout=Timeout(read=0.3)))
    async_error, sync_error = errors
    assert type(sync_error) is type(async_error) is expected
    if isinstance(sync_error, StreamInterrupted):
        assert isinstance(async_error, StreamInterrupted)
        assert sync_error.partial_text == async_error.partial_text == "Hello! How"
        assert isinstance(sync_error.cause, APITimeoutError)
        assert isinstance(async_error.cause, APITimeoutError)


def test_per_call_timeout_reaches_the_engine(client: Client, server: FakeOpenAIServer) -> None:
    server.script(Behavior(stall_after=1))
    stream = client.chat.completions.create(messages=HELLO, stream=True, timeout=Timeout(read=0.3))
    with pytest.raises(StreamInterrupted) as caught:
        stream.until_done()
    assert isinstance(caught.value.cause, APITimeoutError)
    assert stream.text == "Hello!"


# -- where it can be called from -----------------------------------------------


def test_inside_asyncio_run_the_callers_loop_is_neither_patched_nor_reentered(
    client: Client,
) -> None:
    async def main() -> tuple[str, str, bool, bool]:
        loop = asyncio.get_running_loop()
        ran = asyncio.Event()
        loop.call_soon(ran.set)
        reply = client.chat.completions.create(messages=HELLO)
        text = "".join(c.text for c in client.chat.completions.create(messages=HELLO, stream=True))
        # Nothing ran the caller's loop while the sync calls waited.
        reentered = ran.is_set()
        await asyncio.sleep(0)
        return reply.text, text, reentered, ran.is_set()

    reply, streamed, reentered, ran_later = asyncio.run(main())
    assert reply == streamed == ANSWER
    assert not reentered and ran_later


def test_inside_anyio_tasks_as_jupyter_runs_cells(client: Client) -> None:
    results: list[str] = []

    async def cell() -> None:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        results.append("".join(chunk.text for chunk in stream))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(cell)
            group.start_soon(cell)

    anyio.run(main)
    assert results == [ANSWER, ANSWER]


def test_many_threads_at_once(server: FakeOpenAIServer) -> None:
    shared = make_client(server)
    start = threading.Barrier(8)
    results: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            own = make_client(server) if number % 2 else None
            client = own or shared
            start.wait(timeout=10)
            streamed = "".join(
                c.text for c in client.chat.completions.create(messages=HELLO, stream=True)
            )
            reply = client.chat.completions.create(messages=HELLO)
            results[number] = (streamed, reply.text)
            if own is not None:
                own.close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    shared.close()
    assert errors == []
    assert results == {n: (ANSWER, ANSWER) for n in range(8)}
    assert len({id(_portal.current())}) == 1


def test_every_client_shares_one_loop_thread(server: FakeOpenAIServer) -> None:
    with make_client(server) as first, make_client(server) as second:
        first.chat.completions.create(messages=HELLO)
        second.chat.completions.create(messages=HELLO)
        loop_threads = [t for t in threading.enumerate() if t.name == "chatkit-loop"]
        assert loop_threads == [_portal.current().thread]
        # The aiohttp sessions live on that loop.
        for client in (first, second):
            slots = list(client._async._transport._per_loop.values())
            assert [slot.loop for slot in slots] == [_portal.current().loop]


# -- a provider that holds a deadline across its yields ------------------------


class DeadlineProvider:
    """Streams inside ``anyio.fail_after`` and a cancel scope, held across every yield."""

    name = "deadline"

    def __init__(self, pieces: int, stall: float = 0.0, limit: float = 30.0) -> None:
        self.pieces = pieces
        self.stall = stall
        self.limit = limit
        self.cleaned_up = threading.Event()

    async def stream(self, request: Any, http: Any) -> AsyncIterator[ChatCompletionChunk]:
        try:
            with anyio.fail_after(self.limit), anyio.CancelScope():
                yield chunk(role="assistant")
                for number in range(self.pieces):
                    await anyio.lowlevel.checkpoint()
                    yield chunk(content=f"p{number} ")
                if self.stall:
                    await anyio.sleep(self.stall)
                yield chunk(finish_reason="stop")
        finally:
            self.cleaned_up.set()


def chunk(**delta: Any) -> ChatCompletionChunk:
    finish = delta.pop("finish_reason", None)
    return ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "provider": "deadline",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def test_provider_holding_a_deadline_across_yields_streams_fully() -> None:
    provider = DeadlineProvider(pieces=300)
    with Client(provider=provider, max_retries=0) as client:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        text = "".join(c.text for c in stream)
    assert text == "".join(f"p{n} " for n in range(300))
    assert stream.provider == "deadline"
    assert provider.cleaned_up.is_set()


def test_provider_holding_a_deadline_is_closed_early_in_its_own_task() -> None:
    provider = DeadlineProvider(pieces=10_000)
    with Client(provider=provider, max_retries=0) as client:
        for chunk_ in client.chat.completions.create(messages=HELLO, stream=True):
            if chunk_.text == "p3 ":
                break
        # break closed the stream: the generator's finally ran on the loop,
        # inside the task that entered its scopes (or it would have raised).
        assert provider.cleaned_up.wait(5)
        assert _portal.current().task_count() == 0


def test_provider_deadline_firing_mid_stream_behaves_as_in_async_client() -> None:
    async def via_async() -> BaseException:
        async with chatkit.AsyncClient(provider=DeadlineProvider(2, stall=5, limit=0.3)) as c:
            with pytest.raises(StreamInterrupted) as caught:
                await c.chat.completions.create(messages=HELLO, stream=True).until_done()
        return caught.value

    async_error = asyncio.run(via_async())
    with Client(provider=DeadlineProvider(2, stall=5, limit=0.3)) as client:
        stream = client.chat.completions.create(messages=HELLO, stream=True)
        with pytest.raises(StreamInterrupted) as caught:
            stream.until_done()
    assert isinstance(caught.value, StreamInterrupted)
    assert isinstance(async_error, StreamInterrupted)
    assert type(caught.value.cause) is type(async_error.cause) is TimeoutError
    assert caught.value.partial_text == async_error.partial_text == "p0 p1 "


# -- the handoff ------------------------------------------------------------


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch a caller takes from a pump."""
    sizes: list[int] = []
    take = _portal.StreamPump.take

    def recording_take(self: _portal.StreamPump) -> list[ChatCompletionChunk]:
        items = take(self)
        sizes.append(len(items))
        return items

    monkeypatch.setattr(_portal.StreamPump, "take", recording_take)
    return sizes


def test_the_caller_takes_many_chunks_per_wake_up(
    client: Client, server: FakeOpenAIServer, batches: list[int]
) -> None:
    server.script(Behavior(chunks=["x"], repeat=2000))
    count = sum(1 for _ in client.chat.completions.create(messages=HELLO, stream=True))
    assert count == 2002
    assert sum(batches) == count
    assert len(batches) <= count // 4  # per-chunk handoff would take ~2000 wake-ups


def test_the_handoff_is_bounded(
    client: Client,
    server: FakeOpenAIServer,
    batches: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sync, "BATCH_LIMIT", 4)
    server.script(Behavior(chunks=["x"], repeat=500))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    pump = stream._pump
    # The caller stops reading; the pump must park once it holds 4 chunks,
    # although the server has sent hundreds more. (A bounded wait for that state.)
    for _ in range(1000):
        if pump._room is not None:
            break
        time.sleep(0.005)
    assert pump._room is not None
    assert len(pump._items) == 4
    assert sum(1 for _ in stream) == 502
    assert max(batches) <= 4
    assert batches[1] == 4


def test_closing_while_the_pump_waits_for_room_closes_the_response(
    client: Client, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sync, "BATCH_LIMIT", 4)
    server.script(Behavior(chunks=["x"], repeat=100, stall_after=50))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    pump = stream._pump
    for _ in range(1000):  # a bounded wait for the pump to park
        if pump._room is not None:
            break
        time.sleep(0.005)
    assert pump._room is not None
    stream.close()
    assert server.wait_for_disconnects_sync(1, timeout=5)
    assert _portal.current().task_count() == 0
