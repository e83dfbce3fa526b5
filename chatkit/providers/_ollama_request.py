"""OpenAI-style chat requests translated to Ollama ``/api/chat`` request bodies.

Pure functions, no I/O: ``Ollama.check_request`` runs them before anything is
sent, so a request Ollama cannot express fails with an error naming the field.

Wire format: https://docs.ollama.com/api/chat (request body, messages with
``images``, ``tool_calls`` and ``tool_name``, ``options``, ``format``,
``think``, ``keep_alive``), https://docs.ollama.com/capabilities/tool-calling,
https://docs.ollama.com/capabilities/thinking,
https://docs.ollama.com/capabilities/structured-outputs, and the Modelfile
parameters ``options`` takes: https://docs.ollama.com/modelfile#valid-parameters-and-values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from chatkit._errors import InvalidRequestError, UnsupportedCapabilityError
from chatkit._request import ChatRequest

__all__ = ["chat_body", "unsupported_param"]

# OpenAI parameters with no Ollama equivalent that would change the answer:
# refused before I/O. The predicate says whether the value asks for the feature.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v != 1,
    "logprobs": bool,
    "top_logprobs": bool,
    "logit_bias": bool,
    "modalities": lambda v: list(v) != ["text"],
    "audio": bool,
    "prediction": bool,
    "web_search_options": lambda v: True,
    # Ollama lets the model decide; it cannot be made to call, or call one tool.
    "tool_choice": lambda v: v not in ("auto", "none"),
}
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# reasoning_effort -> think: Ollama takes levels ("low", "medium", "high") or a bool.
_THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


def unsupported_param(request: ChatRequest) -> str | None:
    """The first parameter of ``request`` Ollama cannot honour, or None."""
    for name, asks in _UNSUPPORTED.items():
        value = request.params.get(name)
        if value is not None and asks(value):
            return name
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text")
    return ""


def _image(part: Mapping[str, Any], where: str) -> str:
    image = part["image_url"]
    url: str = image["url"] if isinstance(image, Mapping) else image
    header, comma, data = url.partition(",")
    if not (header.startswith("data:") and header.endswith(";base64") and comma):
        raise UnsupportedCapabilityError(
            f"{where}: Ollama takes images inline only: pass a data:<type>;base64,... URL",
            field=where,
        )
    return data


def _user_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "user", "content": content}
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if part["type"] == "text":
            texts.append(part["text"])
        elif part["type"] == "image_url":
            images.append(_image(part, f"{here}.image_url"))
        else:
            raise UnsupportedCapabilityError(
                f"{here}: Ollama does not accept {part['type']!r} content parts", field=here
            )
    message: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
    if images:
        message["images"] = images
    return message


def _tool_calls(calls: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    converted = []
    for j, call in enumerate(calls):
        function = call["function"]
        names[call["id"]] = function["name"]
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            field = f"{where}.tool_calls[{j}].function.arguments"
            raise InvalidRequestError(
                f"{field}: tool call arguments must be a JSON object", field=field
            )
        # Ollama's arguments are an object, not OpenAI's JSON string.
        converted.append({"function": {"name": function["name"], "arguments": arguments}})
    return converted


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            converted.append({"role": "system", "content": _text_of(content)})
        elif role == "user":
            converted.append(_user_message(content, where))
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": _text_of(content)}
            if message.get("tool_calls"):
                turn["tool_calls"] = _tool_calls(message["tool_calls"], where, names)
            if isinstance(message.get("reasoning_content"), str):
                turn["thinking"] = message["reasoning_content"]
            converted.append(turn)
        else:  # tool, or the legacy "function" role
            result: dict[str, Any] = {"role": "tool", "content": _text_of(content)}
            name = names.get(message.get("tool_call_id") or "") or message.get("name")
            if name:
                result["tool_name"] = name
            converted.append(result)
    return converted


def _tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
        raise UnsupportedCapabilityError(f"{where}: Ollama takes function tools only", field=where)
    # Ollama's tool objects are OpenAI's.
    return {"type": "function", "function": dict(function)}


def _format(body: dict[str, Any], response_format: Mapping[str, Any]) -> None:
    kind = response_format.get("type")
    if kind == "json_object":
        body["format"] = "json"
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(
                "response_format: json_schema needs json_schema.schema", field="response_format"
            )
        body["format"] = schema
    elif kind != "text":
        raise InvalidRequestError(
            f"response_format: unknown type {kind!r}", field="response_format"
        )


def chat_body(
    request: ChatRequest, *, model: str, stream: bool, keep_alive: str | float | None = None
) -> dict[str, Any]:
    """The JSON body of ``POST /api/chat`` for ``request``.

    ``extra_body`` is merged one level deep, so ``{"options": {"num_ctx": 8192}}``
    adds an option instead of replacing the translated ones.
    """
    params = request.params
    body: dict[str, Any] = {"model": model, "messages": _messages(request.messages)}
    body["stream"] = stream
    tools = params.get("tools")
    if tools and params.get("tool_choice") != "none":
        body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    options = {_OPTIONS[k]: v for k, v in params.items() if k in _OPTIONS}
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    stop = params.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        body["options"] = options
    if "response_format" in params:
        _format(body, params["response_format"])
    effort = params.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINK:
            raise InvalidRequestError(
                f"reasoning_effort: must be one of {sorted(_THINK)}", field="reasoning_effort"
            )
        body["think"] = _THINK[effort]
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    for key, value in request.extra_body.items():
        current = body.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            body[key] = {**current, **value}
        else:
            body[key] = value
    return body
