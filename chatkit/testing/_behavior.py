"""What the fake server does for one request, and what it recorded.

`Behavior` is plain data so that tests can build it, scripts can queue it and a
server in another process can be steered with it (the ``x-fake-behavior`` header
carries a JSON object of its fields).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Behavior",
    "RecordedRequest",
    "apply_override",
    "default_error_type",
    "parse_override",
]

DEFAULT_TEXT = "Hello! How can I help you today?"


@dataclass
class Behavior:
    """What the fake server does for one chat-completions request.

    Every field is optional; the default streams a short greeting. A request
    ending in an assistant message that the server continues (Anthropic's
    prefill; ``continue_final_message`` for the OpenAI fake) gets the rest of
    the answer after that prefill, as a model continuing it would. Fault
    positions (``drop_after``, ``stall_after``, ``malformed_after``,
    ``error_event_after``) count *content chunks*: every chunk between the
    opening role chunk and the finishing chunk (reasoning, content and
    tool-call deltas alike). A position past the last content chunk means
    "after all content, before the finishing chunk".
    """

    text: str = DEFAULT_TEXT
    """The answer, streamed as word pieces ("Hello!", " How", " can", ...)."""
    chunks: list[str] | None = None
    """Explicit content pieces; overrides splitting `text`."""
    repeat: int = 1
    """Stream the content pieces this many times."""
    reasoning: list[str] | None = None
    """Streamed before the content as ``delta.reasoning_content`` pieces."""
    tool_calls: list[dict[str, Any]] | None = None
    """``[{"id": ..., "name": ..., "arguments": "<json text>"}]``, streamed by index."""
    finish_reason: str | None = None
    """Defaults to "stop", or "tool_calls" when `tool_calls` is set."""
    status: int | None = None
    """Answer with this HTTP error status and an OpenAI-shaped error body."""
    error_type: str | None = None
    """``error.type`` in that body; derived from `status` when unset."""
    retry_after: float | None = None
    """Send a ``Retry-After`` header (seconds)."""
    retry_after_ms: int | None = None
    """Send a ``retry-after-ms`` header."""
    reset: bool = False
    """Close the connection without sending any response."""
    drop_after: int | None = None
    """Stream this many content chunks, then close the connection mid-body."""
    stall_after: int | None = None
    """After this many content chunks, go silent for `stall_seconds`, then continue."""
    stall_seconds: float = 3600.0
    trickle: float | None = None
    """During the stall send an SSE comment every `trickle` seconds; without
    `stall_after` the stall starts right after the first (role) chunk."""
    malformed_after: int | None = None
    """After this many content chunks send ``data: {not json`` (then continue)."""
    error_event_after: int | None = None
    """After this many content chunks send an ``{"error": ...}`` event and end."""
    error_event_type: str = "server_error"
    huge_line: int | None = None
    """Add a first content chunk whose SSE data line is about this many bytes."""
    delay: float = 0.0
    """Seconds to wait before each chunk after the first."""
    done: bool = True
    """End the stream with ``data: [DONE]``."""
    headers: dict[str, str] | None = None
    """Extra response headers."""
    resume_echo: int = 0
    """Answering a continuation (a request ending in an assistant prefill that
    the server honours), first repeat this many words of the prefill, as some
    models do; the client has to drop them at the seam."""


_FIELDS = frozenset(f.name for f in dataclasses.fields(Behavior))


def parse_override(raw: str) -> dict[str, Any]:
    """The Behavior fields in the JSON object `raw` (an ``x-fake-behavior`` value).

    Raises ValueError with a message fit for a 400 answer when `raw` is not a
    JSON object of Behavior fields.
    """
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"x-fake-behavior is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("x-fake-behavior must be a JSON object of Behavior fields")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ValueError(f"x-fake-behavior has unknown Behavior fields: {', '.join(unknown)}")
    return fields


def apply_override(behavior: Behavior, raw: str) -> Behavior:
    """Return a copy of `behavior` with the fields of the JSON object `raw` replaced."""
    return dataclasses.replace(behavior, **parse_override(raw))


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def default_error_type(status: int) -> str:
    """The OpenAI ``error.type`` a server would send with `status`."""
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


class _Headers(dict[str, str]):
    """A dict of header values whose lookups ignore case, like HTTP does.

    Keys are stored lower-cased, so iteration shows canonical names and
    ``headers["Authorization"]`` and ``headers["authorization"]`` both work.
    """

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None, /) -> Any:
        return super().get(key.lower(), default)


def make_headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """Build a case-insensitive header dict; repeated headers are joined by ", "."""
    headers = _Headers()
    for name, value in items:
        key = name.lower()
        if dict.__contains__(headers, key):
            value = dict.__getitem__(headers, key) + ", " + value
        dict.__setitem__(headers, key, value)
    return headers


@dataclass
class RecordedRequest:
    """One request the fake server received, as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names are lower-cased; lookups ignore case."""
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.body)
