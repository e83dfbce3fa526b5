"""OpenAI-style chat requests translated to Anthropic Messages API request bodies.

Pure functions, no I/O: ``check_request`` runs them before anything is sent,
so a request Anthropic cannot express fails with an error naming the field.

Wire format: https://docs.anthropic.com/en/api/messages (request body),
https://docs.anthropic.com/en/docs/build-with-claude/vision (image sources),
https://docs.anthropic.com/en/docs/build-with-claude/pdf-support (documents),
https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
(tools, tool_choice, tool_use / tool_result blocks),
https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking (thinking),
https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
(``output_config.format``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chatkit._errors import UnsupportedCapabilityError
from chatkit._request import ChatRequest
from chatkit.providers._common import (
    base64_data_url,
    field_error,
    first_unsupported_param,
    function_declaration,
    image_url_of,
    json_schema_of,
    stop_sequences,
    tool_call_arguments,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "IGNORED_PARAMS",
    "MAPPED_PARAMS",
    "THINKING_BUDGETS",
    "UNSUPPORTED_PARAMS",
    "convert_messages",
    "messages_body",
    "unsupported_param",
]

# Anthropic requires max_tokens; 4096 is within every current model's output limit.
DEFAULT_MAX_TOKENS = 4096

# reasoning_effort -> extended-thinking budget (budget_tokens must be >= 1024
# and below max_tokens). "none" turns thinking off explicitly.
THINKING_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
_MIN_THINKING_BUDGET = 1024

# OpenAI parameters with no Anthropic equivalent that would change what comes
# back: refused before I/O rather than silently dropped. The predicate says
# whether the given value actually asks for the missing feature.
UNSUPPORTED_PARAMS: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v != 1,
    "logprobs": bool,
    "top_logprobs": bool,
    "logit_bias": bool,
    "presence_penalty": bool,
    "frequency_penalty": bool,
    "modalities": lambda v: list(v) != ["text"],
    "audio": bool,
    "prediction": bool,
    "web_search_options": lambda v: True,
}
# Parameters with nothing to map to that do not change the answer's content
# (bookkeeping, OpenAI-side storage, best-effort hints): left out of the body.
# stream_options: Anthropic streams always carry usage.
IGNORED_PARAMS = frozenset(
    {"stream_options", "store", "metadata", "service_tier", "prompt_cache_key", "seed", "verbosity"}
)
MAPPED_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "safety_identifier",
    }
)


def unsupported_param(request: ChatRequest) -> str | None:
    """The first parameter of ``request`` Anthropic cannot honour, or None."""
    return first_unsupported_param(request, UNSUPPORTED_PARAMS)


# -- content blocks ---------------------------------------------------------


def _text_block(text: str, part: Mapping[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    # Prompt-caching marks ride along on the part they were put on.
    if part is not None and "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _source(url: str, where: str, kind: str) -> dict[str, Any]:
    if url.startswith("data:"):
        parsed = base64_data_url(url)
        if parsed is None:
            raise field_error(f"a data URL {kind} must be base64 (data:<type>;base64,...)", where)
        media_type, data = parsed
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise field_error(f"an {kind} URL must be a data: URL or an http(s) URL", where)


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = _source(image_url_of(part), f"{where}.image_url", "image")
    return {"type": "image", "source": source}


def _document_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, Mapping) else None
    if not isinstance(data, str):
        raise UnsupportedCapabilityError(
            f"{where}: Anthropic takes files inline only: pass file.file_data as a data URL",
            field=where,
        )
    return {"type": "document", "source": _source(data, f"{where}.file.file_data", "file")}


def _part_block(part: Mapping[str, Any], where: str, *, media: bool) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "refusal"):
        text = part.get(kind)
        return _text_block(text, part) if isinstance(text, str) and text else None
    if media and kind == "image_url":
        return _image_block(part, where)
    if media and kind == "file":
        return _document_block(part, where)
    raise UnsupportedCapabilityError(
        f"{where}: Anthropic does not accept {kind!r} content parts here", field=where
    )


def _blocks(content: Any, where: str, *, media: bool) -> list[dict[str, Any]]:
    """Content (a string or OpenAI parts) as Anthropic blocks; empty text dropped."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [_text_block(content)]
    blocks = []
    for j, part in enumerate(content):
        block = _part_block(part, f"{where}.content[{j}]", media=media)
        if block is not None:
            blocks.append(block)
    return blocks


def _tool_use_blocks(calls: list[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    blocks = []
    for j, call in enumerate(calls):
        function = call["function"]
        arguments = tool_call_arguments(function, f"{where}.tool_calls[{j}].function.arguments")
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}
        )
    return blocks


