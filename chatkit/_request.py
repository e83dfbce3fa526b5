"""The validated request a provider receives, and the checks that build it.

Everything here runs before any I/O. Errors name the bad field. The caller's
objects are copied, never mutated.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from chatkit._config import Timeout, check_header_value, coerce_timeout
from chatkit._errors import InvalidRequestError

__all__ = [
    "OPENAI_PARAMS",
    "ChatRequest",
    "build_request",
    "check_headers",
    "copy_json",
    "field_error",
    "strict_json_schema",
    "validate_messages",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})

# Chat Completions parameters passed through to the wire, with the types they accept.
_NUMBER = (int, float)
# Read-only: it is public, and a caller adding to it would change what every client accepts.
OPENAI_PARAMS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "temperature": _NUMBER,
        "top_p": _NUMBER,
        "max_tokens": (int,),
        "max_completion_tokens": (int,),
        "stop": (str, list, tuple),
        "n": (int,),
        "seed": (int,),
        "tools": (list, tuple),
        "tool_choice": (str, dict),
        "parallel_tool_calls": (bool,),
        "response_format": (dict,),
        "stream_options": (dict,),
        "logprobs": (bool,),
        "top_logprobs": (int,),
        "user": (str,),
        "presence_penalty": _NUMBER,
        "frequency_penalty": _NUMBER,
        "logit_bias": (dict,),
        "reasoning_effort": (str,),
        "metadata": (dict,),
        "modalities": (list, tuple),
        "prediction": (dict,),
        "service_tier": (str,),
        "store": (bool,),
        "verbosity": (str,),
        "web_search_options": (dict,),
        "audio": (dict,),
        "prompt_cache_key": (str,),
        "safety_identifier": (str,),
    }
)


@dataclass(frozen=True)
class ChatRequest:
    """One chat call, validated. ``params`` holds only the parameters the caller set."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)
    extra_query: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: Timeout | None = None

    def text_prompt(self) -> str:
        """All text of the conversation, for providers and logs that want a plain view."""
        pieces: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                pieces.append(content)
            elif isinstance(content, list):
                pieces.extend(p.get("text", "") for p in content if p.get("type") == "text")
        return "\n".join(pieces)


def field_error(message: str, field: str) -> InvalidRequestError:
    """An ``InvalidRequestError`` naming ``field`` (also used by the providers' request checks)."""
    return InvalidRequestError(f"{field}: {message}", field=field)


