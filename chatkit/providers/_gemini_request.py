"""OpenAI-style chat requests translated to Gemini ``generateContent`` bodies.

Pure functions, no I/O: ``Gemini.check_request`` runs them before anything is
sent, so a request Gemini cannot express fails with an error naming the field.

Wire format: https://ai.google.dev/api/generate-content (request body,
``GenerationConfig``), https://ai.google.dev/api/caching#Content (``Content``
and ``Part``: text, inlineData, fileData, functionCall, functionResponse),
https://ai.google.dev/gemini-api/docs/function-calling (``tools``,
``toolConfig.functionCallingConfig``),
https://ai.google.dev/gemini-api/docs/file-input-methods (inline data and
external URLs), https://ai.google.dev/gemini-api/docs/thought-signatures,
https://ai.google.dev/gemini-api/docs/thinking (``thinkingConfig``).
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from chatkit._errors import UnsupportedCapabilityError
from chatkit._request import ChatRequest
from chatkit.providers._common import (
    base64_data_url,
    field_error,
    first_unsupported_param,
    function_declaration,
    function_of_tool,
    image_url_of,
    json_schema_of,
    merge_extra_body,
    output_token_limit,
    stop_sequences,
    text_of,
    tool_call_arguments,
)

__all__ = ["IGNORED_PARAMS", "MAPPED_PARAMS", "generate_content_body", "unsupported_param"]

# OpenAI parameters with no Gemini equivalent that would change what comes
# back: refused before I/O rather than silently dropped. The predicate says
# whether the given value actually asks for the missing feature.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logprobs": bool,
    "top_logprobs": bool,
    "logit_bias": bool,
    "modalities": lambda v: list(v) != ["text"],
    "audio": bool,
    "prediction": bool,
    "web_search_options": lambda v: True,
}
# Bookkeeping and best-effort hints with nothing to map to: left out of the body.
IGNORED_PARAMS = frozenset(
    {"stream_options", "store", "metadata", "service_tier", "prompt_cache_key", "user"}
    | {"safety_identifier", "parallel_tool_calls", "verbosity"}
)
MAPPED_PARAMS = frozenset(
    {"temperature", "top_p", "seed", "n", "presence_penalty", "frequency_penalty", "stop"}
    | {"max_tokens", "max_completion_tokens", "tools", "tool_choice", "response_format"}
    | {"reasoning_effort"}
)
_GENERATION_FIELDS = {
    "temperature": "temperature",
    "top_p": "topP",
    "seed": "seed",
    "n": "candidateCount",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# Gemini 2.x thinks within a token budget; these follow Google's own
# OpenAI-compatible endpoint. Gemini 3 takes the effort as a thinking level.
_THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
# Gemini 3 rejects a replayed function call without its thought signature; this
# documented sentinel (thought-signatures, above) stands in when the caller's
# history lost the real one.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_MAJOR_VERSION = re.compile(r"gemini-(\d+)")
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


def unsupported_param(request: ChatRequest) -> str | None:
    """The first parameter of ``request`` Gemini cannot honour, or None."""
    return first_unsupported_param(request, _UNSUPPORTED)


def generation(model: str) -> int | None:
    """The Gemini generation a model name belongs to (3 for gemini-3-pro), if any."""
    found = _MAJOR_VERSION.search(model)
    return int(found.group(1)) if found else None


# -- messages ---------------------------------------------------------------


def _media_part(url: str, where: str) -> dict[str, Any]:
    """Data URLs go inline; other URLs become ``fileData`` the API fetches itself."""
    if url.startswith("data:"):
        parsed = base64_data_url(url)
        if parsed is None:
            raise field_error("a data URL must be base64 (data:<type>;base64,...)", where)
        mime, data = parsed
        return {"inlineData": {"mimeType": mime, "data": data}}
    if urlsplit(url).scheme not in ("http", "https", "gs"):
        raise field_error("a media URL must be a data: URL or an http(s) URL", where)
    file_data = {"fileUri": url}
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    if guessed:
        file_data["mimeType"] = guessed
    return {"fileData": file_data}


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part["type"]
        if kind == "text":
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_media_part(image_url_of(part), f"{here}.image_url"))
        elif kind == "input_audio" and isinstance(part.get("input_audio"), Mapping):
            audio = part["input_audio"]
            mime = _AUDIO_TYPES.get(str(audio.get("format")), "audio/wav")
            parts.append({"inlineData": {"mimeType": mime, "data": audio.get("data", "")}})
        elif kind == "file" and isinstance((part.get("file") or {}).get("file_data"), str):
            parts.append(_media_part(part["file"]["file_data"], f"{here}.file.file_data"))
        else:
            raise UnsupportedCapabilityError(
                f"{here}: Gemini does not accept {kind!r} content parts here", field=here
            )
    return parts


def _model_parts(
    message: Mapping[str, Any], where: str, names: dict[str, str], signatures: bool
) -> list[dict[str, Any]]:
    text = text_of(message.get("content"))
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        names[call["id"]] = function["name"]
        here = f"{where}.tool_calls[{j}].function.arguments"
        part: dict[str, Any] = {
            "functionCall": {"name": function["name"], "args": tool_call_arguments(function, here)}
        }
        extra = call.get("extra_content")
        google = extra.get("google") if isinstance(extra, Mapping) else None
        signature = google.get("thought_signature") if isinstance(google, Mapping) else None
        if isinstance(signature, str) and signature:
            part["thoughtSignature"] = signature
        elif signatures and j == 0:
            # Only the first call of a step carries a signature.
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _function_response(
    message: Mapping[str, Any], where: str, names: Mapping[str, str]
) -> dict[str, Any]:
    if message["role"] == "tool":
        name = names.get(message["tool_call_id"]) or message.get("name")
        field = f"{where}.tool_call_id"
    else:  # the legacy "function" role names its function itself
        name, field = message.get("name"), f"{where}.name"
    if not isinstance(name, str) or not name:
        raise field_error(
            "Gemini answers a call by function name, and no earlier assistant tool call"
            " has this id",
            field,
        )
    text = text_of(message.get("content"))
    try:
        result: Any = json.loads(text)
    except ValueError:
        result = text
    except RecursionError:
        # Valid JSON nested past the parser's limit: the caller's input, not a crash.
        raise field_error("tool result JSON nests too deeply", f"{where}.content") from None
    # FunctionResponse.response must be a JSON object.
    response = result if isinstance(result, dict) else {"result": result}
    return {"functionResponse": {"name": name, "response": response}}


def convert_messages(messages: list[dict[str, Any]], *, signatures: bool) -> dict[str, Any]:
    """``contents`` and ``systemInstruction`` for OpenAI ``messages``.

    System and developer messages, wherever they stand, become the one
    ``systemInstruction``; neighbouring turns of one role share a ``Content``
    (Gemini has "user" and "model", and tool results travel as "user").
    """
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            parts = _user_parts(message["content"], where)
        elif role == "assistant":
            parts = _model_parts(message, where, names, signatures)
        else:
            parts = [_function_response(message, where, names)]
        if not parts:
            continue
        gemini_role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise field_error(
            "Gemini needs at least one non-empty user or assistant message", "messages"
        )
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    return body


# -- parameters -------------------------------------------------------------


def _declaration(tool: Any, where: str) -> dict[str, Any]:
    function = function_of_tool(tool, where, "Gemini")
    declaration = function_declaration(function)
    if function.get("parameters"):
        # parametersJsonSchema takes full JSON Schema ($defs, anyOf, ...), which
        # the OpenAPI-subset "parameters" field rejects.
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise field_error(
        "must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}",
        "tool_choice",
    )


def _response_format(config: dict[str, Any], response_format: Mapping[str, Any]) -> None:
    kind = response_format.get("type")
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        schema = json_schema_of(response_format)
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = schema
    elif kind != "text":
        raise field_error(f"unknown type {kind!r}", "response_format")


def _thinking(effort: str, gen: int | None) -> dict[str, Any]:
    if effort not in _THINKING_BUDGETS:
        raise field_error(f"must be one of {sorted(_THINKING_BUDGETS)}", "reasoning_effort")
    if effort == "none":
        return {"thinkingBudget": 0}
    # Asking for reasoning also asks to see it, as delta.reasoning_content.
    if gen is not None and gen >= 3:
        return {"thinkingLevel": effort, "includeThoughts": True}
    return {"thinkingBudget": _THINKING_BUDGETS[effort], "includeThoughts": True}


def _generation_config(params: Mapping[str, Any], gen: int | None) -> dict[str, Any]:
    config = {_GENERATION_FIELDS[k]: v for k, v in params.items() if k in _GENERATION_FIELDS}
    limit = output_token_limit(params)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = params.get("stop")
    if stop is not None:
        config["stopSequences"] = stop_sequences(stop)
    if "response_format" in params:
        _response_format(config, params["response_format"])
    if "reasoning_effort" in params:
        config["thinkingConfig"] = _thinking(params["reasoning_effort"], gen)
    return config


def generate_content_body(request: ChatRequest, *, model: str) -> dict[str, Any]:
    """The JSON body of ``generateContent`` / ``streamGenerateContent`` for ``request``.

    ``extra_body`` is merged one level deep, so ``{"generationConfig": {...}}``
    adds to the translated settings instead of replacing them.
    """
    params = request.params
    gen = generation(model)
    body = convert_messages(request.messages, signatures=gen is not None and gen >= 3)
    tools = params.get("tools")
    if tools:
        declarations = [_declaration(t, f"tools[{i}]") for i, t in enumerate(tools)]
        body["tools"] = [{"functionDeclarations": declarations}]
    if params.get("tool_choice") is not None:
        body["toolConfig"] = {"functionCallingConfig": _calling_config(params["tool_choice"])}
    config = _generation_config(params, gen)
    if config:
        body["generationConfig"] = config
    merge_extra_body(body, request.extra_body)
    return body
