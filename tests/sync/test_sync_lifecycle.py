"""Closing the sync facade: every way out closes the upstream response, and
nothing (thread, task, connection) is left behind. Also ``fork`` and exit.

Streams here stall after two content chunks, so only a real disconnect,
seen by the server, can satisfy ``wait_for_disconnects_sync``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import transport_probe

from chatkit import ChatStream, Client, Timeout, _portal, _sync
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"
STALLED = Behavior(stall_after=2)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer().run_in_thread() as running:
        yield running


def make_client(server: FakeOpenAIServer, **kwargs: Any) -> Client:
    kwargs.setdefault("max_retries", 0)
    return Client(provider=OpenAI(base_url=server.base_url, api_key="sk-test"), **kwargs)


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[Client]:
    with make_client(server) as made:
        yield made


async def _call(function: Callable[[], Any]) -> Any:
    return function()


def on_loop(function: Callable[[], Any]) -> Any:
    """Run a plain function on the shared loop thread (its state lives there)."""
    return _portal.current().run(_call(function))


def open_connections(client: Client) -> int:
    return int(on_loop(lambda: transport_probe.open_connections(client._async._transport)))


def drain_loop() -> None:
    """Wait until every task chatkit started on the loop has ended."""
    runner = _portal.current()

    async def wait() -> None:
        await asyncio.gather(*list(runner.tasks), return_exceptions=True)

    runner.run(wait())


def stalled_stream(client: Client, server: FakeOpenAIServer) -> ChatStream:
    server.script(Behavior(**vars(STALLED)))
    return client.chat.completions.create(messages=HELLO, stream=True)


def read_to_hello(stream: ChatStream) -> None:
    assert [next(stream).text, next(stream).text] == ["", "Hello!"]


# -- every way out closes the response ----------------------------------------


def leave_by_break_without_a_name(client: Client, server: FakeOpenAIServer) -> None:
    server.script(Behavior(**vars(STALLED)))
    for chunk in client.chat.completions.create(messages=HELLO, stream=True):
        if chunk.text == "Hello!":
            break


def leave_by_break_holding_the_stream(client: Client, server: FakeOpenAIServer) -> ChatStream:
    stream = stalled_stream(client, server)
    for chunk in stream:
        if chunk.text == "Hello!":
            break
    return stream  # still referenced: the for loop itself closed it


def leave_by_close(client: Client, server: FakeOpenAIServer) -> ChatStream:
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    stream.close()
    stream.close()  # idempotent
    return stream


def leave_a_with_block(client: Client, server: FakeOpenAIServer) -> ChatStream:
    with stalled_stream(client, server) as stream:
        read_to_hello(stream)
    return stream


def leave_by_an_exception(client: Client, server: FakeOpenAIServer) -> ChatStream:
    stream = stalled_stream(client, server)
    with pytest.raises(ValueError, match="caller"):
        for chunk in stream:
            if chunk.text:
                raise ValueError("the caller's own bug")
    return stream


def leave_by_keyboard_interrupt(client: Client, server: FakeOpenAIServer) -> ChatStream:
    stream = stalled_stream(client, server)
    with pytest.raises(KeyboardInterrupt):
        for chunk in stream:
            if chunk.text:
                raise KeyboardInterrupt
    return stream


def leave_by_garbage_collection(client: Client, server: FakeOpenAIServer) -> None:
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    del stream
    gc.collect()


EXITS = [
    leave_by_break_without_a_name,
    leave_by_break_holding_the_stream,
    leave_by_close,
    leave_a_with_block,
    leave_by_an_exception,
    leave_by_keyboard_interrupt,
    leave_by_garbage_collection,
]


@pytest.mark.parametrize("leave", EXITS, ids=[f.__name__.removeprefix("leave_") for f in EXITS])
def test_every_way_out_closes_the_upstream_response(
    client: Client, server: FakeOpenAIServer, leave: Callable[..., Any]
) -> None:
    kept = leave(client, server)
    assert server.wait_for_disconnects_sync(1, timeout=5)
    drain_loop()
    assert _portal.current().task_count() == 0
    assert open_connections(client) == 0  # dropped, not returned to the pool
    if kept is not None:
        assert kept.done
        assert kept.text == "Hello!"  # only what the caller was handed
        assert list(kept) == []


def test_close_leaves_no_thread_task_or_connection(server: FakeOpenAIServer) -> None:
    client = make_client(server)
    client.chat.completions.create(messages=HELLO)  # starts the loop thread if needed
    runner = _portal.current()
    before = set(threading.enumerate())
    assert "".join(c.text for c in client.chat.completions.create(messages=HELLO, stream=True))
    assert open_connections(client) <= 1  # at most one, idle in the pool
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    assert runner.task_count() == 1  # the stream's pump
    stream.close()
    assert runner.task_count() == 0
    assert open_connections(client) == 0  # dropped, not pooled
    assert client.chat.completions.create(messages=HELLO).text == ANSWER
    assert open_connections(client) == 1
    client.close()
    assert client.is_closed
    assert open_connections(client) == 0
    assert runner.task_count() == 0
    assert set(threading.enumerate()) <= before
    assert runner.thread in before


def test_client_close_closes_its_open_streams(server: FakeOpenAIServer) -> None:
    client = make_client(server)
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    client.close()
    assert server.wait_for_disconnects_sync(1, timeout=5)
    assert stream.done and list(stream) == []
    assert _portal.current().task_count() == 0


def test_a_dropped_client_closes_its_connections(server: FakeOpenAIServer) -> None:
    client = make_client(server)
    client.chat.completions.create(messages=HELLO)
    inner = client._async
    assert on_loop(lambda: transport_probe.open_connections(inner._transport)) == 1
    del client
    gc.collect()
    drain_loop()
    assert inner.is_closed
    assert on_loop(lambda: transport_probe.open_connections(inner._transport)) == 0


def test_a_stream_keeps_its_client_alive(server: FakeOpenAIServer) -> None:
    stream = make_client(server).chat.completions.create(messages=HELLO, stream=True)
    gc.collect()
    assert "".join(c.text for c in stream) == ANSWER
    client = stream._owner
    del stream
    client.close()


# -- Ctrl-C while the caller waits --------------------------------------------


def interrupt_main_once(server: FakeOpenAIServer) -> threading.Thread:
    """SIGINT to the main thread once the server is answering (so the caller waits)."""
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def send() -> None:
        for _ in range(1000):  # a bounded wait for the request to arrive
            if server.requests:
                break
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize("stream", [True, False])
def test_ctrl_c_while_waiting_cancels_the_call(
    client: Client, server: FakeOpenAIServer, stream: bool
) -> None:
    server.script(Behavior(stall_after=0))  # nothing to hand over: the caller blocks
    sender = interrupt_main_once(server)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.chat.completions.create(messages=HELLO, stream=stream)
    finally:
        sender.join()
    assert server.wait_for_disconnects_sync(1, timeout=5)
    drain_loop()
    assert _portal.current().task_count() == 0
    assert open_connections(client) == 0


# -- the loop thread itself ----------------------------------------------------


def test_finalizers_on_the_loop_thread_schedule_and_never_wait(
    client: Client, server: FakeOpenAIServer
) -> None:
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    # As if garbage collection ran the finalizer, or someone closed it, there.
    on_loop(stream.__del__)
    on_loop(stream.close)
    assert server.wait_for_disconnects_sync(1, timeout=5)
    drain_loop()
    assert _portal.current().task_count() == 0


def test_blocking_on_the_loop_thread_is_refused(client: Client) -> None:
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    with pytest.raises(RuntimeError, match="loop thread"):
        on_loop(lambda: list(stream))
    with pytest.raises(RuntimeError, match="loop thread"):
        on_loop(lambda: client.chat.completions.create(messages=HELLO))
    assert stream.done


# -- interpreter exit ----------------------------------------------------------


def test_exit_hook_closes_clients_and_stops_the_loop(server: FakeOpenAIServer) -> None:
    client = make_client(server)
    client.chat.completions.create(messages=HELLO)
    runner = _portal.current()
    _sync._close_clients_at_exit()
    assert client.is_closed
    assert not runner.running and not runner.thread.is_alive()
    assert _portal.existing() is None
    _sync._close_clients_at_exit()  # nothing running: nothing to do
    # A later call starts a fresh loop thread.
    with make_client(server) as again:
        assert again.chat.completions.create(messages=HELLO).text == ANSWER
    assert _portal.current() is not runner


def test_stopping_the_loop_ends_a_waiting_stream_with_an_error(
    client: Client, server: FakeOpenAIServer
) -> None:
    stream = stalled_stream(client, server)
    read_to_hello(stream)
    _portal.shutdown()
    with pytest.raises(RuntimeError, match="loop stopped"):
        list(stream)
    assert stream.text == ANSWER[: len("Hello! How")]


def test_a_script_that_never_closes_its_client_exits_quietly(server: FakeOpenAIServer) -> None:
    script = (
        "import chatkit\n"
        "from chatkit.providers import OpenAI\n"
        f"client = chatkit.Client(provider=OpenAI, base_url={server.base_url!r}, api_key='k')\n"
        "stream = client.chat.completions.create(messages=[{'role': 'user', 'content': 'x'}],"
        " stream=True)\n"
        "print(next(iter(stream)).choices[0].delta.role)\n"
        "print(client.chat.completions.create(messages=[{'role': 'user', 'content': 'x'}]).text)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["assistant", ANSWER]
    assert done.stderr == ""


# -- fork ----------------------------------------------------------------------


def fork_and_run(child: Callable[[], object]) -> Any:
    """Run ``child()`` in a forked child; return what it returned (as JSON) or raise."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # multi-threaded fork on 3.12+
        pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            payload = {"ok": child()}
            status = 0
        except BaseException:
            payload = {"error": traceback.format_exc()}
        finally:
            with os.fdopen(write_end, "w") as out:
                json.dump(payload, out)
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        payload = json.load(answer)
    _, status = os.waitpid(pid, 0)
    assert "error" not in payload, payload["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return payload["ok"]


def test_fork_child_gets_its_own_loop_and_leaves_the_parents_alone(
    server: FakeOpenAIServer,
) -> None:
    client = make_client(server, timeout=Timeout(read=5))
    assert client.chat.completions.create(messages=HELLO).text == ANSWER  # a pooled connection
    server.script(Behavior(stall_after=2, stall_seconds=0.5))
    stream = client.chat.completions.create(messages=HELLO, stream=True)
    assert [next(stream).text for _ in range(2)] == ["", "Hello!"]
    parent_runner = _portal.current()

    def in_child() -> list[Any]:
        assert _portal.existing() is None
        assert parent_runner in _portal._orphans
        with pytest.raises(RuntimeError, match="parent process"):
            list(stream)  # what the parent had received is there; nothing more
        stream.close()  # the parent's: left alone
        reply = client.chat.completions.create(messages=HELLO)
        streamed = "".join(
            c.text for c in client.chat.completions.create(messages=HELLO, stream=True)
        )
        fresh = _portal.current()
        client.close()  # also drops the parent's sessions: must not touch their sockets
        return [reply.text, streamed, fresh is not parent_runner, fresh.pid == os.getpid()]

    assert fork_and_run(in_child) == [ANSWER, ANSWER, True, True]
    # The parent's stream and pooled connection are intact: the rest of the
    # stream arrives, and the pooled connection answers again.
    assert "".join(c.text for c in stream) == ANSWER.removeprefix("Hello!")
    assert stream.text == ANSWER
    assert client.chat.completions.create(messages=HELLO).text == ANSWER
    assert server.disconnects == 0
    assert _portal.current() is parent_runner
    client.close()


def test_an_abandoned_loop_points_its_descriptors_at_devnull() -> None:
    # What the fork hook does to the child's copy of the loop, shown on a
    # loop that never runs (so nothing else in this process is affected).
    loop = asyncio.SelectorEventLoop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        _, writer = loop.run_until_complete(asyncio.open_connection("127.0.0.1", port))
        peer, _ = listener.accept()
    descriptors = _portal._descriptors(loop)
    connection = writer.get_extra_info("socket").fileno()
    assert connection in descriptors
    assert len(descriptors) == 4  # the connection, the selector, the self-pipe's two ends
    # Keep the loop's own descriptors to put them back afterwards; the
    # connection is not kept, so it really closes.
    saved = {fd: os.dup(fd) for fd in descriptors if fd != connection}
    _portal.LoopThread.abandon(SimpleNamespace(loop=loop))  # type: ignore[arg-type]
    null = os.stat(os.devnull)
    for fd in descriptors:
        assert os.fstat(fd).st_rdev == null.st_rdev
    with peer:
        # This loop held the only descriptor, so the connection ended; in a
        # forked child the parent's own descriptor keeps it open.
        assert peer.recv(1) == b""
    for fd, copy in saved.items():
        os.dup2(copy, fd, inheritable=False)
        os.close(copy)
    writer.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
