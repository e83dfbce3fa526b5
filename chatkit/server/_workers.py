"""Several gateway processes on one port: ``chatkit serve --workers N``.

The parent (``Supervisor``) never runs an event loop: it binds the port,
starts each worker as a fresh interpreter (``subprocess``, so nothing of the
parent, an event loop, threads, locks, is inherited, and a restart long
after start-up is as clean as the first start), forwards SIGINT / SIGTERM to
them as SIGTERM, and restarts one that dies, with a back-off. Each worker
builds its own client and serves the app on the socket(s) it was handed.

Sockets. On Linux each worker gets its own listening socket bound with
``SO_REUSEPORT`` to the same address, and the kernel spreads new connections
over the workers; the parent keeps one bound, non-listening socket on the
port, so the port stays reserved while workers come and go. Elsewhere (or with
``CHATKIT_SERVE_SHARED_SOCKET=1``) the parent listens once and every worker
accepts from that one socket.

Each worker also gets one end of a socket pair, its control channel: the
parent writes the worker's orders (the sockets' descriptors and the
configuration, secrets included, which thus never appear on a command line or
in the environment), the worker answers ``ready`` once it serves, and stops
by itself when the channel closes, i.e. when the parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from aiohttp import web

from ._app import LISTEN_BACKLOG, SHUTDOWN_TIMEOUT
from ._handlers import health
from ._logging import quiet_accept_errors

__all__ = [
    "MAX_RESTART_DELAY",
    "RESTART_DELAY",
    "SHARED_SOCKET_ENV",
    "STABLE_AFTER",
    "STOP_TIMEOUT",
    "WORKER_HEADER",
    "Listener",
    "Orders",
    "Supervisor",
    "receive_orders",
    "serve_worker",
]

logger = logging.getLogger("chatkit.server.workers")

# On /health answers: the pid of the worker that answered.
WORKER_HEADER = "X-Chatkit-Worker"
# Set (to anything but "" or "0"): one socket listened on by the parent and shared.
SHARED_SOCKET_ENV = "CHATKIT_SERVE_SHARED_SOCKET"
# After forwarding a stop, how long the parent waits for its workers before
# killing them: a worker's own bound (SHUTDOWN_TIMEOUT, then a moment for the
# cancelled answers to close), with room to spare.
STOP_TIMEOUT = SHUTDOWN_TIMEOUT + 5.0
# A worker that dies is restarted after RESTART_DELAY, doubled for every
# further crash in a row up to MAX_RESTART_DELAY; one that ran STABLE_AFTER
# seconds before dying starts the count again.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 30.0
_READY = b"ready\n"
# The supervisor looks at its workers at least this often (seconds).
_POLL = 0.5
# A second stop signal within this many seconds of the first is the same stop.
_REPEAT = 1.0


def reuse_port_available() -> bool:
    """Whether each worker gets its own SO_REUSEPORT socket (Linux: the kernel balances)."""
    if os.environ.get(SHARED_SOCKET_ENV, "") not in ("", "0"):
        return False
    # BSDs and macOS have SO_REUSEPORT too, but do not balance connections over it.
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _bind(family: int, address: Any, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # As asyncio does: "::" must not also take the IPv4 port.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """The address the workers share, bound once in the parent.

    host: a name or address (``""``: every interface); a name that resolves
    to several addresses is served on each. port: 0 picks a free one, the
    same for every address and every worker.
    """

    def __init__(self, host: str, port: int, *, reuse_port: bool | None = None) -> None:
        self.reuse_port = reuse_port_available() if reuse_port is None else reuse_port
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        self._addresses: list[tuple[int, Any]] = []
        for family, _, _, _, address in infos:
            if (family, address) not in self._addresses:
                self._addresses.append((family, address))
        # reuse_port: bound, not listening (the port stays ours; no connection
        # lands there). Otherwise: the listening sockets every worker accepts from.
        self._held: list[socket.socket] = []
        try:
            self._bind_all()
        except BaseException:
            self.close()
            raise

    def _bind_all(self) -> None:
        port: int | None = None
        for index, (family, address) in enumerate(self._addresses):
            if port is not None:
                address = (address[0], port, *address[2:])
            if self.reuse_port:
                # Bound without SO_REUSEPORT first: a port another server listens
                # on (even another gateway of ours) is refused, not shared.
                probe = _bind(family, address, reuse_port=False)
                address = probe.getsockname()
                probe.close()
                sock = _bind(family, address, reuse_port=True)
            else:
                sock = _bind(family, address, reuse_port=False)
                sock.listen(LISTEN_BACKLOG)
            self._held.append(sock)
            port = int(sock.getsockname()[1])
            self._addresses[index] = (family, (address[0], port, *address[2:]))

    @property
    def url(self) -> str:
        host, port = self._held[0].getsockname()[:2]
        host = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{host}:{port}"

    def for_worker(self) -> list[socket.socket]:
        """The sockets for one more worker: its own (SO_REUSEPORT), or the shared ones."""
        if not self.reuse_port:
            return list(self._held)
        made: list[socket.socket] = []
        try:
            for family, address in self._addresses:
                # Not listening yet: the worker listens when it is ready to accept.
                made.append(_bind(family, address, reuse_port=True))
        except BaseException:
            self.release(made)
            raise
        return made

    def release(self, sockets: Sequence[socket.socket]) -> None:
        """The parent's copies of sockets handed to a worker: its own are closed."""
        if self.reuse_port:
            for sock in sockets:
                sock.close()

    def close(self) -> None:
        held, self._held = self._held, []
        for sock in held:
            sock.close()


