"""Hooks: objects told what each call and attempt did.

Pass them to a client: ``AsyncClient(..., hooks=[LoggingHook()])`` (or
``Client``). A hook has any of these methods, sync or async:

- ``on_call_start(call)``
- ``on_attempt_start(call, attempt, endpoint)``
- ``on_attempt_end(call, attempt)``
- ``on_first_content(call)`` (streams)
- ``on_breaker_change(call, provider, old, new)``
- ``on_call_end(call)``

``call`` is a ``CallInfo``, ``attempt`` a ``chatkit.Attempt``.
``request_headers`` (a ContextVar) adds headers to the upstream requests
sent in the current context: set it in ``on_attempt_start``, which runs in
the task that then sends the attempt. An exception
in a hook is logged and never breaks the call. See docs/observability.md.
"""

from __future__ import annotations

import logging
from typing import Any

from chatkit._attempt import Attempt
from chatkit._hooks import EVENTS, CallInfo, Hook, request_headers

__all__ = ["EVENTS", "CallInfo", "Hook", "LoggingHook", "request_headers"]


class LoggingHook:
    """One structured log line per call and per attempt.

    Each record carries the fields as ``record.chatkit`` (a dict) for JSON
    formatters, and a ``key=value`` message for plain ones. Errors are
    chatkit's own, already scrubbed of keys and proxy passwords. Prompts and
    answers are logged only with ``log_content=True``.
    """

    def __init__(
        self,
        logger: logging.Logger | str = "chatkit.calls",
        level: int = logging.INFO,
        *,
        log_content: bool = False,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.log_content = log_content

    def on_attempt_end(self, call: CallInfo, attempt: Attempt) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        fields: dict[str, Any] = {
            "event": "attempt",
            "call": call.id,
            "attempt": attempt.number,
            "provider": attempt.provider,
            "outcome": attempt.decision,
            "retry": attempt.retry,
            "duration_ms": round(attempt.duration * 1000, 1),
        }
        if attempt.error is not None:
            fields["error"] = type(attempt.error).__name__
            if attempt.status_code is not None:
                fields["status"] = attempt.status_code
            fields["reason"] = attempt.describe()
        if attempt.delay is not None:
            fields["delay_s"] = round(attempt.delay, 3)
        if attempt.hedge:
            fields["hedge"] = True
        self._log(fields)

    def on_call_end(self, call: CallInfo) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        error = call.error
        fields: dict[str, Any] = {
            "event": "call",
            "call": call.id,
            "model": call.model,
            "stream": call.stream,
            "provider": call.provider,
            "outcome": "error" if error is not None else "ok",
            "attempts": len(call.attempts),
            "duration_ms": round((call.duration or 0.0) * 1000, 1),
            "finish_reason": call.finish_reason,
        }
        if call.time_to_first_content is not None:
            fields["ttft_ms"] = round(call.time_to_first_content * 1000, 1)
        if call.usage is not None:
            fields["input_tokens"] = call.usage.prompt_tokens
            fields["output_tokens"] = call.usage.completion_tokens
        if error is not None:
            fields["error"] = type(error).__name__
            fields["reason"] = " ".join(str(error).split())[:300]
        if self.log_content:
            fields["messages"] = call.request.messages
            fields["answer"] = call.text
        self._log(fields)

    def _log(self, fields: dict[str, Any]) -> None:
        message = " ".join(f"{key}={_plain(value)}" for key, value in fields.items())
        self.logger.log(self.level, "chatkit %s", message, extra={"chatkit": fields})


def _plain(value: object) -> str:
    text = str(value)
    if text and " " not in text and '"' not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
