"""What every ``chatkit`` command shares: options, the client, the status line, errors.

Only the public chatkit API is used here (layer L7): ``chatkit`` and
``chatkit.providers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import chatkit
from chatkit.providers import PROVIDERS, Local, default_provider_class, get_provider_class

__all__ = [
    "Session",
    "Status",
    "add_client_options",
    "error_line",
    "finite_number",
    "request_params",
    "seconds",
    "stdin_text",
    "undecodable_line",
    "write",
]


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose and tune the provider, shared by the ask and chat commands."""
    group = parser.add_argument_group("provider and model")
    group.add_argument(
        "-m",
        "--model",
        default="",
        help='model, optionally "provider:model" (e.g. local:, openai:gpt-4o-mini)',
    )
    group.add_argument(
        "-p", "--provider", default=None, help="provider name: " + ", ".join(sorted(PROVIDERS))
    )
    group.add_argument(
        "--base-url",
        default=None,
        help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1",
    )
    group.add_argument("--proxy", default=None, help="http(s):// or socks5:// proxy URL")
    group.add_argument("--retries", type=int, default=2, help="retries per provider (default 2)")
    group.add_argument("--timeout", type=seconds, default=None, help="seconds for the whole call")
    sampling = parser.add_argument_group("generation")
    sampling.add_argument("-s", "--system", default=None, help="system prompt")
    sampling.add_argument("--temperature", type=finite_number, default=None)
    sampling.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def finite_number(text: str) -> float:
    """An argparse type: a number, but not nan or inf (JSON has neither)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (inf: no limit), never nan."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    return params


def error_line(exc: BaseException) -> str:
    """One line for stderr: chatkit's message, or the exception's type and message."""
    if isinstance(exc, chatkit.ChatkitError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
    return "chatkit: error: " + " ".join(text.split())


def undecodable_line(what: str, exc: UnicodeDecodeError) -> str:
    """One line for stderr about input that is not text in the expected encoding."""
    byte = exc.object[exc.start : exc.start + 1].hex()
    return (
        f"chatkit: error: {what} is not {exc.encoding} text"
        f" (byte 0x{byte} at offset {exc.start}); convert it first, e.g. with iconv"
    )


class Status:
    """A spinner with elapsed time on stderr, only when stderr is a terminal."""

    _FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, enabled: bool | None = None) -> None:
        self._stream = stream
        if enabled is None:
            enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.enabled = enabled
        self._task: asyncio.Task[None] | None = None
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._spin())

    async def _spin(self) -> None:
        started = time.monotonic()
        for frame in itertools.cycle(self._FRAMES):
            elapsed = time.monotonic() - started
            self._stream.write(f"\r\x1b[K{frame} {self.label} {elapsed:.1f}s")
            self._stream.flush()
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._stream.write("\r\x1b[K")
            self._stream.flush()


@dataclass
class Session:
    """A client for the chosen provider; a ``Local`` model is loaded with a status line."""

    args: argparse.Namespace
    status: Status
    client: chatkit.AsyncClient = field(init=False)
    model: str = field(init=False)
    local: Local | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        args = self.args
        provider: Any = args.provider
        self.model = args.model
        prefix, sep, rest = self.model.partition(":")
        # With --base-url the server is fixed: a colon is part of the model (mistral:7b).
        if provider is None and args.base_url is None and sep and prefix.lower() in PROVIDERS:
            provider, self.model = prefix.lower(), rest
        if provider is None and args.base_url is None:
            provider = default_provider_class()  # raises MissingAuthError naming the keys
        if provider is not None and not isinstance(provider, type):
            provider = get_provider_class(provider)
        if provider is Local:
            self.local = provider = Local()
        self.client = chatkit.AsyncClient(
            provider=provider,
            base_url=args.base_url,
            proxy=args.proxy,
            max_retries=args.retries,
            timeout=args.timeout,
        )

    async def prepare(self) -> None:
        """Load the local model (if that is the provider) while showing progress."""
        if self.local is not None and not self.local.is_loaded:
            self.status.start("loading the local model")
            try:
                await self.local.start()
            finally:
                self.status.stop()

    def create(self, messages: list[dict[str, Any]], *, stream: bool) -> Any:
        create = self.client.chat.completions.create
        params = request_params(self.args)
        if stream:
            return create(messages=messages, model=self.model, stream=True, **params)
        return create(messages=messages, model=self.model, stream=False, **params)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self.local is not None:
            await self.local.aclose()


def write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


def stdin_text(stdin: TextIO | None) -> str | None:
    """Piped or redirected standard input, or None when it is a terminal or absent.

    Raises ``UnicodeDecodeError`` when the input is not text in its encoding.
    """
    if stdin is None or stdin.closed:
        return None
    try:
        if stdin.isatty():
            return None
        mode = os.fstat(stdin.fileno()).st_mode
    except (OSError, ValueError):
        return None
    # A pipe or a file is input meant for us; a socket or device (/dev/null) is not.
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return None
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:
        return stdin.read()
    # Decoded strictly here: Python's stdin may use surrogateescape, which
    # turns bad bytes into lone surrogates that fail much later, obscurely.
    data: bytes = buffer.read()
    return data.decode(stdin.encoding or "utf-8")
