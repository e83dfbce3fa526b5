"""Sans-I/O Server-Sent Events decoder and encoder.

The decoder follows the WHATWG ``text/event-stream`` rules: bytes go in as they
arrive from the network, complete events come out; it never reads or blocks.
Lines end in CR, LF or CRLF (a CRLF may be split across two reads), one leading
UTF-8 BOM is ignored, lines starting with ``:`` are comments, and an event is
dispatched at a blank line only if its data is not empty (docs/architecture.md: no event
for empty data, where WHATWG would dispatch ``data:`` as ``""``).
``[DONE]`` is an ordinary event; recognising it is the caller's job.

Memory is bounded: a line longer than ``max_line_size`` bytes (even one whose
terminator has not arrived yet) or an event whose data grows past
``max_event_size`` characters raises :class:`~chatkit._errors.SSEDecodeError`.
After that error the stream is broken and the decoder's buffers are dropped.

Decoding sits on the per-chunk hot path, so the decoder works on whole reads
with ``bytes.rfind``/``str.split`` and touches Python code only once per line;
a read whose events are all single ``data:`` lines (every OpenAI-style
stream) runs no Python code per event at all (``_all_single_data``).
Lines that cannot change anything (comments, blank lines after the one that
ends an event) are dropped in C (``re.sub``) before that: a hostile upstream
sending megabytes of blank lines or keep-alive comments costs no Python loop.
Everything is linear in the input; nothing rescans what it has already seen.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from chatkit._errors import SSEDecodeError

__all__ = ["SSEDecoder", "SSEEvent", "encode_comment", "encode_event"]

_BOM = b"\xef\xbb\xbf"
_DEFAULT_LIMIT = 16 * 1024 * 1024
# Comment lines: ignored by the spec, so removing them changes nothing.
_COMMENTS = re.compile(r"^:[^\n]*\n", re.MULTILINE)
# A blank line after a blank line: the first dispatched (or found nothing) and
# reset the event type and retry, so the rest are no-ops.
_BLANK_RUNS = re.compile(r"\n\n\n+")


class SSEEvent(NamedTuple):
    """One dispatched event.

    ``id`` is the last event ID in force when the event was dispatched (per the
    spec it persists from one event to the next); ``None`` means no ``id`` field
    has been seen. ``retry`` is set only on the event whose own block carried a
    valid ``retry`` field.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


