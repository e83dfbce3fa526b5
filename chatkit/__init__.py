"""chatkit: an async-first streaming chat SDK.

``import chatkit`` stays cheap: names are loaded from their modules on first
use (pydantic and aiohttp cost hundreds of milliseconds to import).

The import block below is the one list of public names. Type checkers read it
as it is; at run time ``_install_lazy_imports`` reads it from this file's
source (the shape of anyio's ``_lazyimport``) to build ``__getattr__``,
``__dir__`` and ``__all__``, and only if the source is unavailable does the
block run, importing everything at once.
"""

from __future__ import annotations

from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {}
"""Public name -> the module that defines it, read from the import block."""


def _install_lazy_imports() -> bool:
    import ast
    import importlib

    try:
        # The loader, not open(__file__): it also serves zips, and says None
        # (rather than handing over bytecode) for a sourceless install.
        source = __spec__.loader.get_source(__name__)  # type: ignore[union-attr]
        tree = ast.parse(source) if source else None
    except Exception:
        tree = None
    if tree is None:
        return False  # the block below then imports everything now
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.BoolOp):
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module is not None
                for alias in statement.names:
                    _EXPORTS[alias.asname or alias.name] = statement.module

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'chatkit' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    globals()["__getattr__"] = __getattr__
    return True


_names_before = set(globals())
if TYPE_CHECKING or not _install_lazy_imports():
    from chatkit._aliases import ProviderSpec as ProviderSpec
    from chatkit._aliases import TimeoutTypes as TimeoutTypes
    from chatkit._attempt import Attempt as Attempt
    from chatkit._client import AsyncClient as AsyncClient
    from chatkit._config import Limits as Limits
    from chatkit._config import Timeout as Timeout
    from chatkit._counting import TokenCount as TokenCount
    from chatkit._errors import APIConnectionError as APIConnectionError
    from chatkit._errors import APIError as APIError
    from chatkit._errors import APIStatusError as APIStatusError
    from chatkit._errors import APITimeoutError as APITimeoutError
    from chatkit._errors import AuthenticationError as AuthenticationError
    from chatkit._errors import BadRequestError as BadRequestError
    from chatkit._errors import ChatkitError as ChatkitError
    from chatkit._errors import ClientClosedError as ClientClosedError
    from chatkit._errors import ConflictError as ConflictError
    from chatkit._errors import ContentRefusedError as ContentRefusedError
    from chatkit._errors import EmptyAnswerError as EmptyAnswerError
    from chatkit._errors import InternalServerError as InternalServerError
    from chatkit._errors import InvalidRequestError as InvalidRequestError
    from chatkit._errors import MissingAuthError as MissingAuthError
    from chatkit._errors import ModelNotFoundError as ModelNotFoundError
    from chatkit._errors import NotFoundError as NotFoundError
    from chatkit._errors import OpenAIError as OpenAIError
    from chatkit._errors import OverloadedError as OverloadedError
    from chatkit._errors import PermissionDeniedError as PermissionDeniedError
    from chatkit._errors import PoolTimeoutError as PoolTimeoutError
    from chatkit._errors import ProviderNotFoundError as ProviderNotFoundError
    from chatkit._errors import ProxyConfigError as ProxyConfigError
    from chatkit._errors import ProxyError as ProxyError
    from chatkit._errors import RateLimitError as RateLimitError
    from chatkit._errors import ResponseDecodeError as ResponseDecodeError
    from chatkit._errors import ResponseTooLargeError as ResponseTooLargeError
    from chatkit._errors import RetryNoProviderError as RetryNoProviderError
    from chatkit._errors import RetryProviderError as RetryProviderError
    from chatkit._errors import SSEDecodeError as SSEDecodeError
    from chatkit._errors import StreamInterrupted as StreamInterrupted
    from chatkit._errors import UnprocessableEntityError as UnprocessableEntityError
    from chatkit._errors import UnsupportedCapabilityError as UnsupportedCapabilityError
    from chatkit._health import BudgetLeft as BudgetLeft
    from chatkit._health import CircuitBreaker as CircuitBreaker
    from chatkit._health import CircuitOpenError as CircuitOpenError
    from chatkit._health import InMemoryStore as InMemoryStore
    from chatkit._health import ProviderHealth as ProviderHealth
    from chatkit._health import RateBudgetError as RateBudgetError
    from chatkit._health import StateStore as StateStore
    from chatkit._parsed import ParsedChatCompletion as ParsedChatCompletion
    from chatkit._parsed import ParsedChatCompletionMessage as ParsedChatCompletionMessage
    from chatkit._parsed import ParsedChoice as ParsedChoice
    from chatkit._parsed import ParsedFunction as ParsedFunction
    from chatkit._parsed import ParsedFunctionToolCall as ParsedFunctionToolCall
    from chatkit._parsed import pydantic_function_tool as pydantic_function_tool
    from chatkit._parsed_stream import AsyncParsedChatStream as AsyncParsedChatStream
    from chatkit._parsed_stream import ParsedChatStream as ParsedChatStream
    from chatkit._policy import RetryPolicy as RetryPolicy
    from chatkit._prices import PRICES as PRICES
    from chatkit._prices import PRICES_AS_OF as PRICES_AS_OF
    from chatkit._prices import Price as Price
    from chatkit._ratelimit import RateLimit as RateLimit
    from chatkit._request import OPENAI_PARAMS as OPENAI_PARAMS
    from chatkit._request import ChatRequest as ChatRequest
    from chatkit._resume import Resume as Resume
    from chatkit._resume import ResumeRecord as ResumeRecord
    from chatkit._retry_provider import IterListProvider as IterListProvider
    from chatkit._retry_provider import RetryProvider as RetryProvider
    from chatkit._streaming import AsyncChatStream as AsyncChatStream
    from chatkit._sync import ChatStream as ChatStream
    from chatkit._sync import Client as Client
    from chatkit._types import ChatCompletion as ChatCompletion
    from chatkit._types import ChatCompletionChunk as ChatCompletionChunk
    from chatkit._types import ChatCompletionMessage as ChatCompletionMessage
    from chatkit._types import Choice as Choice
    from chatkit._types import ChoiceDelta as ChoiceDelta
    from chatkit._types import ChoiceDeltaToolCall as ChoiceDeltaToolCall
    from chatkit._types import ChunkChoice as ChunkChoice
    from chatkit._types import CompletionTokensDetails as CompletionTokensDetails
    from chatkit._types import CompletionUsage as CompletionUsage
    from chatkit._types import Model as Model
    from chatkit._types import PromptTokensDetails as PromptTokensDetails
    from chatkit._types import ToolCall as ToolCall
    from chatkit.redis_state import RedisState as RedisState

# Lazily: the names the block lists; eagerly: the names it imported.
_imported = {
    name
    for name in set(globals()) - _names_before
    # importing chatkit._x binds the subpackage "providers" too: not a name of ours
    if not name.startswith("_") and not isinstance(globals()[name], _ModuleType)
}
__all__ = sorted({*_EXPORTS, *_imported, "__version__"})
del _names_before, _imported, _ModuleType


def __dir__() -> list[str]:
    return list(__all__)
