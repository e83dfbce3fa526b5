"""The shared loop thread (``chatkit._portal``) on its own: submitting work,
stopping, and what the fork hook does. Each test uses a loop thread of its
own where it stops one, so the process-wide one is left running."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from chatkit import Client, _portal, _sync
from chatkit.providers import OpenAI

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def runner() -> Iterator[_portal.LoopThread]:
    made = _portal.LoopThread()
    yield made
    made.stop()


def test_run_returns_results_and_raises_the_coroutines_own_error(
    runner: _portal.LoopThread,
) -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise KeyError("from the loop")

    assert runner.run(answer()) == 42
    with pytest.raises(KeyError, match="from the loop") as caught:
        runner.run(fail())
    assert caught.traceback[-1].name == "fail"  # the original frame is kept
    assert "running" in repr(runner)


def test_a_keyboard_interrupt_on_the_loop_reaches_the_caller_and_spares_the_loop(
    runner: _portal.LoopThread,
) -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(interrupt())
    assert runner.running
    assert runner.run(asyncio.sleep(0, "still alive")) == "still alive"


def test_a_timeout_in_the_caller_cancels_the_coroutine(runner: _portal.LoopThread) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        runner.run(slow(), timeout=0.05)
    assert cancelled.wait(5)


def test_stopping_ends_waiting_callers_and_refuses_new_work(runner: _portal.LoopThread) -> None:
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            runner.run(asyncio.sleep(3600))
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    for _ in range(1000):  # a bounded wait for the call to be on the loop
        if runner.task_count() == 1:
            break
        time.sleep(0.005)
    runner.stop()
    waiter.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
    assert "loop stopped" in str(outcome[0])
    assert not runner.running and "stopped" in repr(runner)
    runner.stop()  # already stopped: nothing to do

    # Work submitted afterwards is refused, and no coroutine is left un-awaited.
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(asyncio.sleep(0))
    runner.spawn(asyncio.sleep(0))
    assert runner.call_soon(print) is False
    pump = _portal.StreamPump(runner, None, 4)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        pump.start()


def test_spawned_work_runs_and_its_errors_are_dropped(runner: _portal.LoopThread) -> None:
    done = threading.Event()

    async def work() -> None:
        done.set()
        raise ValueError("nobody is waiting for this")

    runner.spawn(work())
    assert done.wait(5)

    async def drain() -> None:
        await asyncio.gather(*list(runner.tasks))

    runner.run(drain())  # the error was dropped, not raised here
    assert runner.tasks == set()


def test_a_pump_cancelled_before_it_began_reports_why() -> None:
    with Client(provider=OpenAI(base_url="http://127.0.0.1:9/v1")) as client:
        astream = client._async.chat.completions.create(messages=HELLO, stream=True)
        pump = _portal.StreamPump(_portal.current(), astream, 4)

        async def start_and_cancel() -> None:
            pump._start_task()
            assert pump._task is not None
            pump._task.cancel()  # before its first step, as a loop shutdown might

        _portal.current().run(start_and_cancel())
        with pytest.raises(RuntimeError, match="before the stream began"):
            pump.take()
        assert pump.wait_finished(1)


def test_shutdown_without_a_loop_thread_is_harmless() -> None:
    _portal.shutdown()
    _portal.shutdown()
    assert _portal.existing() is None
    # A client dropped while no loop thread runs has nothing to close there.
    Client(provider=OpenAI(base_url="http://127.0.0.1:9/v1"))
    assert _portal.existing() is None


def test_a_stream_from_another_process_is_left_alone() -> None:
    with Client(provider=OpenAI(base_url="http://127.0.0.1:9/v1")) as client:
        astream = client._async.chat.completions.create(messages=HELLO, stream=True)
        pump = _portal.StreamPump(_portal.current(), astream, 4)
        stream = _sync.ChatStream(pump, attempts=[], owner=client)
        stream._pid = -1  # as in a forked child
        with pytest.raises(RuntimeError, match="parent process"):
            next(stream)
        stream.close()
        assert not stream._closed and not pump._cancelled


# -- the fork hook -------------------------------------------------------------


def test_the_fork_hook_abandons_the_parents_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    abandoned: list[Any] = []
    parent = SimpleNamespace(pid=-1)
    parent.abandon = lambda: abandoned.append(parent)
    monkeypatch.setattr(_portal, "_current", parent)
    monkeypatch.setattr(_portal, "_orphans", [])
    monkeypatch.setattr(_portal, "_lock", _portal._lock)
    old_lock = _portal._lock
    _portal._after_fork_in_child()
    assert _portal._current is None
    assert _portal._orphans == [parent] == abandoned
    assert _portal._lock is not old_lock


def test_descriptors_of_a_closed_loop() -> None:
    closed = SimpleNamespace(get_extra_info=lambda name: None)
    loop = SimpleNamespace(_transports={7: closed}, _selector=None, _ssock=None, _csock=None)
    _portal._check_fork_support(loop)  # type: ignore[arg-type]
    assert _portal._descriptors(loop) == set()  # type: ignore[arg-type]
    real = asyncio.SelectorEventLoop()
    real.close()
    assert _portal._descriptors(real) == set()


def test_a_loop_without_the_internals_the_fork_hook_reads_fails_loudly() -> None:
    # Found when the loop thread starts, in the parent, not silently skipped
    # in a forked child.
    loop = SimpleNamespace(_transports={}, _selector=None)
    with pytest.raises(RuntimeError, match=r"_ssock, _csock.*fork"):
        _portal._check_fork_support(loop)  # type: ignore[arg-type]
