"""What the gateway writes to its log: request-derived text escaped, secrets redacted.

- ``printable(text)``: a request path may carry ``%0A`` or ESC; logged raw it
  forges log lines or drives the terminal. Every piece of request-derived
  text goes through it (the access log included: ``AccessLogger``).
- ``RedactSecrets``: a handler filter replacing known secrets (the gateway's
  own key, upstream keys, proxy passwords) and any ``Authorization`` /
  ``x-api-key`` value with ``[redacted]`` in every record, tracebacks
  included, whoever logged it: an upstream that echoes the key in an error
  body must not put it in ``chatkit serve --debug`` output.
- ``quiet_accept_errors``: at the file-descriptor limit asyncio reports every
  failed ``accept()`` with a traceback, hundreds a second; one line per
  interval says it all.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

__all__ = [
    "ACCEPT_ERROR_LOG_INTERVAL",
    "AccessLogger",
    "RedactSecrets",
    "escaped_traceback",
    "printable",
    "quiet_accept_errors",
]

logger = logging.getLogger("chatkit.server")

# At most one line per this many seconds about failing accept() calls.
ACCEPT_ERROR_LOG_INTERVAL = 60.0
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REDACTED = "[redacted]"
# Credentials in header form, wherever they show up (a dumped request, a repr).
_CREDENTIAL_HEADERS = re.compile(
    r"(?i)((?:authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key)"
    r"['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",}]+"
)


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters (and ``\\``) escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


def escaped_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as ``logging`` prints it, with every exception message escaped.

    The frames are the gateway's own code; a message may quote an upstream
    body or the request, and its newlines would otherwise forge log lines.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause, context = current.__cause__, current.__context__
        current = cause if cause is not None else None if current.__suppress_context__ else context
    lines: list[str] = []
    for index in range(len(chain) - 1, -1, -1):  # innermost first, like Python
        item = chain[index]
        if item.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_tb(item.__traceback__))
        summary = "".join(traceback.format_exception_only(item)).rstrip("\n")
        lines.append(printable(summary) + "\n")
        if index:
            lines.append(f"\n{_CAUSE if chain[index - 1].__cause__ is item else _CONTEXT}\n\n")
    return "".join(lines).rstrip("\n")


class AccessLogger(AbstractAccessLogger):
    """One line per request, like aiohttp's default format, with every field escaped."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"',
            printable(request.remote or "-"),
            printable(request.method),
            printable(request.raw_path),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            printable(request.headers.get("User-Agent", "-")),
        )


class RedactSecrets(logging.Filter):
    """Replace every known secret (and credential header values) in log records."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a key containing another is replaced whole. Very
        # short values would redact ordinary words; a real key is never that short.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
        self._format_exception = logging.Formatter().formatException

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return _CREDENTIAL_HEADERS.sub(lambda m: m.group(1) + _REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here, so the handler prints this text, not the raw exception.
            record.exc_text = self._format_exception(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def quiet_accept_errors(
    loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
) -> Callable[[], None]:
    """Rate-limit asyncio's reports of ``accept()`` failing for lack of resources.

    asyncio keeps serving (it retries the listening socket after a pause);
    only the reporting changes. Everything else goes to the previous handler.
    Returns a function that restores it.
    """
    previous = loop.get_exception_handler()
    last = [-ACCEPT_ERROR_LOG_INTERVAL]
    suppressed = [0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRORS:
            now = clock()
            if now - last[0] >= ACCEPT_ERROR_LOG_INTERVAL:
                more = f" ({suppressed[0]} more since the last report)" if suppressed[0] else ""
                logger.warning(
                    "cannot accept connections: %s%s; serving open connections, retrying",
                    exc.strerror or exc,
                    more,
                )
                last[0], suppressed[0] = now, 0
            else:
                suppressed[0] += 1
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)
