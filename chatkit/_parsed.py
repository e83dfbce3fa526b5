"""Structured outputs, the pure part: parsed completion types, tools from models,
and the check of one answer (refused, valid, or invalid with feedback).

No I/O here: ``chatkit._structured`` drives the calls, ``chatkit._parsed_stream``
the streamed variant. Names follow openai-python (``ParsedChatCompletion``,
``ParsedChoice``, ``ParsedChatCompletionMessage``, ``ParsedFunctionToolCall``,
``ParsedFunction``, ``pydantic_function_tool``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, ValidationError

from chatkit._attempt import Attempt
from chatkit._errors import ContentRefusedError, InvalidRequestError, ResponseDecodeError
from chatkit._request import strict_json_schema
from chatkit._types import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Function,
    ToolCall,
)

__all__ = [
    "FILTERED",
    "Check",
    "ParsedChatCompletion",
    "ParsedChatCompletionMessage",
    "ParsedChoice",
    "ParsedFunction",
    "ParsedFunctionToolCall",
    "PydanticFunctionTool",
    "check_answer",
    "merge_attempts",
    "pydantic_function_tool",
    "response_format_for",
    "schema_name",
]

ContentT = TypeVar("ContentT")

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

FILTERED = "(no refusal text: the provider's content filter stopped the answer)"
"""``ContentRefusedError.refusal`` for an answer a content filter stopped: the
text it held so far is not a refusal, so it is not passed on as one."""


# -- types ---------------------------------------------------------------------


class ParsedFunction(Function):
    """A called function; ``parsed_arguments`` is the validated model instance
    for a ``pydantic_function_tool``, the decoded JSON for another tool (None
    when its arguments are not JSON)."""

    parsed_arguments: object = None


class ParsedFunctionToolCall(ToolCall):
    function: ParsedFunction = ParsedFunction()


class ParsedChatCompletionMessage(ChatCompletionMessage, Generic[ContentT]):
    """The message with ``parsed``: the validated object (None for a tool-call
    answer with no content)."""

    parsed: ContentT | None = None
    tool_calls: list[ParsedFunctionToolCall] | None = None  # type: ignore[assignment]


class ParsedChoice(Choice, Generic[ContentT]):
    message: ParsedChatCompletionMessage[ContentT] = ParsedChatCompletionMessage()


class ParsedChatCompletion(ChatCompletion, Generic[ContentT]):
    """A ``ChatCompletion`` (``usage``, ``provider``, ``attempts``, ``cost``)
    whose choices carry the validated object at ``choices[i].message.parsed``.

    ``parsed`` is choice 0's object, the usual thing to read. ``attempts``
    holds every attempt of every try (a validation retry is a new try);
    ``usage`` is the answer's, and ``cost`` includes the tries whose answers
    did not validate (each such attempt carries its ``usage``).
    """

    choices: list[ParsedChoice[ContentT]] = Field(default_factory=list)  # type: ignore[assignment]

    @property
    def parsed(self) -> ContentT | None:
        """Choice 0's validated object (``choices[0].message.parsed``)."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.message.parsed
        return None

    @property
    def refusal(self) -> str | None:
        """Choice 0's refusal text (None: ``parse()`` raises on a refusal)."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.message.refusal
        return None


# -- request side --------------------------------------------------------------


class PydanticFunctionTool(dict[str, Any]):
    """A tool's ``function`` dict that remembers the model its arguments validate against."""

    def __init__(self, definition: Mapping[str, Any], model: type[BaseModel]) -> None:
        super().__init__(definition)
        self.model = model

    def __deepcopy__(self, memo: dict[int, Any]) -> PydanticFunctionTool:
        # Request checks deep-copy the tools: keep the model (a class) as it is.
        return PydanticFunctionTool(copy.deepcopy(dict(self), memo), self.model)


