"""chatkit: an async-first streaming chat SDK.

``import chatkit`` stays cheap: names are loaded from their modules on first
use (pydantic and aiohttp cost hundreds of milliseconds to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AsyncChatStream": "chatkit._streaming",
    "AsyncClient": "chatkit._client",
    "Attempt": "chatkit._attempt",
    "ChatCompletion": "chatkit._types",
    "ChatCompletionChunk": "chatkit._types",
    "ChatCompletionMessage": "chatkit._types",
    "ChatRequest": "chatkit._request",
    "ChatStream": "chatkit._sync",
    "Choice": "chatkit._types",
    "ChoiceDelta": "chatkit._types",
    "ChoiceDeltaToolCall": "chatkit._types",
    "ChunkChoice": "chatkit._types",
    "Client": "chatkit._sync",
    "CompletionTokensDetails": "chatkit._types",
    "CompletionUsage": "chatkit._types",
    "IterListProvider": "chatkit._retry_provider",
    "Limits": "chatkit._config",
    "Model": "chatkit._types",
    "OPENAI_PARAMS": "chatkit._request",
    "PromptTokensDetails": "chatkit._types",
    "RetryPolicy": "chatkit._retry",
    "RetryProvider": "chatkit._retry_provider",
    "Timeout": "chatkit._config",
    "ToolCall": "chatkit._types",
}
_ERRORS = (
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatkitError",
    "ClientClosedError",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "MissingAuthError",
    "ModelNotFoundError",
    "NotFoundError",
    "OpenAIError",
    "OverloadedError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "ProviderNotFoundError",
    "ProxyConfigError",
    "ProxyError",
    "RateLimitError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RetryNoProviderError",
    "RetryProviderError",
    "SSEDecodeError",
    "StreamInterrupted",
    "UnprocessableEntityError",
    "UnsupportedCapabilityError",
)
_EXPORTS.update(dict.fromkeys(_ERRORS, "chatkit._errors"))

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncChatStream",
    "AsyncClient",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatRequest",
    "ChatStream",
    "ChatkitError",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaToolCall",
    "ChunkChoice",
    "Client",
    "ClientClosedError",
    "CompletionTokensDetails",
    "CompletionUsage",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "IterListProvider",
    "Limits",
    "MissingAuthError",
    "Model",
    "ModelNotFoundError",
    "NotFoundError",
    "OPENAI_PARAMS",
    "OpenAIError",
    "OverloadedError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "PromptTokensDetails",
    "ProviderNotFoundError",
    "ProxyConfigError",
    "ProxyError",
    "RateLimitError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RetryNoProviderError",
    "RetryPolicy",
    "RetryProvider",
    "RetryProviderError",
    "SSEDecodeError",
    "StreamInterrupted",
    "Timeout",
    "ToolCall",
    "UnprocessableEntityError",
    "UnsupportedCapabilityError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chatkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from chatkit._attempt import Attempt
    from chatkit._client import AsyncClient
    from chatkit._config import Limits, Timeout
    from chatkit._errors import (
        APIConnectionError,
        APIError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ChatkitError,
        ClientClosedError,
        ConflictError,
        InternalServerError,
        InvalidRequestError,
        MissingAuthError,
        ModelNotFoundError,
        NotFoundError,
        OpenAIError,
        OverloadedError,
        PermissionDeniedError,
        PoolTimeoutError,
        ProviderNotFoundError,
        ProxyConfigError,
        ProxyError,
        RateLimitError,
        ResponseDecodeError,
        ResponseTooLargeError,
        RetryNoProviderError,
        RetryProviderError,
        SSEDecodeError,
        StreamInterrupted,
        UnprocessableEntityError,
        UnsupportedCapabilityError,
    )
    from chatkit._request import OPENAI_PARAMS, ChatRequest
    from chatkit._retry import RetryPolicy
    from chatkit._retry_provider import IterListProvider, RetryProvider
    from chatkit._streaming import AsyncChatStream
    from chatkit._sync import ChatStream, Client
    from chatkit._types import (
        ChatCompletion,
        ChatCompletionChunk,
        ChatCompletionMessage,
        Choice,
        ChoiceDelta,
        ChoiceDeltaToolCall,
        ChunkChoice,
        CompletionTokensDetails,
        CompletionUsage,
        Model,
        PromptTokensDetails,
        ToolCall,
    )
