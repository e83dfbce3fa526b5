"""OpenAI-compatible response types.

Every model keeps unknown wire fields (``extra="allow"``): a vendor adding a
field must never break a caller. Chunks are built straight from the SSE bytes
with ``model_validate_json``; no dict round-trips on the hot path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from chatkit._attempt import Attempt
from chatkit._usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChunkChoice",
    "CompletionTokensDetails",
    "CompletionUsage",
    "Function",
    "Model",
    "PromptTokensDetails",
    "ToolCall",
    "set_provider",
]


class _Wire(BaseModel):
    # As chatkit._usage's: unknown wire fields are kept.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ChoiceDeltaFunctionCall(_Wire):
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(_Wire):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: ChoiceDeltaFunctionCall | None = None


class ChoiceDelta(_Wire):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChunkChoice(_Wire):
    index: int = 0
    delta: ChoiceDelta = ChoiceDelta()
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(_Wire):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    provider: str | None = None

    @property
    def text(self) -> str:
        """Choice 0's content delta, or ``""`` (also for usage-only chunks).

        With ``n > 1`` a chunk may carry any choices in any order; ``text``
        follows choice 0 only, as ``stream.text`` and ``partial_text`` do.
        """
        for choice in self.choices:
            if choice.index == 0:
                return choice.delta.content or ""
        return ""

    @property
    def has_content(self) -> bool:
        """True when the chunk carries text, reasoning or a tool call: the commit point."""
        for choice in self.choices:
            delta = choice.delta
            if delta.content or delta.reasoning_content or delta.tool_calls or delta.refusal:
                return True
        return False


class Function(_Wire):
    name: str = ""
    arguments: str = ""


class ToolCall(_Wire):
    id: str = ""
    type: Literal["function"] | str = "function"
    function: Function = Function()


class ChatCompletionMessage(_Wire):
    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Wire):
    index: int = 0
    message: ChatCompletionMessage = ChatCompletionMessage()
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletion(_Wire):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = []
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    provider: str | None = None
    _attempts: list[Attempt] = PrivateAttr(default_factory=list)
    _cost: float | None = PrivateAttr(default=None)

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt made to produce this answer (see ``chatkit.Attempt``)."""
        return self._attempts

    @property
    def cost(self) -> float | None:
        """US dollars this answer cost, billed attempts that were moved on from
        included; None when a price or the usage is unknown (``chatkit.Price``)."""
        return self._cost

    @property
    def text(self) -> str:
        """Choice 0's message content, or ``""``."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.message.content or ""
        return ""


class Model(_Wire):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    provider: str | None = None


def set_provider(obj: ChatCompletionChunk | ChatCompletion, provider: str | None) -> None:
    """Stamp who answered, bypassing validation: this runs once per chunk."""
    obj.__dict__["provider"] = provider