def is_model_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def schema_name(model: type[BaseModel]) -> str:
    """A name OpenAI accepts (``^[a-zA-Z0-9_-]{1,64}$``): ``Page[Item]`` -> ``Page_Item_``."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", model.__name__)[:64] or "response"


def pydantic_function_tool(
    model: type[BaseModel], *, name: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """A tool (OpenAI's ``{"type": "function", ...}``) whose parameters are
    ``model``'s JSON schema in strict form, with ``"strict": true``.

    ``name`` defaults to the model's class name, ``description`` to its
    docstring. Given to ``parse(tools=[...])``, the calls' arguments are
    validated into ``model`` instances at
    ``choices[i].message.tool_calls[j].function.parsed_arguments``.
    """
    if not is_model_class(model):
        raise InvalidRequestError(
            f"model must be a pydantic model class, got {model!r}", field="model"
        )
    name = schema_name(model) if name is None else name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {name!r}", field="name"
        )
    if description is None:
        description = model.__doc__
    elif not isinstance(description, str):
        raise InvalidRequestError("description must be a string", field="description")
    definition: dict[str, Any] = {
        "name": name,
        "strict": True,
        "parameters": strict_json_schema(model.model_json_schema()),
    }
    if description:
        definition["description"] = " ".join(description.split())
    return {"type": "function", "function": PydanticFunctionTool(definition, model)}


def tool_models(tools: object) -> dict[str, type[BaseModel]]:
    """The models of the ``pydantic_function_tool``s among ``tools``, by name."""
    found: dict[str, type[BaseModel]] = {}
    if isinstance(tools, list | tuple):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if isinstance(function, PydanticFunctionTool):
                found[str(function.get("name"))] = function.model
    return found


def response_format_for(model: type[BaseModel], strict: bool) -> dict[str, Any]:
    """The ``response_format`` for ``model``: strict form when the provider takes it."""
    schema: dict[str, Any] = model.model_json_schema()
    spec: dict[str, Any] = {"name": schema_name(model)}
    if strict:
        spec["schema"] = strict_json_schema(schema)
        spec["strict"] = True
    else:
        spec["schema"] = schema
    return {"type": "json_schema", "json_schema": spec}


# -- answer side ---------------------------------------------------------------


@dataclass
class Check:
    """What one answer came to: ``parsed`` (a ``ParsedChatCompletion``) when
    every choice validated, else ``problem`` and the ``feedback`` messages that
    continue the conversation for a retry."""

    parsed: ParsedChatCompletion[Any] | None = None
    problem: str = ""
    feedback: list[dict[str, Any]] = field(default_factory=list)


def strip_fence(text: str) -> str:
    """The JSON inside a Markdown code fence (```json ... ```), or ``text`` as is."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    return text


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(step) for step in error.get("loc", ())) or "(root)"
        parts.append(f"{where}: {error.get('msg', '')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def check_answer(
    completion: ChatCompletion,
    response_format: type[BaseModel] | None,
    tools: Mapping[str, type[BaseModel]],
) -> Check:
    """Validate every choice of ``completion``; raise ``ContentRefusedError`` on a refusal."""
    _raise_if_refused(completion)
    data = completion.model_dump()
    for raw, choice in zip(data["choices"], completion.choices, strict=True):
        message = choice.message
        raw_calls = raw["message"].get("tool_calls") or ()
        for raw_call, call in zip(raw_calls, message.tool_calls or (), strict=True):
            model = tools.get(call.function.name)
            arguments = call.function.arguments
            if model is None:
                try:
                    raw_call["function"]["parsed_arguments"] = json.loads(arguments)
                except ValueError:
                    raw_call["function"]["parsed_arguments"] = None
                continue
            try:
                raw_call["function"]["parsed_arguments"] = model.model_validate_json(
                    arguments or "{}"
                )
            except ValidationError as exc:
                return _bad_tool_call(completion, message, call.id, model, exc)
        if response_format is None or message.tool_calls or choice.finish_reason == "tool_calls":
            # An answer that calls tools is not the object: any text beside
            # the calls (a preamble) stays as it came, and parsed is None.
            continue
        text = strip_fence(message.content or "")
        try:
            raw["message"]["parsed"] = response_format.model_validate_json(text)
        except ValidationError as exc:
            problem = (
                f"{completion.provider}: the answer is not a valid {response_format.__name__}:"
                f" {_describe(exc)}; answer was {text[:200]!r}"
            )
            feedback = [
                {"role": "assistant", "content": message.content or ""},
                {
                    "role": "user",
                    "content": (
                        f"Your answer is not a valid {response_format.__name__}: "
                        f"{_describe(exc)}. Answer again with only JSON that matches the schema."
                    ),
                },
            ]
            return Check(problem=problem, feedback=feedback)
    kind: Any = response_format if response_format is not None else Any
    parsed = ParsedChatCompletion[kind].model_validate(data)
    parsed._attempts = completion.attempts
    parsed._cost = completion.cost
    return Check(parsed=parsed)


def _bad_tool_call(
    completion: ChatCompletion,
    message: ChatCompletionMessage,
    bad_id: str,
    model: type[BaseModel],
    exc: ValidationError,
) -> Check:
    calls = message.tool_calls or []
    problem = (
        f"{completion.provider}: the arguments of the {model.__name__} tool call"
        f" are not valid: {_describe(exc)}"
    )
    feedback: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in calls
            ],
        }
    ]
    for call in calls:
        if call.id == bad_id:
            content = (
                f"Invalid arguments for {call.function.name}: {_describe(exc)}."
                " Call the tool again with arguments that match its schema."
            )
        else:
            content = "Not run: another call in this answer had invalid arguments; call again."
        feedback.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return Check(problem=problem, feedback=feedback)


def _raise_if_refused(completion: ChatCompletion) -> None:
    for choice in completion.choices:
        message = choice.message
        if message.refusal:
            refusal = message.refusal
            what = f"the model refused instead of answering: {refusal[:300]}"
        elif choice.finish_reason == "content_filter":
            # Whatever text the answer held is not a refusal: it stays out.
            refusal = FILTERED
            what = "the answer was stopped by a content filter (finish_reason='content_filter')"
        else:
            continue
        error = ContentRefusedError(
            f"{completion.provider}: {what}",
            refusal=refusal,
            provider=completion.provider,
            finish_reason=choice.finish_reason,
        )
        error.attempts = completion.attempts
        raise error


def merge_attempts(
    merged: list[Attempt],
    tried: list[Attempt],
    invalid: ChatCompletion | None = None,
    problem: str = "",
    retrying: bool = False,
) -> None:
    """Add one try's attempts to ``merged``, numbered on; when ``invalid`` (its
    answer did not validate), its answering attempt records the error and the
    usage it was billed for, as an empty answer moved on from does."""
    if invalid is not None:
        for attempt in reversed(tried):
            if attempt.ok:
                attempt.error = ResponseDecodeError(problem, provider=invalid.provider)
                attempt.usage, attempt.model = invalid.usage, invalid.model
                attempt.delay = 0.0 if retrying else None
                break
    for attempt in tried:
        attempt.number = len(merged) + 1
        merged.append(attempt)
