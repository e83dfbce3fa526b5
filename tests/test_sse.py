"""Tests for the sans-I/O SSE decoder and encoder in ``chatkit._sse``."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from chatkit._errors import ResponseDecodeError, SSEDecodeError
from chatkit._sse import SSEDecoder, SSEEvent, encode_comment, encode_event

BOM = b"\xef\xbb\xbf"


def decode(chunks: Iterable[bytes], *, flush: bool = True, **limits: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**limits)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    if flush:
        events.extend(decoder.flush())
    return events


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


# A stream exercising every feature at once, with multi-byte UTF-8 so that
# split points also fall inside characters. {NL} is replaced per terminator.
SAMPLE = (
    "\ufeff: comment at the start{NL}"
    "retry: 3000{NL}"
    "data: first{NL}"
    "{NL}"
    "event: delta{NL}"
    "id: 7{NL}"
    'data: {{"content": "h\u00e9llo \u20ac \U0001f600"}}{NL}'
    "{NL}"
    ": keep-alive{NL}"
    "{NL}"
    "event: ignored because no data{NL}"
    "id: 8{NL}"
    "{NL}"
    "data: line one{NL}"
    "data:line two{NL}"
    "data:  three{NL}"
    "data{NL}"
    "unknown: field{NL}"
    "{NL}"
    "data: [DONE]{NL}"
    "{NL}"
)

SAMPLE_EVENTS = [
    SSEEvent("first", retry=3000),
    SSEEvent('{"content": "h\u00e9llo \u20ac \U0001f600"}', "delta", "7"),
    SSEEvent("line one\nline two\n three\n", id="8"),
    SSEEvent("[DONE]", id="8"),
]

TERMINATORS = {"lf": "\n", "cr": "\r", "crlf": "\r\n"}


def sample(terminator: str) -> bytes:
    return SAMPLE.format(NL=terminator).encode()


def mixed_sample() -> bytes:
    """The sample with the terminators cycling LF, CR, CRLF line by line."""
    lines = SAMPLE.format(NL="\0").split("\0")
    cycle = ["\n", "\r", "\r\n"]
    return "".join(line + cycle[i % 3] for i, line in enumerate(lines[:-1])).encode()


STREAMS = {name: sample(t) for name, t in TERMINATORS.items()} | {"mixed": mixed_sample()}


# --- whole streams and split points ---------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_sample_stream_in_one_read(name: str) -> None:
    assert decode([STREAMS[name]], flush=False) == SAMPLE_EVENTS


@pytest.mark.parametrize("name", STREAMS)
def test_every_split_point_gives_the_same_events(name: str) -> None:
    stream = STREAMS[name]
    for i in range(len(stream) + 1):
        assert decode([stream[:i], stream[i:]], flush=False) == SAMPLE_EVENTS, i


@pytest.mark.parametrize("name", STREAMS)
def test_byte_by_byte_gives_the_same_events(name: str) -> None:
    assert decode(byte_by_byte(STREAMS[name]), flush=False) == SAMPLE_EVENTS


def test_every_pair_of_split_points() -> None:
    stream = b"data: a\r\ndata: \xc3\xa9\r\n\r\nid: 1\rdata: b\r\r"
    expected = [SSEEvent("a\n\u00e9"), SSEEvent("b", id="1")]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            chunks = [stream[:i], stream[i:j], stream[j:]]
            assert decode(chunks, flush=False) == expected, (i, j)


def test_events_are_sse_event_instances() -> None:
    (event,) = decode([b"event: x\nid: 1\nretry: 5\ndata: d\n\n"])
    assert isinstance(event, SSEEvent)
    assert (event.data, event.event, event.id, event.retry) == ("d", "x", "1", 5)
    assert event == SSEEvent("d", "x", "1", 5)
    assert SSEEvent("d") == ("d", "message", None, None)


def test_long_line_over_many_reads() -> None:
    payload = b"x" * 100_000
    stream = b"data: " + payload + b"\n\n"
    chunks = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    assert decode(chunks, flush=False) == [SSEEvent(payload.decode())]


def test_many_events_in_one_read() -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(1000))
    decoder = SSEDecoder()
    decoder.feed(b"\n")  # past the start of the stream: the LF-only fast path
    assert decoder.feed(stream) == [SSEEvent(str(i)) for i in range(1000)]


# --- line terminators -------------------------------------------------------------


@pytest.mark.parametrize("terminator", TERMINATORS.values(), ids=TERMINATORS.keys())
def test_each_terminator(terminator: str) -> None:
    stream = f"data: a{terminator}data: b{terminator}{terminator}data: c{terminator}{terminator}"
    assert decode([stream.encode()], flush=False) == [SSEEvent("a\nb"), SSEEvent("c")]


def test_crlf_split_across_reads_is_one_terminator() -> None:
    # Were the LF read as a blank line, "a" and "b" would be two events.
    assert decode([b"data: a\r", b"\ndata: b\r\n\r\n"], flush=False) == [SSEEvent("a\nb")]


def test_crlf_split_with_lf_alone_in_the_next_read() -> None:
    assert decode([b"data: a\r", b"\n", b"data: b\n\n"], flush=False) == [SSEEvent("a\nb")]


def test_cr_at_end_of_read_then_another_cr_is_a_blank_line() -> None:
    assert decode([b"data: a\r", b"\r"], flush=False) == [SSEEvent("a")]


def test_cr_at_end_of_read_then_a_line() -> None:
    assert decode([b"data: a\r", b"data: b\n\n"], flush=False) == [SSEEvent("a\nb")]


def test_cr_then_crlf_is_two_terminators() -> None:
    assert decode([b"data: a\r\r\n"], flush=False) == [SSEEvent("a")]


def test_empty_read_keeps_the_pending_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent("a\nb")]


def test_cr_inside_a_read_is_not_carried_over() -> None:
    # The CR ends "a" mid-read; the next read's leading LF is a real blank line.
    assert decode([b"data: a\rdata: b", b"\n", b"\n"], flush=False) == [SSEEvent("a\nb")]


# --- fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: x", "x"),
        (b"data:x", "x"),
        (b"data:  x", " x"),
        (b"data: x ", "x "),
        (b"data: a: b", "a: b"),
    ],
)
def test_data_value_parsing(line: bytes, data: str) -> None:
    assert decode([line + b"\n\n"], flush=False) == [SSEEvent(data)]


@pytest.mark.parametrize("line", [b"data:", b"data: ", b"data"])
def test_an_event_with_empty_data_is_not_dispatched(line: bytes) -> None:
    assert decode([line + b"\n\n" + b"data: next\n\n"], flush=False) == [SSEEvent("next")]


def test_multi_line_data_is_joined_with_lf() -> None:
    stream = b"data: a\ndata:\ndata: b\ndata\n\n"
    assert decode([stream], flush=False) == [SSEEvent("a\n\nb\n")]


def test_comments_are_ignored() -> None:
    stream = b": ping\n:\ndata: a\n:: not data\ndata: b\n\n: bye\n\n"
    assert decode([stream], flush=False) == [SSEEvent("a\nb")]


def test_unknown_and_wrong_case_fields_are_ignored() -> None:
    stream = b"Data: no\nfoo: bar\nbaz\nEVENT: no\ndata: yes\n\n"
    assert decode([stream], flush=False) == [SSEEvent("yes")]


def test_event_type_applies_to_one_event() -> None:
    stream = b"event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\nevent\ndata: 4\n\n"
    assert decode([stream], flush=False) == [
        SSEEvent("1", "a"),
        SSEEvent("2"),
        SSEEvent("3"),
        SSEEvent("4"),
    ]


def test_event_type_of_a_block_without_data_does_not_leak() -> None:
    assert decode([b"event: a\n\ndata: 1\n\n"], flush=False) == [SSEEvent("1")]


def test_last_event_id_persists_and_can_be_reset() -> None:
    stream = b"data: 1\n\nid: a\ndata: 2\n\ndata: 3\n\nid\ndata: 4\n\nid: b\n\ndata: 5\n\n"
    decoder = SSEDecoder()
    assert decoder.last_event_id is None
    assert decoder.feed(stream) == [
        SSEEvent("1"),
        SSEEvent("2", id="a"),
        SSEEvent("3", id="a"),
        SSEEvent("4", id=""),
        SSEEvent("5", id="b"),
    ]
    assert decoder.last_event_id == "b"


def test_id_containing_nul_is_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    assert decode([stream], flush=False) == [SSEEvent("a", id="1"), SSEEvent("b", id="1")]


def test_retry_sets_reconnection_time() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None
    events = decoder.feed(b"retry: 1500\ndata: a\n\ndata: b\n\nretry: 20\n\n")
    assert events == [SSEEvent("a", retry=1500), SSEEvent("b")]
    assert decoder.retry == 20  # also from a block that dispatched nothing


@pytest.mark.parametrize(
    "value",
    [b"", b"1.5", b"-1", b" 100", b"10s", b"\xd9\xa1\xd9\xa2", b"1" * 19, b"1" * 5000],
)
def test_invalid_retry_is_ignored(value: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 7\n\nretry: " + value + b"\ndata: a\n\n") == [SSEEvent("a")]
    assert decoder.retry == 7


def test_retry_with_18_digits_is_accepted() -> None:
    assert decode([b"retry: " + b"9" * 18 + b"\ndata: a\n\n"]) == [SSEEvent("a", retry=10**18 - 1)]


@pytest.mark.parametrize(
    "stream",
    [b"\n\n\n", b"event: x\n\n", b"id: 1\n\n", b"retry: 1\n\n", b": c\n\n", b"foo: bar\n\n"],
)
def test_block_without_data_is_not_dispatched(stream: bytes) -> None:
    assert decode([stream]) == []


def test_done_is_an_ordinary_event() -> None:
    assert decode([b"data: {}\n\ndata: [DONE]\n\n"]) == [SSEEvent("{}"), SSEEvent("[DONE]")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode([b"data: a\xffb\xe2\x82\n\n"]) == [SSEEvent("a\ufffdb\ufffd")]


# --- byte order mark ----------------------------------------------------------------


@pytest.mark.parametrize("cut", range(len(BOM) + 1))
def test_bom_is_stripped_even_when_split(cut: int) -> None:
    stream = BOM + b"data: a\n\n"
    assert decode([stream[:cut], stream[cut:]], flush=False) == [SSEEvent("a")]


def test_only_one_bom_is_stripped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", unknown.
    assert decode([BOM + BOM + b"data: a\n\ndata: b\n\n"]) == [SSEEvent("b")]


def test_bom_after_the_start_is_data() -> None:
    assert decode([b"data: a\n", BOM + b"data: b\n\n"]) == [SSEEvent("a")]
    assert decode([b"data: " + BOM + b"x\n\n"]) == [SSEEvent("\ufeffx")]


def test_partial_bom_is_not_stripped() -> None:
    # b"\xef\xbb" is no BOM: it decodes to U+FFFD and spoils the field name.
    assert decode([b"\xef\xbb", b"data: a\n\ndata: b\n\n"]) == [SSEEvent("b")]


def test_bom_at_the_start_of_an_unterminated_last_line() -> None:
    assert decode([BOM, b"data: a"]) == [SSEEvent("a")]


# --- size caps -----------------------------------------------------------------------


@pytest.mark.parametrize("terminator", [b"\n", b"\r", b"\r\n"])
def test_line_at_the_cap_is_accepted(terminator: bytes) -> None:
    line = b"data: " + b"x" * 4
    stream = line + terminator + terminator
    assert decode([stream], max_line_size=len(line)) == [SSEEvent("xxxx")]


@pytest.mark.parametrize("terminator", [b"\n", b"\r", b"\r\n"])
def test_terminated_line_over_the_cap_raises(terminator: bytes) -> None:
    line = b"data: " + b"x" * 5
    decoder = SSEDecoder(max_line_size=len(line) - 1)
    decoder.feed(b"\n")
    with pytest.raises(SSEDecodeError, match=r"max_line_size \(10 bytes\)"):
        decoder.feed(line + terminator + terminator)


def test_line_over_the_cap_among_short_lines_raises() -> None:
    stream = b"data: a\n\n" * 3 + b"data: " + b"x" * 20 + b"\n\n"
    with pytest.raises(SSEDecodeError, match="max_line_size"):
        decode([stream], max_line_size=16)


def test_many_short_lines_in_a_read_larger_than_the_line_cap() -> None:
    stream = b"data: a\n\n" * 10
    assert decode([stream], max_line_size=8) == [SSEEvent("a")] * 10


def test_pending_line_over_the_cap_raises_in_one_read() -> None:
    decoder = SSEDecoder(max_line_size=10)
    with pytest.raises(SSEDecodeError, match=r"max_line_size \(10 bytes\)"):
        decoder.feed(b"data: " + b"x" * 5)


def test_pending_line_over_the_cap_raises_across_reads() -> None:
    decoder = SSEDecoder(max_line_size=10)
    for _ in range(5):
        assert decoder.feed(b"xx") == []
    with pytest.raises(SSEDecodeError, match="max_line_size"):
        decoder.feed(b"x")


def test_pending_tail_over_the_cap_after_a_complete_line_raises() -> None:
    decoder = SSEDecoder(max_line_size=10)
    with pytest.raises(SSEDecodeError, match="max_line_size"):
        decoder.feed(b"data: a\n" + b"x" * 11)


def test_pending_line_at_the_cap_is_accepted() -> None:
    decoder = SSEDecoder(max_line_size=10)
    decoder.feed(b"\n")
    assert decoder.feed(b"data: xxxx") == []
    assert decoder.feed(b"\n\n") == [SSEEvent("xxxx")]


def test_event_at_the_cap_is_accepted() -> None:
    stream = b"data: 1234\ndata: 5\n\n"  # data "1234\n5" is 6 characters
    assert decode([stream], max_event_size=6) == [SSEEvent("1234\n5")]


def test_event_over_the_cap_raises() -> None:
    with pytest.raises(SSEDecodeError, match=r"max_event_size \(5 characters\)"):
        decode([b"data: 1234\ndata: 5\n\n"], max_event_size=5)


def test_pending_event_over_the_cap_raises_before_its_blank_line() -> None:
    decoder = SSEDecoder(max_event_size=10)
    assert decoder.feed(b"data: 12345\n") == []
    with pytest.raises(SSEDecodeError, match="max_event_size"):
        decoder.feed(b"data: 12345\n")


def test_event_cap_is_per_event() -> None:
    stream = b"data: 12345\n\n" * 5
    assert decode([stream], max_event_size=5) == [SSEEvent("12345")] * 5


def test_decoder_starts_afresh_after_a_size_error() -> None:
    decoder = SSEDecoder(max_line_size=10)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"x" * 11)
    assert decoder.feed(BOM + b"data: ok\n\n") == [SSEEvent("ok")]


def test_decoder_drops_the_oversized_event() -> None:
    decoder = SSEDecoder(max_event_size=10)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: 12345\ndata: 12345\n")
    assert decoder.feed(b"data: ok\n\n") == [SSEEvent("ok")]


def test_size_error_is_a_response_decode_error() -> None:
    assert issubclass(SSEDecodeError, ResponseDecodeError)


@pytest.mark.parametrize("limits", [{"max_line_size": 0}, {"max_event_size": -1}])
def test_caps_must_be_positive(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(**limits)


# --- flush ---------------------------------------------------------------------------


def test_flush_with_nothing_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.flush() == []
    assert decoder.feed(b"data: a\n\n") == [SSEEvent("a")]
    assert decoder.flush() == []


def test_flush_dispatches_an_event_missing_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: e\ndata: a\n") == []
    assert decoder.flush() == [SSEEvent("a", "e")]
    assert decoder.flush() == []


def test_flush_decodes_a_final_unterminated_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.flush() == [SSEEvent("a\nb")]


def test_flush_after_a_trailing_cr() -> None:
    assert decode([b"data: a\r"]) == [SSEEvent("a")]


def test_flush_does_not_dispatch_a_block_without_data() -> None:
    assert decode([b"event: e\nid: 1"]) == []


def test_flush_resets_the_stream_but_keeps_id_and_retry() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\nid: 5\nretry: 100\nevent: half\ndata: lost?\r")
    assert decoder.flush() == [SSEEvent("lost?", "half", "5", 100)]
    assert (decoder.last_event_id, decoder.retry) == ("5", 100)
    # A new stream, whose BOM is stripped again.
    assert decoder.feed(BOM + b"data: b\n\n") == [SSEEvent("b", id="5")]


# --- encoder -------------------------------------------------------------------------


def test_encode_event_layout() -> None:
    assert encode_event("hi") == b"data: hi\n\n"
    assert encode_event("a\nb", event="e", id="1", retry=50) == (
        b"event: e\nid: 1\nretry: 50\ndata: a\ndata: b\n\n"
    )
    assert encode_event("") == b"data:\n\n"
    assert encode_event("x", event="", id="") == b"event:\nid:\ndata: x\n\n"


def test_encode_event_treats_cr_and_crlf_in_data_as_line_breaks() -> None:
    assert encode_event("a\r\nb\rc\n") == b"data: a\ndata: b\ndata: c\ndata:\n\n"


def test_encode_event_is_utf8() -> None:
    assert encode_event("\u20ac") == b"data: \xe2\x82\xac\n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"id": "1\n"},
        {"id": "\r1"},
        {"id": "1\x002"},
        {"retry": -1},
    ],
)
def test_encode_event_rejects_what_cannot_round_trip(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)  # type: ignore[arg-type]


def test_encode_comment() -> None:
    assert encode_comment() == b":\n"
    assert encode_comment("ping") == b": ping\n"
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n"


def test_comments_decode_to_nothing() -> None:
    stream = encode_comment("ping") + encode_event("a") + encode_comment("x\ndata: no")
    assert decode([stream]) == [SSEEvent("a")]


ROUND_TRIP: list[tuple[str, str | None, str | None, int | None]] = [
    ("plain", None, None, None),
    ("", None, None, None),
    ("multi\nline\n\ndata", "chunk", "1", None),
    ("  leading spaces", " spaced event", "", 0),
    ("trailing newline\n", None, None, 2500),
    ('{"content": "\u00e9\u20ac\U0001f600"}', "delta", "id with spaces", None),
    ("[DONE]", None, None, None),
]


def round_trip_expected() -> list[SSEEvent]:
    expected = []
    last_id = None
    for data, event, id_, retry in ROUND_TRIP:
        last_id = id_ if id_ is not None else last_id
        if data:  # an empty event is not dispatched
            expected.append(SSEEvent(data, event or "message", last_id, retry))
    return expected


def test_encode_decode_round_trip_at_every_split_point() -> None:
    stream = b"".join(
        encode_event(data, event=event, id=id_, retry=retry)
        for data, event, id_, retry in ROUND_TRIP
    )
    expected = round_trip_expected()
    assert decode([stream], flush=False) == expected
    assert decode(byte_by_byte(stream), flush=False) == expected
    for i in range(len(stream) + 1):
        assert decode([stream[:i], stream[i:]], flush=False) == expected, i
