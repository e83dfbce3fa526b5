"""``chatkit serve --workers N`` as real processes: sharing the port, stopping, restarting,
and sharing provider health through a real redis-server (``--state``).

Every gateway is started with ``--port 0``; which worker answered is read from
the ``X-Chatkit-Worker`` header of ``/health``, asked on the same keep-alive
connection as the request it identifies. Leftover processes are looked for in
``/proc``.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import openai
import pytest
from redis_support import REDIS_SERVER, RedisServer

from chatkit.server import SHUTDOWN_TIMEOUT
from chatkit.server._app import LISTEN_BACKLOG
from chatkit.server._workers import RESTART_DELAY, SHARED_SOCKET_ENV, STOP_TIMEOUT, WORKER_HEADER
from chatkit.testing import Behavior, FakeOpenAIServer

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

LISTENING = re.compile(r"listening on (http://\S+)")
UPSTREAM_KEY = "sk-upstream-workers"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def environment(**extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL") and k != SHARED_SOCKET_ENV
    }
    return {**clean, "OPENAI_API_KEY": UPSTREAM_KEY, **extra}


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Gateway:
    """``chatkit serve --port 0 ARGS`` in a subprocess, its stderr read by a thread."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatkit", "serve", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                self._new.put(line)
        self._new.put(None)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_listening(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "chatkit serve ended before listening:\n" + self.log
            found = LISTENING.search(line)
            if found:
                self.url = found.group(1)
                return line

    def workers(self) -> set[int]:
        return children(self.process.pid)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT + 5) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)  # EOF once every holder of stderr (each worker) is gone
        assert not self._reader.is_alive(), "a worker still holds the gateway's stderr"
        return code

    def health(self) -> int:
        """The pid of the worker that answered /health on a fresh connection."""
        conn = self.connection()
        try:
            return self.worker_of(conn)
        finally:
            conn.close()

    def connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    @staticmethod
    def worker_of(conn: http.client.HTTPConnection) -> int:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return int(response.headers.get(WORKER_HEADER, "0"))  # 0: a single process

    def ask(self) -> tuple[int, int, dict[str, object]]:
        """(worker pid, status, JSON body) of one chat request on a fresh connection."""
        conn = self.connection()
        try:
            pid = self.worker_of(conn)  # the same connection, so the same worker
            body = json.dumps({"messages": MESSAGES})
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return pid, response.status, json.loads(response.read())
        finally:
            conn.close()

    def pids_answering(self, count: int, tries: int = 200) -> set[int]:
        seen: set[int] = set()
        for _ in range(tries):
            seen.add(self.health())
            if len(seen) >= count:
                break
        return seen


@contextmanager
def gateway(*args: str, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    served = Gateway(*args, env=environment() if env is None else env)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            leftovers = served.workers()
            served.process.kill()
            served.process.wait()
            for pid in leftovers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        served._reader.join(timeout=5)


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_gone(pids: set[int], served: Gateway) -> None:
    left = {pid for pid in pids if alive(pid)}
    assert not left, f"processes left behind: {left}\n{served.log}"


def test_two_workers_serve_streamed_and_plain_requests_then_stop() -> None:
    with (
        FakeOpenAIServer(
            Behavior(text="from a worker"), api_key=UPSTREAM_KEY
        ).run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url, "-m", "house-model") as served,
    ):
        line = served.wait_listening()
        assert "(2 workers, no auth)" in line
        assert served.url.startswith("http://127.0.0.1:")
        assert not served.url.endswith(":0")
        workers = served.workers()
        assert len(workers) == 2
        # Both answer, on the one port the parent printed.
        assert served.pids_answering(2) == workers

        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        with client:
            answer = client.chat.completions.create(model="house-model", messages=MESSAGES)
            stream = client.chat.completions.create(
                model="house-model", messages=MESSAGES, stream=True
            )
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert answer.choices[0].message.content == "from a worker"
        assert text == "from a worker"

        # Chat requests, not only /health, are answered by each worker.
        answered: set[int] = set()
        for _ in range(200):
            pid, status, body = served.ask()
            assert status == 200, body
            answered.add(pid)
            if answered == workers:
                break
        assert answered == workers

        started = time.monotonic()
        code = served.stop(signal.SIGTERM)
        assert time.monotonic() - started < STOP_TIMEOUT
    assert code == 0, served.log
    assert_gone(workers, served)
    assert served.log.count("listening on") == 1
    assert "chatkit serve: stopped" in served.log
    assert "Traceback" not in served.log
    assert UPSTREAM_KEY not in served.log
    # Every log line says which worker wrote it.
    assert any(f"aiohttp.access[{pid}]" in served.log for pid in workers)