# NamedTuple's generated __new__ is a Python-level call; the C constructor is
# several times cheaper and this runs once per event.
_new_event = tuple.__new__


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder: :meth:`feed` bytes, get events.

    ``max_line_size`` caps one line in bytes (without its terminator);
    ``max_event_size`` caps one event's ``data`` in characters.
    """

    __slots__ = (
        "_after_cr",
        "_at_start",
        "_data",
        "_data_size",
        "_event_retry",
        "_event_type",
        "_last_event_id",
        "_max_event_size",
        "_max_line_size",
        "_pending",
        "_pending_size",
        "_retry",
    )

    def __init__(
        self,
        *,
        max_line_size: int = _DEFAULT_LIMIT,
        max_event_size: int = _DEFAULT_LIMIT,
    ) -> None:
        if max_line_size < 1 or max_event_size < 1:
            raise ValueError("max_line_size and max_event_size must be positive")
        self._max_line_size = max_line_size
        self._max_event_size = max_event_size
        # Both belong to the event source, not to one stream: they survive
        # flush() so a reconnect can send Last-Event-ID and honour retry.
        self._last_event_id: str | None = None
        self._retry: int | None = None
        self._reset()

    @property
    def last_event_id(self) -> str | None:
        """The last ``id`` field seen, for a reconnect's ``Last-Event-ID`` header."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The last valid ``retry`` field seen (milliseconds), even outside an event."""
        return self._retry

    def _reset(self) -> None:
        # Bytes of the current unterminated line; a list so that a long line
        # arriving in many reads is joined once, not copied on every read.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._after_cr = False
        self._at_start = True
        self._data: list[str] = []
        self._data_size = 0
        self._event_type = ""
        self._event_retry: int | None = None

    def _line_too_long(self) -> SSEDecodeError:
        self._reset()
        return SSEDecodeError(f"SSE line longer than max_line_size ({self._max_line_size} bytes)")

    def _event_too_long(self) -> SSEDecodeError:
        self._reset()
        return SSEDecodeError(
            f"SSE event data longer than max_event_size ({self._max_event_size} characters)"
        )

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode the next read of the stream and return the events it completed."""
        events: list[SSEEvent] = self._decode(data, False)
        return events

    def feed_messages(self, data: bytes) -> list[str | SSEEvent]:
        """Like :meth:`feed`, but an event of type ``message`` comes back as its data alone.

        For consumers that only read ``data`` (an OpenAI chunk stream): a long
        read then costs one untracked ``str`` per event instead of a tuple the
        garbage collector has to look at. Events of other types (``event:
        error``) still come back as :class:`SSEEvent`; ``last_event_id`` and
        ``retry`` are kept on the decoder as usual.
        """
        events: list[str | SSEEvent] = self._decode(data, True)
        return events

    def _decode(self, data: bytes, plain: bool) -> list[Any]:
        if (
            data[-1:] == b"\n"
            and not self._pending
            and not self._after_cr
            and not self._at_start
            and b"\r" not in data
        ):
            block = data  # the common case: whole LF-terminated lines
        else:
            block = self._complete_lines(data)
            if not block:
                return []
        # Only a block longer than the cap can hold a line longer than the cap.
        if len(block) > self._max_line_size and (
            max(map(len, block.split(b"\n"))) > self._max_line_size
        ):
            raise self._line_too_long()
        # LF never occurs inside a UTF-8 sequence, so decoding whole lines at
        # once cannot split a character.
        text = block.decode("utf-8", "replace")
        events: list[Any] = []
        half_read = self._data or self._event_type or self._event_retry is not None
        if half_read and text[:1] == "\n":
            # The blank line that ends the event the last read left half read
            # (reads rarely end between events).
            self._feed_lines("\n", events, plain)
            text = text[1:]
            half_read = False
        if not half_read and text[:6] == "data: " and self._all_single_data(text, events, plain):
            return events
        # Any other shape: drop what cannot change anything, then parse.
        if text[:1] == ":" or "\n:" in text:
            text = _COMMENTS.sub("", text)
        if "\n\n\n" in text:
            text = _BLANK_RUNS.sub("\n\n", text)
        if not text:
            return events
        if half_read:
            # An event is half read: finish it line by line, up to its blank line.
            if text[:1] == "\n":
                cut = 1
            else:
                blank = text.find("\n\n")
                if blank < 0:
                    self._feed_lines(text, events, plain)
                    return events
                cut = blank + 2
            self._feed_lines(text[:cut], events, plain)
            text = text[cut:]
        self._feed_events(text, events, plain)
        return events

    def _feed_events(self, text: str, events: list[Any], plain: bool) -> None:
        """Decode LF-terminated lines that start at an event boundary.

        The fast path: an event that is a single ``data: ...`` line costs a
        split and a prefix check, not a pass through the line parser. Anything
        else (several lines, other fields, comments, extra blank lines) hands
        the rest of the text to ``_feed_lines``.
        """
        # Here no event is half read, so leading blank lines are no-ops.
        pieces = text.lstrip("\n").split("\n\n")
        # After the last blank line: an unfinished event's lines, or "".
        rest = pieces.pop()
        last_id = self._last_event_id
        limit = self._max_event_size
        for index, piece in enumerate(pieces):
            if piece[:6] == "data: " and "\n" not in piece:
                value = piece[6:]
                if value:  # an empty "data: " is no event (see the module docstring)
                    if len(value) > limit:
                        raise self._event_too_long()
                    events.append(
                        value if plain else _new_event(SSEEvent, (value, "message", last_id, None))
                    )
            else:
                pieces.append(rest)
                rest = "\n\n".join(pieces[index:])
                break
        if rest:
            self._feed_lines(rest, events, plain)

    def _all_single_data(self, text: str, events: list[Any], plain: bool) -> bool:
        """The fastest path: every complete event in ``text`` is one ``data: ...`` line.

        ``text`` is LF-terminated lines (no CR) starting with ``data: `` at an
        event boundary. Splitting its complete events at ``\\n\\ndata: ``
        gives their data when no piece holds another LF, that is, when no
        event has another line (a comment, a field, a blank line more):
        checked in C on the joined pieces. No Python code runs per event,
        and the scans for comments and blank runs are skipped. Returns False,
        having done nothing, for any other shape.
        """
        cut = text.rfind("\n\n") + 2
        if cut < 2:
            return False
        values = text[6 : cut - 2].split("\n\ndata: ")
        if "\n" in "".join(values):
            return False  # some event has other lines
        if cut > self._max_event_size and max(map(len, values)) > self._max_event_size:
            raise self._event_too_long()
        if "" in values:  # an empty "data: " is no event (see the module docstring)
            values = [value for value in values if value]
        if plain:
            events.extend(values)
        else:
            last_id = self._last_event_id
            events.extend(_new_event(SSEEvent, (v, "message", last_id, None)) for v in values)
        if cut < len(text):
            self._feed_lines(text[cut:], events, plain)  # an unfinished last event
        return True

    def _feed_lines(self, text: str, events: list[Any], plain: bool) -> None:
        """The general parser: LF-terminated lines, field by field."""
        lines = text.split("\n")
        lines.pop()  # always "": the text ends with a line terminator
        # State lives in locals for the loop and is written back once.
        data_lines = self._data
        size = self._data_size
        event_type = self._event_type
        last_id = self._last_event_id
        retry = self._event_retry
        # size counts an LF after every data line, like the spec's data buffer.
        limit = self._max_event_size + 1
        for line in lines:
            if not line:
                if data_lines:
                    joined = "\n".join(data_lines)
                    # Unlike the WHATWG rule, an event whose data is empty
                    # (a bare "data:") is dropped: no consumer can parse it.
                    if joined:
                        kind = event_type or "message"
                        if plain and kind == "message":
                            events.append(joined)
                        else:
                            events.append(_new_event(SSEEvent, (joined, kind, last_id, retry)))
                    data_lines = []
                    size = 0
                event_type = ""
                retry = None
                continue
            if line.startswith("data: "):  # saves a partition on most lines
                name = "data"
                value = line[6:]
            else:
                # A line without ":" is a field name with an empty value, which
                # partition gives for free; a comment is the unknown field "".
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
            if name == "data":
                size += len(value) + 1
                if size > limit:
                    raise self._event_too_long()
                data_lines.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                if "\0" not in value:
                    last_id = value
            # More than 18 digits is no sane delay, and a cap keeps int() from
            # quadratic work (or its digit limit) on a huge line.
            elif name == "retry" and len(value) <= 18 and value.isascii() and value.isdigit():
                retry = self._retry = int(value)
        self._data = data_lines
        self._data_size = size
        self._event_type = event_type
        self._last_event_id = last_id
        self._event_retry = retry

    def _complete_lines(self, data: bytes) -> bytes:
        """Buffer ``data``; return the complete lines so far, LF-terminated."""
        if self._after_cr and data:
            # The previous read ended in CR: an LF now is the rest of that CRLF,
            # not a blank line that would dispatch an event early.
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if end < 0:
            if data:
                self._pending.append(data)
                self._pending_size += len(data)
                if self._pending_size > self._max_line_size:
                    raise self._line_too_long()
            return b""
        block = data[: end + 1]
        rest = data[end + 1 :]
        if self._pending:
            self._pending.append(block)
            block = b"".join(self._pending)
        self._pending = [rest] if rest else []
        self._pending_size = len(rest)
        if self._pending_size > self._max_line_size:
            raise self._line_too_long()
        if self._at_start:
            self._at_start = False
            if block.startswith(_BOM):
                block = block[3:]
        if b"\r" in block:
            self._after_cr = not rest and block.endswith(b"\r")
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return block

    def flush(self) -> list[SSEEvent]:
        """End of stream: return what is still pending, then reset for a new stream.

        Lenient where the spec discards: a final unterminated line is decoded
        and an event whose data lines arrived is dispatched without its blank
        line (servers that omit the last line break still work). So what this
        returns may be torn: a caller whose body ended without its end marker
        must treat a flushed event that does not parse as a truncated stream
        (a connection failure), not as a malformed one. ``last_event_id`` and
        ``retry`` are kept for a reconnect.
        """
        events: list[SSEEvent] = self._flush(False)
        return events

    def flush_messages(self) -> list[str | SSEEvent]:
        """:meth:`flush` in the form of :meth:`feed_messages`."""
        events: list[str | SSEEvent] = self._flush(True)
        return events

    def _flush(self, plain: bool) -> list[Any]:
        # Two LFs: one ends a final unterminated line, the other dispatches.
        # (After a trailing CR the first is swallowed as its CRLF tail.)
        try:
            return self._decode(b"\n\n", plain)
        finally:
            self._reset()


def _lines(text: str) -> list[str]:
    """Split on the same terminators the decoder accepts."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _field(name: str, value: str) -> str:
    return f"{name}: {value}\n" if value else f"{name}:\n"


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")
    return _field(name, value)


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event; multi-line ``data`` becomes several ``data:`` lines.

    CR and CRLF in ``data`` are line breaks, as the decoder reads them, so they
    come back as LF. ``event`` and ``id`` must be single lines; ``id`` must not
    contain NUL (a decoder would ignore it) and ``retry`` must not be negative.
    """
    parts: list[str] = []
    if event is not None:
        parts.append(_single_line("event", event))
    if id is not None:
        if "\0" in id:
            raise ValueError(f"SSE id must not contain NUL: {id!r}")
        parts.append(_single_line("id", id))
    if retry is not None:
        if retry < 0:
            raise ValueError(f"SSE retry must not be negative: {retry}")
        parts.append(f"retry: {retry:d}\n")
    parts.extend(_field("data", line) for line in _lines(data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (``: text``), e.g. a keep-alive; decoders ignore it."""
    return "".join(_field("", line) for line in _lines(text)).encode()
