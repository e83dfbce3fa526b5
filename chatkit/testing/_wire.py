"""OpenAI Chat Completions wire objects, pre-encoded as SSE bytes.

The server's fast path writes these bytes in large batches, so everything that
can be encoded once (the chunk envelope, each distinct content piece) is.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ._behavior import Behavior

__all__ = [
    "DONE",
    "MALFORMED",
    "TRICKLE",
    "ChunkEncoder",
    "answer_pieces",
    "completion_object",
    "content_pieces",
    "continued",
    "error_body",
    "prefill_of",
    "prompt_tokens",
    "sse",
    "tool_call_deltas",
]

DONE = b"data: [DONE]\n\n"
MALFORMED = b"data: {not json\n\n"
TRICKLE = b": keep-alive\n\n"

# Arguments of a tool call are streamed in fragments of this many characters,
# roughly the size of a token, so clients have to concatenate them.
_ARG_FRAGMENT = 8

# A word piece is optional leading whitespace plus a word; a trailing run of
# whitespace is its own piece, so joining the pieces gives the text back.
_PIECE = re.compile(r"\s*\S+|\s+")


def _dumps(obj: Any) -> str:
    # Compact separators like OpenAI; raw UTF-8 so multi-byte characters can
    # land across read boundaries in client tests.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(obj: Any) -> bytes:
    """One ``data:`` event holding `obj` as JSON."""
    return b"data: " + _dumps(obj).encode() + b"\n\n"


def content_pieces(behavior: Behavior) -> list[str]:
    """The content pieces of one repetition of the answer."""
    if behavior.chunks is not None:
        return list(behavior.chunks)
    return _PIECE.findall(behavior.text)


def answer_pieces(behavior: Behavior, encoder: ChunkEncoder | None = None) -> list[str]:
    """The content pieces of the whole answer: the huge piece, then pieces * repeat."""
    pieces = content_pieces(behavior) * max(behavior.repeat, 0)
    if behavior.huge_line is not None:
        # Size the padding so the whole "data: ..." line is about huge_line bytes.
        overhead = len(encoder.delta({"content": ""})) - 2 if encoder is not None else 0
        pieces.insert(0, "x" * max(behavior.huge_line - overhead, 1))
    return pieces


def prefill_of(messages: list[Any]) -> str | None:
    """The text of a final assistant message (a prefill to continue), or None."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return content if isinstance(content, str) else ""


def continued(behavior: Behavior, prefill: str) -> Behavior:
    """`behavior` answering as a model continuing `prefill`: the rest of its
    answer after the prefill (the whole answer when it does not start so),
    after `resume_echo` repeated words of the prefill."""
    full = "".join(content_pieces(behavior)) * max(behavior.repeat, 1)
    rest = full[len(prefill) :] if full.startswith(prefill) else full
    if behavior.resume_echo > 0:
        rest = "".join(_PIECE.findall(prefill)[-behavior.resume_echo :]) + rest
    return dataclasses.replace(behavior, text=rest, chunks=None, repeat=1, huge_line=None)


def tool_call_deltas(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI streaming deltas for `tool_calls`: a head per call, then argument fragments."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(tool_calls):
        head = {
            "index": index,
            "id": call.get("id", f"call_{index}"),
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        deltas.append({"tool_calls": [head]})
        arguments: str = call.get("arguments", "")
        for start in range(0, len(arguments), _ARG_FRAGMENT):
            fragment = arguments[start : start + _ARG_FRAGMENT]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    return deltas


def prompt_tokens(messages: list[Any]) -> int:
    """Words in the messages' text, a stand-in for a tokenizer."""
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    count += len(part["text"].split())
    return count


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def error_body(message: str, error_type: str, *, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": None}}


class ChunkEncoder:
    """Encodes ``chat.completion.chunk`` events for one response.

    The envelope (id, model, ...) is the same for every chunk of a response,
    so it is encoded once and only the delta is encoded per chunk.
    """

    def __init__(
        self, completion_id: str, created: int, model: str, *, include_usage: bool
    ) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        envelope = _dumps(self._head)[:-1].encode()  # drop "}" to append choices
        self._prefix = b"data: " + envelope + b',"choices":[{"index":0,"delta":'
        # OpenAI sends "usage": null on every chunk once include_usage is on.
        self._usage_null = b',"usage":null' if include_usage else b""
        self._tail = b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"

    def delta(self, delta: dict[str, Any]) -> bytes:
        """A chunk carrying `delta` and no finish_reason."""
        return self._prefix + _dumps(delta).encode() + self._tail

    def finish(self, finish_reason: str) -> bytes:
        """The chunk with an empty delta that ends the choice."""
        reason = _dumps(finish_reason).encode()
        return (
            self._prefix
            + b'{},"logprobs":null,"finish_reason":'
            + reason
            + b"}]"
            + self._usage_null
            + b"}\n\n"
        )

    def usage(self, prompt: int, completion: int) -> bytes:
        """The final usage-only chunk (``choices`` empty)."""
        return sse({**self._head, "choices": [], "usage": usage(prompt, completion)})


def completion_object(
    behavior: Behavior,
    *,
    completion_id: str,
    created: int,
    model: str,
    finish_reason: str,
    prompt: int,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object; tokens counted as the stream would."""
    pieces = answer_pieces(behavior)
    content = "".join(pieces)
    completion = len(pieces) + len(behavior.reasoning or ())
    completion += len(tool_call_deltas(behavior.tool_calls or []))
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if behavior.reasoning:
        message["reasoning_content"] = "".join(behavior.reasoning)
    if behavior.tool_calls:
        if not content:
            message["content"] = None  # OpenAI sends null content with tool calls
        message["tool_calls"] = [
            {
                "id": call.get("id", f"call_{index}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments", "")},
            }
            for index, call in enumerate(behavior.tool_calls)
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage(prompt, completion),
    }