def test_sigint_stops_every_worker_in_bound_even_with_a_stream_that_never_ends() -> None:
    stalled = Behavior(text="never finishes", stall_after=1, stall_seconds=3600)
    with (
        FakeOpenAIServer(stalled).run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url) as served,
    ):
        served.wait_listening()
        workers = served.workers()
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        first = next(iter(stream))  # the stream is open, and stays so
        assert first.choices[0].delta is not None
        started = time.monotonic()
        code = served.stop(signal.SIGINT)
        took = time.monotonic() - started
        stream.close()
        client.close()
    assert code == 0, served.log
    # The worker's own bound (answers get SHUTDOWN_TIMEOUT), well before the kill.
    assert took < SHUTDOWN_TIMEOUT + 3, served.log
    assert "did not stop in time" not in served.log
    assert_gone(workers, served)
    assert "Traceback" not in served.log


def test_a_second_stop_signal_kills_at_once_but_a_repeated_one_does_not() -> None:
    stalled = Behavior(text="never finishes", stall_after=1, stall_seconds=3600)
    with (
        FakeOpenAIServer(stalled).run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url) as served,
    ):
        served.wait_listening()
        workers = served.workers()
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        next(iter(stream))
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        served.process.send_signal(signal.SIGTERM)  # the same stop, sent twice
        time.sleep(1.5)
        assert served.process.poll() is None  # still waiting for the stream
        code = served.stop(signal.SIGINT)  # impatient: now
        took = time.monotonic() - started
        stream.close()
        client.close()
    assert code == 0, served.log
    assert took < SHUTDOWN_TIMEOUT, served.log
    assert "stop signalled again: killed" in served.log
    assert_gone(workers, served)


def test_a_killed_worker_is_restarted_and_the_gateway_keeps_answering() -> None:
    with (
        FakeOpenAIServer().run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url) as served,
    ):
        served.wait_listening()
        first = served.workers()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # (A connection queued on the dying worker's socket is reset with it.)
        wait_for(lambda: not alive(victim), 5, "the kill")
        # Answering all along: the dead worker's socket went with it.
        for _ in range(10):
            pid, status, _body = served.ask()
            assert status == 200
            assert pid != victim
        wait_for(lambda: len(served.workers() - first) == 1, 15, "a new worker")
        replacement = (served.workers() - first).pop()
        # It answers once it serves (it listens only then).
        wait_for(lambda: served.health() == replacement, 15, "the new worker answering")
        assert served.pids_answering(2) == (first - {victim}) | {replacement}
        assert f"worker {victim} was killed by SIGKILL" in served.log
        assert f"restarting it in {RESTART_DELAY:.1f}s" in served.log
        code = served.stop()
    assert code == 0, served.log
    assert_gone(first | {replacement}, served)


def test_workers_stop_by_themselves_when_the_parent_is_killed() -> None:
    with (
        FakeOpenAIServer().run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url) as served,
    ):
        served.wait_listening()
        workers = served.workers()
        served.process.kill()  # no chance to forward anything
        served.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), STOP_TIMEOUT, "orphans")
        served._reader.join(timeout=5)
    assert "the chatkit serve parent went away: stopping" in served.log


def test_a_shared_socket_bound_in_the_parent_serves_too() -> None:
    env = environment(**{SHARED_SOCKET_ENV: "1"})
    with (
        FakeOpenAIServer().run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url, env=env) as served,
    ):
        served.wait_listening()
        workers = served.workers()
        # One accept queue: which worker takes a connection is up to the kernel.
        # Kill the one that answers; the other (not a replacement) answers next.
        answering = served.health()
        os.kill(answering, signal.SIGKILL)
        wait_for(lambda: not alive(answering), 5, "the kill")
        pid, status, _body = served.ask()
        assert status == 200
        assert pid in workers - {answering}
        code = served.stop()
    assert code == 0, served.log
    assert_gone(workers, served)


def test_a_fallback_chain_with_a_breaker_and_metrics_in_each_worker() -> None:
    with FakeOpenAIServer(Behavior(text="chained"), api_key=UPSTREAM_KEY).run_in_thread() as up:
        up.fail(1, 503)
        env = environment(OPENAI_BASE_URL=up.base_url)
        args = ["--workers", "2", "-p", "openai,openai", "--retries", "0", "--breaker"]
        with gateway(*args, "--metrics", env=env) as served:
            served.wait_listening()
            _pid, status, body = served.ask()
            assert status == 200, body  # the first member failed, the second answered
            conn = served.connection()
            conn.request("GET", "/metrics")
            metrics = conn.getresponse()
            assert metrics.status == 200
            assert b"chatkit" in metrics.read()
            conn.close()
            code = served.stop()
    assert code == 0, served.log
    assert "each scrape of /metrics reports the one worker that answers it" in served.log
    assert len(up.requests) == 2


def test_a_port_in_use_is_one_line_and_no_worker() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "chatkit", "serve", "--workers", "2", "--port", port],
            env=environment(),
            capture_output=True,
            timeout=20,
        )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "Address already in use" in lines[0], lines


def test_a_bad_setting_is_reported_once_not_once_per_worker() -> None:
    env = environment()
    del env["OPENAI_API_KEY"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "chatkit", "serve", "--port", "0", "--workers", "3", "-p", "openai"],
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatkit: error:"), lines
    assert "OPENAI_API_KEY" in lines[0]
    assert time.monotonic() - started < 10


