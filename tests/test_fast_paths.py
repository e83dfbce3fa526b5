"""Property-based differential tests: the SSE decoder's fast paths against its general path.

``SSEDecoder`` has two shortcuts for the shape every OpenAI-style stream has
(events that are one ``data: ...`` line each): ``_all_single_data`` takes a
whole read of such events with one ``str.split`` and no Python code per
event, and ``_feed_events`` recognises single-line events one by one. Both
must answer exactly as the general line parser (``_feed_lines``) does, for
every stream and every way the network may cut it into reads: CR, LF and
CRLF (also split across reads), a BOM, comments, multi-line data, other
fields, blank-line runs, empty data, the size caps.

``GeneralDecoder`` is the decoder with both shortcuts turned off. Hypothesis
generates the streams and the cuts; every read's events, the flush, the
decoder's ``last_event_id`` / ``retry`` and any ``SSEDecodeError`` must be
the same. A third reading, the spec's rules applied line by line
(``reference_events`` in test_hot_path.py), checks LF-only streams.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hot_path import reference_events

from chatkit._errors import SSEDecodeError
from chatkit._sse import SSEDecoder, SSEEvent

pytestmark = pytest.mark.anyio

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class GeneralDecoder(SSEDecoder):
    """The decoder without its fast paths: every line through ``_feed_lines``."""

    __slots__ = ()

    def _all_single_data(self, text: str, events: list[Any], plain: bool) -> bool:
        return False

    def _feed_events(self, text: str, events: list[Any], plain: bool) -> None:
        if text:
            self._feed_lines(text, events, plain)


# -- streams ------------------------------------------------------------------------

# Values without CR or LF: JSON-like text, with what could confuse a prefix
# check ("data: " inside a value, colons, a leading space, non-ASCII).
_value = st.one_of(
    st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(
        [
            '{"choices":[{"delta":{"content":" token"}}]}',
            "data: inner",
            ":",
            " lead",
            "[DONE]",
            "é€😀",
        ]
    ),
)


@st.composite
def _event_lines(draw: st.DrawFn) -> list[str]:
    """One block of lines (without its blank line): mostly a single data line."""
    kind = draw(
        st.sampled_from(
            ["data"] * 8
            + ["multi", "fields", "comment", "nospace", "empty", "unknown", "blank", "bare"]
        )
    )
    value = draw(_value)
    if kind == "data":
        return [f"data: {value}"]
    if kind == "multi":
        return [f"data: {v}" for v in draw(st.lists(_value, min_size=2, max_size=4))]
    if kind == "fields":
        field = draw(st.sampled_from(["event: delta", "event: error", "id: 7", "id", "retry: 250"]))
        lines = [field, f"data: {value}"]
        return lines if draw(st.booleans()) else lines[::-1]
    if kind == "comment":
        return [f": {value}"] + ([f"data: {value}"] if draw(st.booleans()) else [])
    if kind == "nospace":
        return [f"data:{value}"]
    if kind == "empty":
        return ["data: "] if draw(st.booleans()) else ["data:"]
    if kind == "unknown":
        return [f"other: {value}", f"data: {value}"]
    if kind == "blank":
        return [""]  # with its blank line: a run of blank lines
    return ["data"]  # a field name alone: data with an empty value


@st.composite
def streams(draw: st.DrawFn, /, *, terminators: tuple[str, ...] = ("\n", "\r", "\r\n")) -> bytes:
    blocks = draw(st.lists(_event_lines(), max_size=25))
    parts = []
    for lines in blocks:
        for line in [*lines, ""]:
            parts.append(line + draw(st.sampled_from(terminators)))
    if draw(st.integers(0, 9)) == 0:
        # The last event without its blank line, or torn mid-line.
        parts.append(f"data: {draw(_value)}" + draw(st.sampled_from(["", "\n"])))
    bom = "\ufeff" if draw(st.integers(0, 5)) == 0 else ""
    return (bom + "".join(parts)).encode()


@st.composite
def cut_streams(draw: st.DrawFn, /, **kwargs: Any) -> tuple[bytes, list[bytes]]:
    """A stream and the reads it arrives in (cut anywhere, or byte by byte)."""
    stream = draw(streams(**kwargs))
    if stream and draw(st.integers(0, 19)) == 0:
        return stream, [stream[i : i + 1] for i in range(len(stream))]
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    points = [0, *sorted(cuts), len(stream)]
    return stream, [stream[a:b] for a, b in itertools.pairwise(points)]


def _run(decoder: SSEDecoder, reads: list[bytes], plain: bool) -> list[Any]:
    """Every read's events (and the flush), or the error that stopped the stream."""
    out: list[Any] = []
    try:
        for data in reads:
            out.append(decoder.feed_messages(data) if plain else decoder.feed(data))
        out.append(decoder.flush_messages() if plain else decoder.flush())
    except SSEDecodeError as exc:
        out.append(("error", str(exc)))
    out.append((decoder.last_event_id, decoder.retry))
    return out