def _check_parts(parts: Sequence[Any], where: str) -> None:
    if not parts:
        raise field_error("a content list must not be empty", where)
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise field_error(f"a content part must be a dict, got {type(part).__name__}", here)
        kind = part.get("type")
        # A str check first: a list or dict cannot even be looked up in a set.
        if not isinstance(kind, str) or kind not in PART_TYPES:
            raise field_error(
                f"unknown content part type {kind!r}; use one of {sorted(PART_TYPES)}",
                f"{here}.type",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise field_error("a text part needs a string 'text'", f"{here}.text")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url:
                raise field_error("an image_url part needs image_url.url (a URL or data URL)", here)


def _check_content(message: Mapping[str, Any], role: str, where: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        if role == "assistant" and "content" in message:
            return
        raise field_error(f"a {role} message needs 'content'", f"{where}.content")
    if isinstance(content, str):
        return
    if isinstance(content, list | tuple):
        _check_parts(content, f"{where}.content")
        return
    raise field_error(
        f"content must be a string or a list of content parts, got {type(content).__name__}",
        f"{where}.content",
    )


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list | tuple):
        raise field_error("tool_calls must be a list", where)
    for j, call in enumerate(calls):
        here = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise field_error("a tool call needs function.name", here)
        if not isinstance(call.get("id"), str):
            raise field_error("a tool call needs a string 'id'", f"{here}.id")


# The integers every JSON peer reads exactly: a signed 64-bit value (OpenAI's
# ``seed`` range). Larger ones are sent as digits some servers reject or
# round, so they are refused here instead.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)


class _NotJSON(Exception):
    """A value that cannot be sent as JSON; ``path`` grows as the walk unwinds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str | int] = []


def copy_json(value: Any, field_name: str = "request") -> Any:
    """Check that ``value`` is JSON that every peer reads, and return a deep copy of it.

    The one checker of request data: messages, parameters, tools and
    ``extra_body`` all pass through here before any I/O. Accepted: dicts
    with string (or integer) keys, lists, tuples, strings that encode as
    UTF-8 (no lone surrogates), finite floats, integers within a signed
    64-bit range, bools and None. Anything else (bytes, sets, NaN, Infinity,
    arbitrary objects) is an ``InvalidRequestError`` naming the exact place,
    such as ``messages[1].content[0].text`` or ``extra_body.options``.

    Plain dicts, lists and tuples are rebuilt and immutable scalars shared,
    several times faster than ``copy.deepcopy``; subclasses (an
    ``OrderedDict``) are checked, then deep-copied so their type is kept.
    Data that refers to itself (or nests absurdly deep) cannot be sent
    either.
    """
    try:
        return _copy_json(value)
    except _NotJSON as exc:
        where = field_name + "".join(
            f"[{step}]" if isinstance(step, int) else f".{step}" for step in reversed(exc.path)
        )
        raise field_error(exc.message, where) from None
    except RecursionError:
        raise field_error(
            "refers to itself (or nests too deeply) and cannot be sent as JSON", field_name
        ) from None


def _copy_json(value: Any) -> Any:
    kind = type(value)
    # Exact types first: this runs for every value of every request.
    if kind is str:
        if not value.isascii():
            _check_text(value)
        return value
    if kind is dict:
        copied: dict[Any, Any] = {}
        for key, item in value.items():
            try:
                _check_key(key)
                copied[key] = _copy_json(item)
            except _NotJSON as exc:
                exc.path.append(key if type(key) is str else str(key))
                raise
        return copied
    if kind is list or kind is tuple:
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_copy_json(item))
            except _NotJSON as exc:
                exc.path.append(index)
                raise
        return items if kind is list else tuple(items)
    if value is None or kind is bool:
        return value
    if kind is int:
        if not MIN_INT <= value <= MAX_INT:
            raise _NotJSON(f"integer {value} is beyond what JSON peers read exactly (64-bit)")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _NotJSON(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, bool | int | float | str | dict | list | tuple):
        # A subclass (IntEnum, StrEnum, OrderedDict, a named tuple): check its
        # contents as the plain type, then copy it whole to keep its type.
        _copy_json(_as_plain(value))
        return copy.deepcopy(value)
    raise _NotJSON(f"{kind.__name__} cannot be sent as JSON")


def _as_plain(value: Any) -> Any:
    plain: Any
    for plain in (bool, int, float, str, dict, list, tuple):
        if isinstance(value, plain):
            return plain(value)
    raise AssertionError(value)  # pragma: no cover - the caller checked the types


def _check_key(key: Any) -> None:
    if type(key) is str:
        if not key.isascii():
            _check_text(key)
    elif type(key) is not int:  # int keys are sent as strings ({token_id: bias})
        raise _NotJSON(f"a {type(key).__name__} key cannot be sent as JSON; use strings")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _NotJSON("text with a lone surrogate cannot be sent as UTF-8") from None


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check a messages list and return a deep copy the caller cannot see change."""
    if isinstance(messages, str | bytes) or not isinstance(messages, list | tuple):
        raise field_error(
            f"must be a list of message dicts, got {type(messages).__name__}", "messages"
        )
    if not messages:
        raise field_error("must contain at least one message", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise field_error(f"a message must be a dict, got {type(message).__name__}", where)
        role = message.get("role")
        if role is None:
            raise field_error("missing 'role'", f"{where}.role")
        if not isinstance(role, str) or role not in ROLES:
            raise field_error(f"unknown role {role!r}; use one of {sorted(ROLES)}", f"{where}.role")
        _check_content(message, role, where)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise field_error(
                "a tool message needs a string 'tool_call_id'", f"{where}.tool_call_id"
            )
        if role == "assistant" and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"], f"{where}.tool_calls")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise field_error("name must be a string", f"{where}.name")
    return [copy_json(dict(m), f"messages[{i}]") for i, m in enumerate(messages)]


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        expected = OPENAI_PARAMS.get(name)
        if expected is None:
            raise field_error(
                "unknown parameter; pass vendor-specific fields in extra_body={...}", name
            )
        wrong_bool = isinstance(value, bool) and bool not in expected
        if wrong_bool or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in expected)
            raise field_error(f"must be {names}, got {type(value).__name__}", name)
        checked[name] = copy_json(value, name)
    return checked


def _check_str_map(value: object, field_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise field_error("must be a dict of strings", field_name)
    checked: dict[str, str] = copy_json(dict(value), field_name)
    return checked


# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_headers(value: object, field_name: str) -> dict[str, str]:
    """Headers as they may be sent: token names, values without CR/LF/NUL, Latin-1.

    The field named in an error is ``field_name[Header-Name]``; values are
    never quoted (they are often keys).
    """
    headers = _check_str_map(value, field_name)
    for name, header in headers.items():
        if not _TOKEN.fullmatch(name):
            raise field_error(f"{name!r} is not a valid header name", f"{field_name}[{name!r}]")
        where = f"{field_name}[{name}]"
        check_header_value(header, where)
        if not header.isascii():
            try:
                header.encode("latin-1")
            except UnicodeEncodeError:
                raise field_error("a header value must be Latin-1 text", where) from None
    return headers


def build_request(
    *,
    model: object,
    messages: object,
    stream: object,
    params: Mapping[str, Any],
    extra_headers: object = None,
    extra_query: object = None,
    extra_body: object = None,
    timeout: object = None,
) -> ChatRequest:
    """Validate every argument of ``create()`` and freeze them into a ``ChatRequest``."""
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise field_error(f"must be a string, got {type(model).__name__}", "model")
    copy_json(model, "model")  # no lone surrogates
    if not isinstance(stream, bool):
        raise field_error(f"must be True or False, got {type(stream).__name__}", "stream")
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise field_error("must be a dict", "extra_body")
    return ChatRequest(
        model=model,
        messages=validate_messages(messages),
        stream=stream,
        params=_check_params(params),
        extra_headers=check_headers(extra_headers, "extra_headers"),
        extra_query=_check_str_map(extra_query, "extra_query"),
        extra_body=copy_json(dict(extra_body or {}), "extra_body"),
        timeout=coerce_timeout(timeout),
    )


def strict_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` in the strict form OpenAI's Structured Outputs demand, as a new dict.

    As openai-python's ``to_strict_json_schema``: every object schema gets
    ``additionalProperties: false`` (unless it sets it), every property is
    listed in ``required`` (an ``Optional[X] = None`` field stays nullable
    through its ``anyOf``; a field with another default must then be
    answered), ``$defs`` / ``definitions`` and every ``properties``,
    ``items``, ``prefixItems``, ``anyOf`` and ``allOf`` are walked, a
    one-entry ``allOf`` is merged, ``None`` defaults dropped, and a ``$ref``
    with sibling keys (a described field) is inlined, since strict mode
    allows no siblings next to ``$ref``. The caller's schema is not changed.
    """
    root: dict[str, Any] = copy_json(dict(schema), "response_format")
    strict: dict[str, Any] = _strict(root, root)
    return strict


def _strict(node: Any, root: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    for key in ("$defs", "definitions"):
        defs = node.get(key)
        if isinstance(defs, dict):
            for name, sub in defs.items():
                defs[name] = _strict(sub, root)
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    properties = node.get("properties")
    if isinstance(properties, dict):
        node["required"] = list(properties)
        node["properties"] = {key: _strict(sub, root) for key, sub in properties.items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root)
    for key in ("prefixItems", "anyOf", "allOf"):
        if isinstance(node.get(key), list):
            node[key] = [_strict(sub, root) for sub in node[key]]
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        del node["allOf"]
        node.update(all_of[0])
    if "default" in node and node["default"] is None:
        del node["default"]
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        resolved = _resolve_ref(root, ref)
        # The node's own keys (its description) win over the definition's.
        merged = {**resolved, **node}
        del merged["$ref"]
        return _strict(merged, root)
    return node


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    target: Any = root
    if ref.startswith("#/"):
        for step in ref[2:].split("/"):
            target = target.get(step) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        raise field_error(f"cannot resolve $ref {ref!r} in the schema", "response_format")
    return dict(target)