def test_state_without_the_redis_package_is_one_line() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; from chatkit.cli import main;"
        " sys.exit(main(sys.argv[1:]))"
    )
    args = ["serve", "--port", "0", "--base-url", "http://127.0.0.1:9/v1"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--state", "redis://127.0.0.1:1/0"],
        env=environment(),
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines == ['chatkit: error: --state needs redis: pip install "chatkit[redis]"']


def test_state_options_need_state() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatkit", "serve", "--port", "0", "--state-prefix", "x:"],
        env=environment(),
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "chatkit: error: --state-prefix and --state-timeout need --state URL"
    )


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("workers", [2, 1])
def test_workers_share_one_breaker_through_redis(workers: int) -> None:
    redis_server = RedisServer()
    redis_server.start()
    threshold = 3
    try:
        with FakeOpenAIServer(api_key=UPSTREAM_KEY).run_in_thread() as up:
            up.fail(100, 503)
            # --timeout below the breaker's cooldown: an open circuit fails the call
            # at once instead of waiting for the half-open.
            args = ["--workers", str(workers), "--base-url", up.base_url]
            args += ["--retries", "0", "--timeout", "5"]
            args += ["--breaker-threshold", str(threshold), "--state", redis_server.url]
            # Generous: a busy test machine must not push a worker to its memory.
            args += ["--state-prefix", "workers-test:", "--state-timeout", "2"]
            with gateway(*args) as served:
                line = served.wait_listening()
                assert "shared state in Redis" in line
                pids = served.workers() if workers > 1 else {0}
                # Requests one after the other, on fresh connections, until each
                # worker alone has answered enough to open a breaker of its own.
                answered = {pid: 0 for pid in pids}
                statuses = []
                for _ in range(100):
                    pid, status, _body = served.ask()
                    statuses.append(status)
                    answered[pid] += 1
                    if min(answered.values()) >= threshold + 1:
                        break
                assert min(answered.values()) >= threshold + 1, answered
                code = served.stop()
            # Not threshold x 2: the second worker knew the circuit was open.
            assert len(up.requests) == threshold, (answered, statuses)
        assert statuses[:threshold] == [503] * threshold
        assert all(status >= 500 for status in statuses)
        assert code == 0, served.log
        assert_gone(pids - {0}, served)
        assert redis_server.command("KEYS", "workers-test:*")  # it really was Redis
        assert "Traceback" not in served.log
    finally:
        redis_server.stop()


def listen_backlogs(port: int) -> list[int]:
    """The accept-queue sizes of the sockets listening on ``port`` (``ss``'s Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


def expected_backlog() -> int:
    return min(LISTEN_BACKLOG, int(Path("/proc/sys/net/core/somaxconn").read_text()))


@pytest.mark.parametrize("shared", [False, True])
def test_workers_listen_with_a_deep_accept_queue(shared: bool) -> None:
    # aiohttp's default of 128 dropped thousands of connections in a burst.
    env = environment(**{SHARED_SOCKET_ENV: "1"}) if shared else None
    with (
        FakeOpenAIServer().run_in_thread() as up,
        gateway("--workers", "2", "--base-url", up.base_url, env=env) as served,
    ):
        served.wait_listening()
        port = int(served.url.rsplit(":", 1)[1])
        backlogs = listen_backlogs(port)
        assert backlogs and all(b == expected_backlog() for b in backlogs), backlogs
        assert len(backlogs) == (1 if shared else 2)
        assert served.stop() == 0, served.log


RESUMED_TEXT = "one two three four five six seven eight nine ten eleven twelve"


@pytest.mark.parametrize("options", [["--resume"], ["--max-resumes", "1"], []])
def test_serve_resume_continues_a_broken_stream_as_one(options: list[str]) -> None:
    with FakeOpenAIServer(Behavior(text=RESUMED_TEXT, resume_echo=2)).run_in_thread() as up:
        up.script(Behavior(text=RESUMED_TEXT, drop_after=4))
        env = environment(VLLM_BASE_URL=up.base_url)
        args = ["-p", "vllm", "-m", "fake-model", "--retries", "0", *options]
        with gateway(*args, env=env) as served:
            served.wait_listening()
            client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
            parts: list[str] = []
            failure: Exception | None = None
            with client:
                try:
                    stream = client.chat.completions.create(
                        model="fake-model", messages=MESSAGES, stream=True
                    )
                    for chunk in stream:
                        if chunk.choices:
                            parts.append(chunk.choices[0].delta.content or "")
                except openai.APIError as exc:  # the gateway's error event mid-stream
                    failure = exc
            assert served.stop() == 0, served.log
    if options:
        assert failure is None
        assert "".join(parts) == RESUMED_TEXT
        assert len(up.requests) == 2
        assert up.requests[1].json["continue_final_message"] is True
    else:
        assert failure is not None
        assert RESUMED_TEXT.startswith("".join(parts)) and "".join(parts) != RESUMED_TEXT
        assert len(up.requests) == 1


@pytest.mark.parametrize("value", ["-1", "x"])
def test_serve_max_resumes_must_be_a_whole_number(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatkit", "serve", "--max-resumes", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--max-resumes" in done.stderr
