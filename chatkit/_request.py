"""The validated request a provider receives, and the checks that build it.

Everything here runs before any I/O. Errors name the bad field. The caller's
objects are copied, never mutated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatkit._config import Timeout, coerce_timeout
from chatkit._errors import InvalidRequestError

__all__ = ["OPENAI_PARAMS", "ChatRequest", "build_request", "validate_messages"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})

# Chat Completions parameters passed through to the wire, with the types they accept.
_NUMBER = (int, float)
OPENAI_PARAMS: dict[str, tuple[type, ...]] = {
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


def _fail(message: str, field_name: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field_name}: {message}", field=field_name)


def _check_parts(parts: Sequence[Any], where: str) -> None:
    if not parts:
        raise _fail("a content list must not be empty", where)
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise _fail(f"a content part must be a dict, got {type(part).__name__}", here)
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise _fail(
                f"unknown content part type {kind!r}; use one of {sorted(PART_TYPES)}", here
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _fail("a text part needs a string 'text'", f"{here}.text")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url:
                raise _fail("an image_url part needs image_url.url (a URL or data URL)", here)


def _check_content(message: Mapping[str, Any], role: str, where: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        if role == "assistant" and "content" in message:
            return
        raise _fail(f"a {role} message needs 'content'", f"{where}.content")
    if isinstance(content, str):
        return
    if isinstance(content, list | tuple):
        _check_parts(content, f"{where}.content")
        return
    raise _fail(
        f"content must be a string or a list of content parts, got {type(content).__name__}",
        f"{where}.content",
    )


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list | tuple):
        raise _fail("tool_calls must be a list", where)
    for j, call in enumerate(calls):
        here = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _fail("a tool call needs function.name", here)
        if not isinstance(call.get("id"), str):
            raise _fail("a tool call needs a string 'id'", f"{here}.id")


_IMMUTABLE = (str, int, float, bool, type(None))


def copy_json(value: Any, field_name: str = "request") -> Any:
    """A deep copy of JSON-shaped data, several times faster than ``copy.deepcopy``.

    Plain dicts, lists and tuples are rebuilt and immutable scalars shared;
    anything else (a dict subclass, a caller's own object) goes through
    ``copy.deepcopy`` so its type and contents are kept as they were. Data
    that refers to itself (or nests absurdly deep) cannot be sent as JSON:
    that is an ``InvalidRequestError`` naming ``field_name``, before any I/O.
    """
    try:
        return _copy_json(value)
    except RecursionError:
        raise _fail(
            "refers to itself (or nests too deeply) and cannot be sent as JSON", field_name
        ) from None


def _copy_json(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {key: _copy_json(item) for key, item in value.items()}
    if kind is list:
        return [_copy_json(item) for item in value]
    if kind is tuple:
        return tuple(_copy_json(item) for item in value)
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check a messages list and return a deep copy the caller cannot see change."""
    if isinstance(messages, str | bytes) or not isinstance(messages, list | tuple):
        raise _fail(f"must be a list of message dicts, got {type(messages).__name__}", "messages")
    if not messages:
        raise _fail("must contain at least one message", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _fail(f"a message must be a dict, got {type(message).__name__}", where)
        role = message.get("role")
        if role is None:
            raise _fail("missing 'role'", f"{where}.role")
        if role not in ROLES:
            raise _fail(f"unknown role {role!r}; use one of {sorted(ROLES)}", f"{where}.role")
        _check_content(message, role, where)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _fail("a tool message needs a string 'tool_call_id'", f"{where}.tool_call_id")
        if role == "assistant" and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"], f"{where}.tool_calls")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise _fail("name must be a string", f"{where}.name")
    return [copy_json(dict(m), f"messages[{i}]") for i, m in enumerate(messages)]


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        expected = OPENAI_PARAMS.get(name)
        if expected is None:
            raise _fail("unknown parameter; pass vendor-specific fields in extra_body={...}", name)
        wrong_bool = isinstance(value, bool) and bool not in expected
        if wrong_bool or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in expected)
            raise _fail(f"must be {names}, got {type(value).__name__}", name)
        checked[name] = copy_json(value, name)
    return checked


def _check_str_map(value: object, field_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail("must be a dict of strings", field_name)
    return dict(value)


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
        raise _fail(f"must be a string, got {type(model).__name__}", "model")
    if not isinstance(stream, bool):
        raise _fail(f"must be True or False, got {type(stream).__name__}", "stream")
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise _fail("must be a dict", "extra_body")
    return ChatRequest(
        model=model,
        messages=validate_messages(messages),
        stream=stream,
        params=_check_params(params),
        extra_headers=_check_str_map(extra_headers, "extra_headers"),
        extra_query=_check_str_map(extra_query, "extra_query"),
        extra_body=copy_json(dict(extra_body or {}), "extra_body"),
        timeout=coerce_timeout(timeout),
    )
