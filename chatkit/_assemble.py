"""Assemble streamed chunks into one ``ChatCompletion``.

``add()`` runs once per chunk, so it only appends to lists; joining happens
once, in ``build()``. Tool-call deltas are merged by their ``index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatkit._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    Function,
    ToolCall,
)

__all__ = ["CompletionBuilder"]

_CONTENT_ONLY = frozenset({"content"})


@dataclass
class _ToolCallParts:
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    # Vendor fields beside the standard ones (Gemini's thought signature).
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class _ChoiceParts:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    finish_reason: str | None = None
    # Per-token logprobs, by kind ("content", "refusal"), in arrival order.
    logprobs: dict[str, list[object]] | None = None


class CompletionBuilder:
    """Collects chunks; ``text`` is the first choice's content so far."""

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceParts] = {}
        self._first = self._choices[0] = _ChoiceParts()
        self.usage: CompletionUsage | None = None
        self.id = ""
        self.model = ""
        self.created = 0
        self.system_fingerprint: str | None = None
        self.provider: str | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if not self.id:
            self.id, self.model, self.created = chunk.id, chunk.model, chunk.created
            self.system_fingerprint = chunk.system_fingerprint
            self.provider = chunk.provider
        usage = chunk.usage
        if usage is not None:
            self.usage = usage
        for choice in chunk.choices:
            index = choice.index
            parts = self._first if index == 0 else self._parts(index)
            delta = choice.delta
            content = delta.content
            if content:
                parts.content.append(content)
            # Most deltas carry content and nothing else: the fields the JSON
            # held say so without reading the four that are then unset.
            if delta.__pydantic_fields_set__ != _CONTENT_ONLY:
                self._add_other(parts, delta)
            finish_reason = choice.finish_reason
            if finish_reason is not None:
                parts.finish_reason = finish_reason
            if choice.logprobs is not None:
                _add_logprobs(parts, choice.logprobs)

    def _add_other(self, parts: _ChoiceParts, delta: ChoiceDelta) -> None:
        if delta.role:
            parts.role = delta.role
        if delta.reasoning_content:
            parts.reasoning.append(delta.reasoning_content)
        if delta.refusal:
            parts.refusal.append(delta.refusal)
        if delta.tool_calls:
            for call in delta.tool_calls:
                self._add_tool_call(parts, call.index, call)

    def _parts(self, index: int) -> _ChoiceParts:
        parts = self._choices.get(index)
        if parts is None:
            parts = self._choices[index] = _ChoiceParts()
        return parts

    @staticmethod
    def _add_tool_call(parts: _ChoiceParts, index: int, call: object) -> None:
        slot = parts.tool_calls.get(index)
        if slot is None:
            slot = parts.tool_calls[index] = _ToolCallParts()
        call_id = getattr(call, "id", None)
        if call_id:
            slot.id = call_id
        call_type = getattr(call, "type", None)
        if call_type:
            slot.type = call_type
        function = getattr(call, "function", None)
        if function is not None:
            if function.name:
                slot.name += function.name
            if function.arguments:
                slot.arguments.append(function.arguments)
        extra = getattr(call, "model_extra", None)
        if extra:
            slot.extra.update(extra)

    @property
    def text(self) -> str:
        return "".join(self._first.content)

    @property
    def finish_reason(self) -> str | None:
        return self._first.finish_reason

    def build(self) -> ChatCompletion:
        choices = []
        for index in sorted(self._choices):
            parts = self._choices[index]
            if index != 0 and not (parts.content or parts.tool_calls or parts.finish_reason):
                continue
            tool_calls = [
                ToolCall(
                    id=call.id,
                    type=call.type,
                    function=Function(name=call.name, arguments="".join(call.arguments)),
                    **call.extra,
                )
                for _, call in sorted(parts.tool_calls.items())
            ]
            refusal = "".join(parts.refusal) or None
            # As in a non-streamed answer: no content at all is None when the
            # answer was a refusal or tool calls, "" when it was simply empty.
            content: str | None = "".join(parts.content)
            if not content and (tool_calls or refusal):
                content = None
            message = ChatCompletionMessage(
                role=parts.role,
                content=content,
                reasoning_content="".join(parts.reasoning) or None,
                refusal=refusal,
                tool_calls=tool_calls or None,
            )
            choices.append(
                Choice(
                    index=index,
                    message=message,
                    finish_reason=parts.finish_reason,
                    logprobs=parts.logprobs,
                )
            )
        completion = ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=self.usage,
            system_fingerprint=self.system_fingerprint,
            provider=self.provider,
        )
        return completion


def _add_logprobs(parts: _ChoiceParts, logprobs: object) -> None:
    """Append a chunk's ``{"content": [...], "refusal": [...]}`` token lists."""
    if not isinstance(logprobs, dict):
        return
    collected = parts.logprobs
    if collected is None:
        collected = parts.logprobs = {}
    for kind, tokens in logprobs.items():
        if isinstance(tokens, list):
            collected.setdefault(kind, []).extend(tokens)