def _tool_result_block(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _blocks(content, where, media=True)
    return {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": result}


# -- messages ---------------------------------------------------------------


def _turn(message: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    role = message["role"]
    if role == "user":
        return "user", _blocks(message.get("content"), where, media=True)
    if role == "assistant":
        blocks = _blocks(message.get("content"), where, media=False)
        blocks.extend(_tool_use_blocks(message.get("tool_calls") or [], where))
        return "assistant", blocks
    if role == "tool":
        # Tool results travel in a user turn.
        return "user", [_tool_result_block(message, where)]
    raise UnsupportedCapabilityError(
        f"{where}.role: Anthropic has no {role!r} messages; use tools and tool messages",
        field=f"{where}.role",
    )


def convert_messages(messages: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """``(system, messages)`` for the Messages API.

    System and developer messages, wherever they stand, become the top-level
    ``system``; consecutive turns of one role are merged, as the API expects
    alternating user and assistant turns.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message["role"] in ("system", "developer"):
            system.extend(_blocks(message.get("content"), where, media=False))
            continue
        role, blocks = _turn(message, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if turns and turns[-1]["role"] == "assistant":
        _trim_prefill(turns[-1]["content"])
        if not turns[-1]["content"]:
            turns.pop()
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0].keys() == {"type", "text"}:
            turn["content"] = content[0]["text"]
    return _system_value(system), turns


def _trim_prefill(blocks: list[dict[str, Any]]) -> None:
    """A final assistant turn is a prefill the model continues, and the API
    refuses one ending in whitespace: trim its last text (a block left empty
    goes). The model writes the whitespace itself, as the text's next token."""
    while blocks and blocks[-1].get("type") == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {**blocks[-1], "text": text}
            return
        blocks.pop()


def _system_value(blocks: list[dict[str, Any]]) -> Any:
    if not blocks:
        return None
    if all(block.keys() == {"type", "text"} for block in blocks):
        return "\n\n".join(block["text"] for block in blocks)
    return blocks


# -- parameters -------------------------------------------------------------


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    if not isinstance(function, Mapping):
        # Not an OpenAI function tool: an Anthropic tool (web search, ...) as is.
        return dict(tool)
    converted = function_declaration(function)
    schema = function.get("parameters")
    converted["input_schema"] = schema if schema else {"type": "object", "properties": {}}
    if function.get("strict"):
        converted["strict"] = True
    return converted


def _tool_choice(choice: Any) -> dict[str, Any]:
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str):
        if choice not in named:
            raise field_error(f"must be one of {sorted(named)} or a function choice", "tool_choice")
        return {"type": named[choice]}
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, Mapping):
        return {"type": "tool", "name": function.get("name")}
    return dict(choice)


def _apply_tools(body: dict[str, Any], params: Mapping[str, Any]) -> None:
    tools = params.get("tools")
    if not tools:
        return
    body["tools"] = [_tool(tool) for tool in tools]
    choice = params.get("tool_choice")
    tool_choice = _tool_choice(choice) if choice is not None else None
    if params.get("parallel_tool_calls") is False:
        tool_choice = tool_choice or {"type": "auto"}
        tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        body["tool_choice"] = tool_choice


def _response_format(body: dict[str, Any], response_format: Mapping[str, Any]) -> None:
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = json_schema_of(response_format)
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif kind != "text":
        raise UnsupportedCapabilityError(
            f"response_format: Anthropic has no {kind!r} mode; use json_schema",
            field="response_format",
        )


def _thinking(effort: str, max_tokens: int) -> dict[str, Any]:
    if effort == "none":
        return {"type": "disabled"}
    budget = THINKING_BUDGETS.get(effort)
    if budget is None:
        choices = sorted([*THINKING_BUDGETS, "none"])
        raise field_error(f"must be one of {choices}", "reasoning_effort")
    budget = min(budget, max_tokens - 1)
    if budget < _MIN_THINKING_BUDGET:
        raise field_error(
            f"Anthropic thinking needs max_tokens above {_MIN_THINKING_BUDGET}", "max_tokens"
        )
    return {"type": "enabled", "budget_tokens": budget}


def messages_body(
    request: ChatRequest, *, model: str, default_max_tokens: int, stream: bool
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages`` for ``request``."""
    params = request.params
    system, messages = convert_messages(request.messages)
    effort = params.get("reasoning_effort")
    explicit = params.get("max_tokens") or params.get("max_completion_tokens")
    max_tokens = explicit or default_max_tokens
    if effort is not None and effort != "none" and explicit is None:
        # Thinking spends from max_tokens: leave the usual room for the answer.
        max_tokens += THINKING_BUDGETS.get(effort, 0)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system is not None:
        body["system"] = system
    for name in ("temperature", "top_p"):
        if name in params:
            body[name] = params[name]
    stop = params.get("stop")
    if stop is not None:
        body["stop_sequences"] = stop_sequences(stop)
    _apply_tools(body, params)
    if "response_format" in params:
        _response_format(body, params["response_format"])
    if effort is not None:
        body["thinking"] = _thinking(effort, max_tokens)
    user = params.get("user") or params.get("safety_identifier")
    if user is not None:
        body["metadata"] = {"user_id": user}
    body["stream"] = stream
    body.update(request.extra_body)
    return body
