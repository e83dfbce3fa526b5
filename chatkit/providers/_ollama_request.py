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

from collections.abc import Callable, Mapping
from typing import Any

from chatkit._errors import UnsupportedCapabilityError
from chatkit._request import ChatRequest
from chatkit.providers._common import (
    field_error,
    first_unsupported_param,
    function_of_tool,
    image_url_of,
    json_schema_of,
    merge_extra_body,
    output_token_limit,
    stop_sequences,
    text_of,
    tool_call_arguments,
)

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
    return first_unsupported_param(request, _UNSUPPORTED)


def _image(part: Mapping[str, Any], where: str) -> str:
    # Ollama wants only the payload, so no media type is needed (unlike base64_data_url).
    header, comma, data = image_url_of(part).partition(",")
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
        arguments = tool_call_arguments(function, f"{where}.tool_calls[{j}].function.arguments")
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
            converted.append({"role": "system", "content": text_of(content)})
        elif role == "user":
            converted.append(_user_message(content, where))
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": text_of(content)}
            if message.get("tool_calls"):
                turn["tool_calls"] = _tool_calls(message["tool_calls"], where, names)
            if isinstance(message.get("reasoning_content"), str):
                turn["thinking"] = message["reasoning_content"]
            converted.append(turn)
        else:  # tool, or the legacy "function" role
            result: dict[str, Any] = {"role": "tool", "content": text_of(content)}
            name = names.get(message.get("tool_call_id") or "") or message.get("name")
            if name:
                result["tool_name"] = name
            converted.append(result)
    return converted


def _tool(tool: Any, where: str) -> dict[str, Any]:
    # Ollama's tool objects are OpenAI's.
    return {"type": "function", "function": dict(function_of_tool(tool, where, "Ollama"))}


def _format(body: dict[str, Any], response_format: Mapping[str, Any]) -> None:
    kind = response_format.get("type")
    if kind == "json_object":
        body["format"] = "json"
    elif kind == "json_schema":
        body["format"] = json_schema_of(response_format)
    elif kind != "text":
        raise field_error(f"unknown type {kind!r}", "response_format")


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
    limit = output_token_limit(params)
    if limit is not None:
        options["num_predict"] = limit
    stop = params.get("stop")
    if stop is not None:
        options["stop"] = stop_sequences(stop)
    if options:
        body["options"] = options
    if "response_format" in params:
        _format(body, params["response_format"])
    effort = params.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINK:
            raise field_error(f"must be one of {sorted(_THINK)}", "reasoning_effort")
        body["think"] = _THINK[effort]
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    merge_extra_body(body, request.extra_body)
    return body
