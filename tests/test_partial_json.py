"""chatkit._partial_json: every prefix of a JSON document parses to something
consistent with the document, and the values only grow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatkit._partial_json import MAX_DEPTH, MISSING, PartialJSONError, parse_partial

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def consistent(part: Any, whole: Any) -> bool:
    """``part`` (a prefix's value) could still become ``whole``."""
    if part is MISSING:
        return True
    if isinstance(whole, str):
        return isinstance(part, str) and whole.startswith(part)
    if isinstance(whole, list):
        if not isinstance(part, list) or len(part) > len(whole):
            return False
        if not part:
            return True
        if part[:-1] != whole[: len(part) - 1]:
            return False
        return consistent(part[-1], whole[len(part) - 1])
    if isinstance(whole, dict):
        if not isinstance(part, dict):
            return False
        keys = list(part)
        if keys != list(whole)[: len(keys)]:
            return False
        if any(part[key] != whole[key] for key in keys[:-1]):
            return False
        return not keys or consistent(part[keys[-1]], whole[keys[-1]])
    return type(part) is type(whole) and part == whole


def check_every_prefix(text: str, value: Any) -> None:
    previous: Any = MISSING
    for end in range(len(text) + 1):
        part = parse_partial(text[:end])
        assert consistent(part, value), (text[:end], part)
        assert consistent(previous, part), (text[:end], previous, part)  # it only grows
        previous = part
    if isinstance(value, bool) or not isinstance(value, int | float):
        assert parse_partial(text) == value
    else:  # a bare number could still get more digits
        assert parse_partial(text) is MISSING


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_every_prefix_is_consistent_with_the_document(value: Any) -> None:
    check_every_prefix(json.dumps(value), value)


@settings(max_examples=100, deadline=None)
@given(JSON_VALUES)
def test_every_prefix_of_pretty_unicode_json_too(value: Any) -> None:
    check_every_prefix(json.dumps(value, ensure_ascii=False, indent=2), value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", MISSING),
        ("  ", MISSING),
        ("{", {}),
        ('{"na', {}),  # a key being written is dropped
        ('{"name"', {}),
        ('{"name":', {}),  # a key without its value too
        ('{"name": "Pa', {"name": "Pa"}),  # an open string is closed
        ('{"name": "Pa\\', {"name": "Pa"}),  # half an escape is dropped
        ('{"name": "Pa\\u00e', {"name": "Pa"}),
        ('{"name": "Pa\\u00e9', {"name": "Paé"}),
        ('{"n": 12', {}),  # a number may grow: not yet
        ('{"n": 12,', {"n": 12}),
        ('{"n": 1.5e', {}),
        ('{"n": -', {}),
        ('{"ok": tr', {}),  # a literal being written
        ('{"ok": true', {"ok": True}),
        ('[1, [2, {"x": nul', [1, [2, {}]]),
        ('"\\ud83d', ""),  # half a surrogate pair waits for the other half
        ('"\\ud83d\\ude0', ""),
        ('"\\ud83d\\ude00', "\U0001f600"),
        ('{"a": []}\n```', {"a": []}),  # text after the document is ignored
    ],
)
def test_prefixes(text: str, expected: Any) -> None:
    assert parse_partial(text) == expected


@pytest.mark.parametrize(
    "text",
    ["{x", '{"a" 1', "[1 2", '{"a": 1 x', "tx", "01", "1.x", '"\\q"', '"\\u12g4"', '"a\nb"'],
)
def test_what_no_json_document_begins_with_is_an_error(text: str) -> None:
    with pytest.raises(PartialJSONError, match="not JSON"):
        parse_partial(text)


def test_nesting_is_capped() -> None:
    assert parse_partial("[" * MAX_DEPTH) is not MISSING
    with pytest.raises(PartialJSONError, match="nesting"):
        parse_partial("[" * (MAX_DEPTH + 2))


def test_missing_is_a_falsy_singleton() -> None:
    assert not MISSING and repr(MISSING) == "MISSING"
    assert type(MISSING)() is MISSING