@dataclass(eq=False)
class _Worker:
    slot: int
    process: subprocess.Popen[bytes]
    control: socket.socket
    started: float
    ready: bool = False


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    """Runs ``count`` workers, each ``command`` plus its control channel's descriptor.

    config: JSON-serialisable; each worker receives it (``receive_orders``).
    """

    def __init__(
        self,
        command: Sequence[str],
        config: dict[str, Any],
        count: int,
        listener: Listener,
    ) -> None:
        self._command = list(command)
        self._config = config
        self._count = count
        self._listener = listener
        self._workers: dict[int, _Worker] = {}
        self._crashes: dict[int, int] = {}
        self._restarts: dict[int, float] = {}  # slot -> when (monotonic)
        self._selector = selectors.DefaultSelector()
        self._signalled: list[float] = []  # when SIGINT / SIGTERM came (monotonic)

    def run(self, on_ready: Callable[[str], object]) -> int:
        """Start the workers, supervise them until SIGINT or SIGTERM, stop them.

        ``on_ready`` gets the URL once every worker serves. Returns 0, or 1
        when a worker exited during start-up (it said why on stderr).
        """
        with self._signals():
            try:
                # The first alone: a bad setting is reported once, not count times.
                for batch in ([0], range(1, self._count)):
                    if not self._until_ready([self._spawn(slot) for slot in batch]):
                        return 1
                if not self._stopping:
                    on_ready(self._listener.url)
                    self._supervise()
                return 0
            finally:
                self._stop_all()
                self._selector.close()

    @property
    def _stopping(self) -> bool:
        return bool(self._signalled)

    @property
    def _hurried(self) -> bool:
        """A second signal, a moment after the first: kill at once.

        One within the moment is the same stop sent twice (``timeout``, for
        one, signals the command and then its whole process group).
        """
        return any(at > self._signalled[0] + _REPEAT for at in self._signalled[1:])

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        self._selector.register(reader, selectors.EVENT_READ, None)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            reader.close()
            writer.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled.append(time.monotonic())

    def _spawn(self, slot: int) -> _Worker:
        sockets = self._listener.for_worker()
        ours, theirs = socket.socketpair()
        try:
            fds = [sock.fileno() for sock in sockets]
            process = subprocess.Popen(
                [*self._command, str(theirs.fileno())],
                pass_fds=[*fds, theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the parent
                # only, which stops the workers in order.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            self._listener.release(sockets)
        worker = _Worker(slot, process, ours, time.monotonic())
        self._workers[slot] = worker
        orders = {"slot": slot, "sockets": fds, "config": self._config}
        with contextlib.suppress(OSError):  # it died already: seen as such below
            ours.sendall(json.dumps(orders).encode() + b"\n")
        self._selector.register(ours, selectors.EVENT_READ, worker)
        logger.debug("worker %d started (pid %d)", slot, process.pid)
        return worker

    def _until_ready(self, workers: Sequence[_Worker]) -> bool:
        """Wait until each of ``workers`` serves (True), or one exits first (False)."""
        while not self._stopping and not all(worker.ready for worker in workers):
            self._wait(_POLL)
            for worker in workers:
                code = worker.process.poll()
                if code is not None and not worker.ready:
                    if code != 1:  # 1: it printed its error line itself
                        logger.error(
                            "worker %d %s during start-up", worker.process.pid, _describe(code)
                        )
                    return False
        return True

    def _supervise(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for worker in list(self._workers.values()):
                code = worker.process.poll()
                if code is not None:
                    self._schedule_restart(worker, code, now)
            for slot, when in list(self._restarts.items()):
                if when <= now:
                    del self._restarts[slot]
                    try:
                        self._spawn(slot)
                    except OSError as exc:  # no memory, no more processes, ...
                        logger.error("cannot restart worker %d: %s", slot, exc)
                        self._crashes[slot] = self._crashes.get(slot, 0) + 1
                        self._restarts[slot] = now + self._delay(slot)
            soonest = min(self._restarts.values(), default=now + _POLL)
            self._wait(soonest - now)

    def _schedule_restart(self, worker: _Worker, code: int, now: float) -> None:
        del self._workers[worker.slot]
        self._forget(worker)
        lived = now - worker.started
        crashes = 1 if lived >= STABLE_AFTER else self._crashes.get(worker.slot, 0) + 1
        self._crashes[worker.slot] = crashes
        delay = self._delay(worker.slot)
        self._restarts[worker.slot] = now + delay
        logger.warning(
            "worker %d %s after %.1fs; restarting it in %.1fs",
            worker.process.pid,
            _describe(code),
            lived,
            delay,
        )

    def _delay(self, slot: int) -> float:
        crashes = max(self._crashes.get(slot, 1), 1)
        return float(min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** min(crashes - 1, 16)))

    def _wait(self, timeout: float) -> None:
        """Until a signal, a worker's message or exit, or ``timeout`` (at most _POLL)."""
        for key, _ in self._selector.select(max(0.0, min(timeout, _POLL))):
            if key.data is None:  # the signal wake-up
                with contextlib.suppress(OSError):
                    key.fileobj.recv(4096)  # type: ignore[union-attr]
                continue
            worker: _Worker = key.data
            try:
                data = worker.control.recv(4096)
            except OSError:
                data = b""
            if data:
                if not worker.ready:
                    logger.debug("worker %d ready (pid %d)", worker.slot, worker.process.pid)
                worker.ready = True
            else:  # it exited (or closed the channel): poll() tells
                self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.control)
        worker.control.close()

    def _stop_all(self) -> None:
        """SIGTERM to every worker; after STOP_TIMEOUT (or a second signal), SIGKILL."""
        workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(worker.process.poll() is None for worker in workers):
            left = deadline - time.monotonic()
            if left <= 0 or self._hurried:
                break
            self._wait(min(left, 0.05))
        why = "stop signalled again" if self._hurried else "did not stop in time"
        for worker in workers:
            if worker.process.poll() is None:
                logger.warning("worker %d %s: killed", worker.process.pid, why)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            worker.process.wait()
            self._forget(worker)
        self._workers.clear()


# -- the worker side ----------------------------------------------------------


@dataclass
class Orders:
    """What a worker was told: its slot, its sockets, the configuration."""

    slot: int
    sockets: list[socket.socket]
    config: dict[str, Any]
    control: socket.socket


def receive_orders(argv: Sequence[str]) -> Orders:
    """In a worker: read the orders from the control channel named by ``argv[-1]``."""
    control = socket.socket(fileno=int(argv[-1]))
    line = b""
    while not line.endswith(b"\n"):
        chunk = control.recv(65536)
        if not chunk:
            raise ConnectionError("the chatkit serve parent went away before giving orders")
        line += chunk
    message = json.loads(line)
    sockets = [socket.socket(fileno=fd) for fd in message["sockets"]]
    return Orders(int(message["slot"]), sockets, dict(message["config"]), control)


async def _stamp_worker(request: web.Request, response: web.StreamResponse) -> None:
    if request.match_info.handler is health:
        response.headers[WORKER_HEADER] = str(os.getpid())


def serve_worker(app: web.Application, orders: Orders) -> None:
    """In a worker: serve ``app`` on the orders' sockets until SIGTERM / SIGINT or orphaned."""
    app.on_response_prepare.append(_stamp_worker)
    asyncio.run(_serve_worker(app, orders))


async def _serve_worker(app: web.Application, orders: Orders) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    control = orders.control
    control.setblocking(False)

    def from_parent() -> None:
        try:
            data = control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the parent is gone: nobody would stop or restart us
            logger.warning("the chatkit serve parent went away: stopping")
            loop.remove_reader(control.fileno())
            stop.set()

    loop.add_reader(control.fileno(), from_parent)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
    restore = quiet_accept_errors(loop)
    try:
        await runner.setup()
        for sock in orders.sockets:
            await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
        with contextlib.suppress(OSError):
            control.send(_READY)
        await stop.wait()
    finally:
        await runner.cleanup()
        restore()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(control.fileno())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        control.close()
