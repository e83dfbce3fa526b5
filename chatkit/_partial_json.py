"""A tolerant parser for a prefix of a JSON document (stdlib only, no I/O).

``parse_partial(text)`` returns the value that the JSON text received so far
stands for, as far as it is certain: open strings, arrays and objects are
closed; what could still change is dropped: an object key still being
written (or one with no value yet), a number (``1`` may become ``12``), a
literal (``tr``) and an escape sequence cut in half. So the value of every
prefix is *consistent* with the complete document: strings are prefixes of
the final strings, arrays and objects hold a prefix of the final items
(their last item possibly itself partial), numbers, booleans and null are
final. ``MISSING`` stands for "nothing certain yet".

Text after the first complete value is ignored (a closing Markdown fence).
Text that cannot be the beginning of any JSON document raises
``PartialJSONError``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["MISSING", "PartialJSONError", "parse_partial"]


class _Missing:
    """Nothing certain yet (the falsy singleton ``MISSING``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

MAX_DEPTH = 200
"""Nesting deeper than this is refused (the parser recurses per level)."""


class PartialJSONError(ValueError):
    """The text is not the beginning of any JSON document."""


class _End(Exception):
    """The text ended inside a value (internal)."""


_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# Characters that may follow a complete number (anything else continues or breaks it).
_AFTER_NUMBER = frozenset(_WS + ",]}")
_PAIR_START = re.compile(r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_LOW_HALF = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def parse_partial(text: str) -> Any:
    """The certain part of the JSON document ``text`` begins; ``MISSING`` if none yet."""
    parser = _Parser(text)
    try:
        return parser.value(0)
    except _End:
        return MISSING


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        self.pos = pos
        if pos >= len(text):
            raise _End

    def _fail(self, what: str) -> PartialJSONError:
        return PartialJSONError(f"not JSON: {what} at offset {self.pos}")

    def value(self, depth: int) -> Any:
        """One value; ``_End`` when the text ends before anything certain of it."""
        if depth > MAX_DEPTH:
            raise self._fail(f"nesting deeper than {MAX_DEPTH}")
        self._skip_ws()
        char = self.text[self.pos]
        if char == "{":
            return self._object(depth)
        if char == "[":
            return self._array(depth)
        if char == '"':
            text, complete = self._string()
            if not complete:
                self.partial = True
            return text
        if char == "-" or char.isdigit():
            return self._number()
        return self._literal()

    # Containers return what they hold so far when the text ends inside them:
    # they set ``self.partial`` so the callers above stop parsing too.
    partial = False

    def _object(self, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        self.pos += 1
        try:
            self._skip_ws()
            if self.text[self.pos] == "}":
                self.pos += 1
                return result
            while True:
                self._skip_ws()
                if self.text[self.pos] != '"':
                    raise self._fail("expected an object key")
                key, complete = self._string()
                if not complete:
                    raise _End  # a key still being written is dropped
                self._skip_ws()
                if self.text[self.pos] != ":":
                    raise self._fail("expected ':'")
                self.pos += 1
                item = self.value(depth + 1)  # _End: a key without a value is dropped
                result[key] = item
                if self.partial:
                    return result
                self._skip_ws()
                char = self.text[self.pos]
                self.pos += 1
                if char == "}":
                    return result
                if char != ",":
                    raise self._fail("expected ',' or '}'")
        except _End:
            self.partial = True
            return result

    def _array(self, depth: int) -> list[Any]:
        result: list[Any] = []
        self.pos += 1
        try:
            self._skip_ws()
            if self.text[self.pos] == "]":
                self.pos += 1
                return result
            while True:
                result.append(self.value(depth + 1))
                if self.partial:
                    return result
                self._skip_ws()
                char = self.text[self.pos]
                self.pos += 1
                if char == "]":
                    return result
                if char != ",":
                    raise self._fail("expected ',' or ']'")
        except _End:
            self.partial = True
            return result

    def _string(self) -> tuple[str, bool]:
        """The string at ``pos`` (its opening quote), and whether it is closed."""
        text = self.text
        pos = self.pos + 1
        pieces: list[str] = []
        start = pos
        while pos < len(text):
            char = text[pos]
            if char == '"':
                pieces.append(text[start:pos])
                self.pos = pos + 1
                return "".join(pieces), True
            if char == "\\":
                pieces.append(text[start:pos])
                decoded, pos = self._escape(pos)
                if decoded is None:  # cut in half: dropped
                    break
                pieces.append(decoded)
                start = pos
                continue
            if char < " ":
                raise self._fail("a control character in a string")
            pos += 1
        else:
            pieces.append(text[start:pos])
        self.pos = len(text)
        return "".join(pieces), False

    def _escape(self, pos: int) -> tuple[str | None, int]:
        text = self.text
        if pos + 1 >= len(text):
            return None, pos
        kind = text[pos + 1]
        if kind in _ESCAPES:
            return _ESCAPES[kind], pos + 2
        if kind != "u":
            self.pos = pos
            raise self._fail("an invalid escape")
        digits = text[pos + 2 : pos + 6]
        if len(digits) < 4:
            if not _HEX4.fullmatch(digits + "0" * (4 - len(digits))):
                self.pos = pos
                raise self._fail("an invalid \\u escape")
            return None, pos
        if not _HEX4.fullmatch(digits):
            self.pos = pos
            raise self._fail("an invalid \\u escape")
        code = int(digits, 16)
        # A surrogate pair (json.dumps writes non-BMP characters so) is joined
        # once both halves have arrived; a high half alone waits for its pair.
        if 0xD800 <= code < 0xDC00:
            rest = text[pos + 6 : pos + 12]
            if len(rest) < 6 and _PAIR_START.fullmatch(rest):
                return None, pos
            if _LOW_HALF.fullmatch(rest):
                joined = 0x10000 + ((code - 0xD800) << 10) + (int(rest[2:], 16) - 0xDC00)
                return chr(joined), pos + 12
        return chr(code), pos + 6

    def _number(self) -> Any:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            if self.text[self.pos :] == "-":
                raise _End
            raise self._fail("an invalid number")
        end = match.end()
        if end >= len(self.text):
            raise _End  # more digits may follow: not certain yet
        if self.text[end] not in _AFTER_NUMBER:
            # "1." or "1e" still being written, or garbage after a number.
            if end + 1 >= len(self.text) and self.text[end] in ".eE":
                raise _End
            if self.text[end] in "eE+-" and _exponent_in_progress(self.text[end:]):
                raise _End
            raise self._fail("an invalid number")
        self.pos = end
        return json.loads(match.group())

    def _literal(self) -> Any:
        rest = self.text[self.pos : self.pos + 5]
        for word, value in _LITERALS.items():
            if rest.startswith(word):
                self.pos += len(word)
                return value
            if word.startswith(rest) and self.pos + len(rest) >= len(self.text):
                raise _End
        raise self._fail("an unexpected character")


def _exponent_in_progress(tail: str) -> bool:
    """``tail`` (after the digits) is an exponent the text has not finished: "e", "e+", "E-"."""
    return re.fullmatch(r"[eE][+-]?", tail) is not None
