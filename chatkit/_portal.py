"""The one background event loop that every sync ``Client`` in a process shares,
and ``StreamPump``, which carries one stream from that loop to a caller's thread.

A daemon thread runs an asyncio loop forever; ``current()`` starts it on first
use. Sync code hands it coroutines (``run``: wait for the result; ``spawn``:
fire and forget) and callbacks (``call_soon``), all thread-safe, none of them
ever re-entering or patching the caller's own event loop.

Why not ``anyio.from_thread.BlockingPortalProvider``, which has the same
shape: before anyio 4.10 (``anyio>=4.4`` is allowed) its loop ran in a
non-daemon thread, so a script that never closed its client hung at exit;
since 4.10 that thread is a daemon, but three reasons hold for every
version: neither its lock nor its portal survive ``fork``; cancelling one of
its tasks from another thread is a blocking round trip (``__del__`` must
never block); and stepping a stream through it one ``__anext__`` at a time
measured about 2k chunks/s against 52k for ``StreamPump``'s batched handoff.
This module keeps the shape (one shared loop thread, coroutines submitted
from any thread) and handles those cases.

After ``os.fork()`` the child inherits the loop object but not its thread, and
shares the parent's sockets and epoll instance. The at-fork hook abandons the
inherited loop: it is kept referenced forever (so no finalizer of the parent's
tasks or connections ever runs in the child) and its descriptors are pointed
at ``/dev/null``, so nothing the child does can write to, shut down or
unregister the parent's connections. The next ``current()`` starts a fresh
thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from chatkit._streaming import AsyncChatStream
    from chatkit._types import ChatCompletionChunk

__all__ = ["LoopThread", "StreamPump", "current", "existing", "shutdown"]

T = TypeVar("T")

STOP_WAIT = 5.0
"""Seconds ``stop()`` waits for cancelled tasks and for the thread to end."""


async def _outcome(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    # Every exception, KeyboardInterrupt included, goes back to the waiting
    # thread as a value: raised on the loop, it would stop the shared loop.
    try:
        return True, await coro
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return False, exc


async def _quietly(coro: Coroutine[Any, Any, object]) -> None:
    # Fire-and-forget work (closing a client nobody holds): nobody is left to
    # receive an error, and an unretrieved task exception would only be logged.
    with contextlib.suppress(Exception):
        await coro


class LoopThread:
    """An asyncio event loop running in a daemon thread until ``stop()``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # A selector loop whatever the global policy says: the fork hook
        # relies on its descriptors (selector, self-pipe, transports).
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
        # Checked here, in the parent, where an error can be seen: in a
        # forked child it would be too late to find out.
        _check_fork_support(self.loop)
        # asyncio keeps only weak references to tasks: these keep ours alive.
        self.tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._serve, name="chatkit-loop", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopThread pid={self.pid} {state}>"

    def _serve(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    # -- submitting work -----------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it; its exception is raised here.

        An exception in the waiting thread (KeyboardInterrupt, ``timeout``)
        cancels the coroutine before it propagates.
        """
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError(
                "a sync chatkit call cannot wait on chatkit's own event loop thread;"
                " use AsyncClient in async code running there"
            )
        wrapped = _outcome(coro)
        try:
            future = asyncio.run_coroutine_threadsafe(wrapped, self.loop)
        except BaseException:
            wrapped.close()
            coro.close()
            raise
        try:
            ok, value = future.result(timeout)
        except concurrent.futures.CancelledError:
            raise RuntimeError("chatkit's event loop stopped before the call finished") from None
        except BaseException:
            future.cancel()
            raise
        if not ok:
            raise value
        result: T = value
        return result

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Schedule ``callback(*args)`` on the loop from any thread, never blocking.

        False when the loop is already closed.
        """
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Start ``coro`` as a task from any thread, without waiting; errors are dropped."""
        wrapped = _quietly(coro)
        if not self.call_soon(self.track, wrapped):
            wrapped.close()
            coro.close()

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Create a task kept alive until it ends. Call on the loop thread."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def task_count(self) -> int:
        """Tasks on the loop besides the one asking (for leak checks)."""
        return self.run(_count_tasks())

    # -- stopping ------------------------------------------------------------

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Cancel every task, stop the loop and join the thread (bounded waits)."""
        if not self.running or self.on_loop_thread():
            return
        with contextlib.suppress(Exception):
            self.run(_cancel_all(), timeout=timeout)
        self.call_soon(self.loop.stop)
        self._thread.join(timeout)

    def abandon(self) -> None:
        """In a forked child: leave the inherited loop unable to reach the parent's sockets.

        Its descriptors (connections, selector, self-pipe) are re-pointed at
        /dev/null: closing, writing or unregistering them then touches nothing
        the parent uses, and the parent's connections stay open in the parent.
        """
        _point_at_devnull(_descriptors(self.loop))


async def _count_tasks() -> int:
    return len(asyncio.all_tasks()) - 1


async def _cancel_all() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


# The private attributes of asyncio's selector loop that the fork hook reads:
# there is no public way to list a loop's descriptors.
_LOOP_ATTRIBUTES = ("_transports", "_selector", "_ssock", "_csock")


def _check_fork_support(loop: asyncio.AbstractEventLoop) -> None:
    missing = [name for name in _LOOP_ATTRIBUTES if not hasattr(loop, name)]
    if missing:
        raise RuntimeError(
            f"{type(loop).__name__} lacks {', '.join(missing)}: this Python's asyncio"
            " changed internals chatkit's fork support reads; please report it"
        )


def _descriptors(loop: asyncio.AbstractEventLoop) -> set[int]:
    # Every attribute was checked by _check_fork_support; None means closed.
    found: set[int] = set()
    for transport in list(loop._transports.values()):  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            found.add(sock.fileno())
    selector = loop._selector  # type: ignore[attr-defined]
    if selector is not None:
        found.add(selector.fileno())
    for name in ("_ssock", "_csock"):
        sock = getattr(loop, name)
        if sock is not None:
            found.add(sock.fileno())
    found.discard(-1)  # already closed
    return found


def _point_at_devnull(descriptors: set[int]) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


# -- one stream carried across the thread boundary ------------------------------


class StreamPump:
    """One stream's task on the loop, and the bounded handoff to the caller's thread.

    The task runs the whole ``async for`` over the stream (so a provider may
    hold a cancel scope or deadline across its yields). It collects a loop
    turn's chunks in a list of its own and moves them to the list shared
    with the caller once per turn, under the lock, waking the caller then;
    ``take()`` hands over everything moved so far. Once the two lists hold
    ``capacity`` chunks the task hands them over and waits until the caller
    takes them.
    """

    def __init__(self, runner: LoopThread, astream: AsyncChatStream, capacity: int) -> None:
        self._runner = runner
        self._loop = runner.loop
        self._astream: AsyncChatStream | None = astream
        self._capacity = capacity
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._items: list[ChatCompletionChunk] = []
        # The loop thread's own: chunks of this loop turn, not yet in _items.
        self._pending: list[ChatCompletionChunk] = []
        self._error: BaseException | None = None
        self._finished = False
        self._cancelled = False
        self._room: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- loop side -----------------------------------------------------------

    def start(self) -> None:
        if not self._runner.call_soon(self._start_task):
            raise RuntimeError("chatkit's event loop is closed")

    def _start_task(self) -> None:
        task = self._task = self._runner.track(self._run())
        task.add_done_callback(self._mark_finished)

    async def _run(self) -> None:
        astream = self._astream
        assert astream is not None
        pending = self._pending
        capacity = self._capacity
        try:
            async for chunk in astream:
                # No lock per chunk: the chunks of a loop turn are handed
                # over (and the caller woken) once, when the turn ends.
                pending.append(chunk)
                if len(pending) == 1:
                    self._loop.call_soon(self._publish)
                if len(pending) + len(self._items) >= capacity:
                    await self._park().wait()
        except asyncio.CancelledError:
            # Handled here, not propagated: undo the request so that timeouts
            # and scopes in the closing code below see a task that is not
            # being cancelled any more.
            current = asyncio.current_task()
            if current is not None:  # pragma: no branch - always inside the task
                current.uncancel()
            if not self._cancelled:
                self._error = RuntimeError("chatkit's event loop stopped during the stream")
        except BaseException as exc:
            self._error = exc
        finally:
            self._astream = None
            self._publish()  # every chunk before the end or the error
            # Already closed when the stream ended or failed; not when the
            # cancel arrived while the pump waited for room.
            with contextlib.suppress(Exception):
                await astream.aclose()

    def _publish(self) -> None:
        """Move this turn's chunks to the caller's side and wake it (loop thread only)."""
        if self._pending:
            with self._lock:
                self._move_pending()

    def _park(self) -> asyncio.Event:
        """Publish, and return the event the caller sets once it has taken the chunks."""
        with self._lock:
            self._move_pending()
            room = self._room = asyncio.Event()
        return room

    def _move_pending(self) -> None:
        # Under the lock.
        self._items += self._pending
        self._pending.clear()
        self._changed.notify_all()

    def _mark_finished(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            if task.cancelled() and not self._cancelled and self._error is None:
                self._error = RuntimeError("chatkit's event loop stopped before the stream began")
            self._finished = True
            self._changed.notify_all()

    def _cancel_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    # -- caller side ---------------------------------------------------------

    def take(self) -> list[ChatCompletionChunk]:
        """Every chunk received so far (waiting for one); [] at the end; raises its error."""
        if self._runner.on_loop_thread():
            raise RuntimeError(
                "a sync chatkit stream cannot be read on chatkit's own event loop thread"
            )
        with self._lock:
            while not self._items and not self._finished:
                self._changed.wait()
            items = self._items
            if items:
                self._items = []
                room, self._room = self._room, None
                if room is not None:
                    self._runner.call_soon(room.set)
                return items
            error, self._error = self._error, None
        if error is not None:
            raise error
        return items

    def cancel(self) -> None:
        """Stop the pump from any thread (``__del__``, the loop's own); never blocks."""
        if self._cancelled:
            return
        self._cancelled = True
        self._runner.call_soon(self._cancel_task)

    def wait_finished(self, timeout: float) -> bool:
        """Wait until the pump's task has ended; never waits on the loop thread itself."""
        if self._runner.on_loop_thread():
            return self._finished
        with self._lock:
            return self._changed.wait_for(lambda: self._finished, timeout)


# -- the shared instance -----------------------------------------------------

_lock = threading.Lock()
_current: LoopThread | None = None
# Loops a forked child inherited: referenced for the life of the process so
# that no finalizer of the parent's tasks or connections ever runs here.
_orphans: list[LoopThread] = []


def _forget_if_forked() -> None:
    global _current
    runner = _current
    if runner is not None and runner.pid != os.getpid():
        _current = None
        _orphans.append(runner)
        runner.abandon()


def _after_fork_in_child() -> None:
    global _lock
    # The parent's lock may have been held by a thread that does not exist here.
    _lock = threading.Lock()
    _forget_if_forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> LoopThread:
    """This process's loop thread, started on first use (and again after a fork)."""
    global _current
    with _lock:
        _forget_if_forked()
        runner = _current
        if runner is None or not runner.running:
            runner = _current = LoopThread()
        return runner


def existing() -> LoopThread | None:
    """This process's running loop thread, without starting one."""
    runner = _current
    if runner is None or runner.pid != os.getpid() or not runner.running:
        return None
    return runner


def shutdown(timeout: float = STOP_WAIT) -> None:
    """Stop this process's loop thread; a later ``current()`` starts a new one."""
    global _current
    with _lock:
        _forget_if_forked()
        runner, _current = _current, None
    if runner is not None:
        runner.stop(timeout)