# -- properties ---------------------------------------------------------------------


@PROPERTY
@given(cut_streams(), st.booleans())
def test_fast_paths_answer_as_the_general_decoder(case: tuple[bytes, list[bytes]], plain: bool):
    _, reads = case
    assert _run(SSEDecoder(), reads, plain) == _run(GeneralDecoder(), reads, plain)


@PROPERTY
@given(cut_streams(), st.integers(1, 60), st.integers(1, 80), st.booleans())
def test_size_caps_hold_on_every_path(
    case: tuple[bytes, list[bytes]], event_cap: int, line_cap: int, plain: bool
):
    _, reads = case
    caps = {"max_event_size": event_cap, "max_line_size": line_cap}
    fast = _run(SSEDecoder(**caps), reads, plain)
    assert fast == _run(GeneralDecoder(**caps), reads, plain)


@PROPERTY
@given(cut_streams(terminators=("\n",)))
def test_lf_streams_follow_the_spec_line_by_line(case: tuple[bytes, list[bytes]]):
    stream, reads = case
    decoder = SSEDecoder()
    got = [event for data in reads for event in decoder.feed(data)]
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    if not text.endswith("\n\n"):
        got += decoder.flush()  # the reference dispatches an unterminated end too
        text += "\n\n"
    assert got == reference_events(text)


@PROPERTY
@given(cut_streams())
def test_plain_strings_are_the_data_of_message_events(case: tuple[bytes, list[bytes]]):
    _, reads = case
    full, plain = _run(SSEDecoder(), reads, False), _run(SSEDecoder(), reads, True)
    assert len(full) == len(plain)
    for events, messages in zip(full[:-1], plain[:-1], strict=True):
        if isinstance(events, tuple):  # the same error
            assert events == messages
            continue
        assert messages == [e.data if e.event == "message" else e for e in events]


# -- the shapes each fast path takes, and where it hands over -------------------------


def test_a_read_of_single_data_events_takes_the_split_path() -> None:
    taken: list[int] = []

    class Spy(SSEDecoder):
        __slots__ = ()

        def _all_single_data(self, text: str, events: list[Any], plain: bool) -> bool:
            handled = super()._all_single_data(text, events, plain)
            taken.append(handled)
            return handled

    decoder = Spy()
    assert decoder.feed_messages(b"data: a\n\ndata: b\n\ndata: c\n") == ["a", "b"]
    assert decoder.feed_messages(b"\ndata: d\n\n") == ["c", "d"]
    assert taken == [True, True]
    # A comment between events: the general path, and the same events.
    assert decoder.feed_messages(b"data: e\n\n: ping\n\ndata: f\n\n") == ["e", "f"]
    assert taken[-1] is False
    assert decoder.feed(b"data: g\n\ndata: \n\ndata: h\n\n") == [SSEEvent("g"), SSEEvent("h")]


def test_the_split_path_enforces_the_event_size_cap() -> None:
    decoder = SSEDecoder(max_event_size=5)
    assert decoder.feed_messages(b"data: 12345\n\ndata: 1\n\n") == ["12345", "1"]
    with pytest.raises(SSEDecodeError, match="max_event_size"):
        decoder.feed_messages(b"data: 1\n\ndata: 123456\n\ndata: 2\n\n")
    assert decoder.feed_messages(b"data: next\n\n") == ["next"]


def test_the_piece_path_enforces_the_event_size_cap() -> None:
    # A comment sends the read past the split path, to the per-event checks.
    decoder = SSEDecoder(max_event_size=5)
    assert decoder.feed(b": ping\n\ndata: 12345\n\n") == [SSEEvent("12345")]
    with pytest.raises(SSEDecodeError, match="max_event_size"):
        decoder.feed_messages(b": ping\n\ndata: 1\n\ndata: 123456\n\n")
    assert decoder.feed_messages(b"data: next\n\n") == ["next"]
