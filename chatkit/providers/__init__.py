"""Providers: one module per wire API, and the registry that names them.

``PROVIDERS`` maps a lower-case name (as used in ``"name:model"`` strings and
``provider="name"``) to a provider class.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from chatkit._config import env_value
from chatkit._errors import InvalidRequestError, MissingAuthError, ProviderNotFoundError
from chatkit.providers._base import (
    DeclaresKeyVariables,
    Provider,
    ReportsAvailable,
    ReportsConfigured,
    is_provider_class,
    provider_name,
)
from chatkit.providers.anthropic import Anthropic
from chatkit.providers.gemini import Gemini
from chatkit.providers.local import Local
from chatkit.providers.ollama import Ollama
from chatkit.providers.openai import OpenAI
from chatkit.providers.presets import PRESETS, AzureOpenAI

if TYPE_CHECKING:
    from chatkit._retry_provider import IterListProvider, RetryProvider

__all__ = [
    "DEFAULT_ORDER",
    "ENTRY_POINT_GROUP",
    "PROVIDERS",
    "PRESETS",
    "Anthropic",
    "AzureOpenAI",
    "Cerebras",
    "DeepInfra",
    "DeepSeek",
    "Fireworks",
    "Gemini",
    "Groq",
    "IterListProvider",
    "LMStudio",
    "LlamaCpp",
    "Local",
    "Mistral",
    "Ollama",
    "OpenAI",
    "OpenRouter",
    "Perplexity",
    "Provider",
    "RetryProvider",
    "Together",
    "default_provider_class",
    "get_provider_class",
    "is_configured",
    "model_for",
    "provider_name",
    "registered_name",
    "split_model",
    "vLLM",
    "xAI",
]

# The order in which ``Client()`` without a provider looks for one that is set up:
# API keys first (in this order), then a local Ollama, then the embedded model.
DEFAULT_ORDER = (
    "openai",
    "anthropic",
    "gemini",
    "groq",
    "openrouter",
    "deepseek",
    "mistral",
    "together",
    "fireworks",
    "xai",
    "cerebras",
    "deepinfra",
    "perplexity",
    "azure",
    "ollama",
    "local",
)

# Third-party packages register providers under this entry point group:
#   [project.entry-points."chatkit.providers"]
#   myvendor = "myvendor_chatkit:MyVendorProvider"
ENTRY_POINT_GROUP = "chatkit.providers"

_COMBINATORS = ("IterListProvider", "RetryProvider")


def __getattr__(name: str) -> Any:
    # The combinators drive providers, so they live a layer up (chatkit._retry_provider);
    # imported on first use here so that ``from chatkit.providers import RetryProvider``
    # works as in g4f without an import cycle.
    if name in _COMBINATORS:
        from chatkit import _retry_provider

        value = getattr(_retry_provider, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PROVIDERS: dict[str, type[Provider]] = {
    "openai": OpenAI,
    "anthropic": Anthropic,
    "gemini": Gemini,
    "ollama": Ollama,
    "local": Local,
    "azure": AzureOpenAI,
    **PRESETS,
}

# The presets by class name: ``from chatkit.providers import Groq``.
Groq = PRESETS["groq"]
OpenRouter = PRESETS["openrouter"]
DeepSeek = PRESETS["deepseek"]
Together = PRESETS["together"]
Mistral = PRESETS["mistral"]
Fireworks = PRESETS["fireworks"]
xAI = PRESETS["xai"]
Cerebras = PRESETS["cerebras"]
DeepInfra = PRESETS["deepinfra"]
Perplexity = PRESETS["perplexity"]
vLLM = PRESETS["vllm"]
LlamaCpp = PRESETS["llamacpp"]
LMStudio = PRESETS["lmstudio"]


def get_provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name`` (case-insensitive)."""
    found = PROVIDERS.get(name.lower())
    if found is None:
        found = _load_entry_point(name.lower())
    if found is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ProviderNotFoundError(
            f"provider: unknown provider {name!r}; known providers: {known}", field="provider"
        )
    return found


def _load_entry_point(name: str) -> type[Provider] | None:
    # Looked up only on a miss, so importing chatkit never scans installed packages.
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name.lower() == name:
            loaded = entry.load()
            if not isinstance(loaded, type):
                continue
            if not is_provider_class(loaded):
                raise InvalidRequestError(
                    f"provider must be a provider class, instance or registered name, got"
                    f" the class {loaded.__name__} (entry point {entry.name!r})",
                    field="provider",
                )
            PROVIDERS[name] = loaded
            return loaded
    return None


def is_configured(cls: type) -> bool:
    """Whether ``cls`` can be used as it is: its key is set, or it says so itself."""
    if isinstance(cls, ReportsConfigured):
        return bool(cls.is_configured())
    if isinstance(cls, ReportsAvailable):
        return bool(cls.is_available())
    if isinstance(cls, DeclaresKeyVariables) and cls.api_key_env:
        return env_value(*cls.api_key_env) is not None
    return False


def default_provider_class() -> type[Provider]:
    """The first provider in ``DEFAULT_ORDER`` that is configured in this environment."""
    for name in DEFAULT_ORDER:
        cls = PROVIDERS.get(name)
        if cls is not None and is_configured(cls):
            return cls
    raise MissingAuthError(
        "no provider is configured: set an API key such as OPENAI_API_KEY, ANTHROPIC_API_KEY"
        " or GEMINI_API_KEY, pass base_url=... for an OpenAI-compatible server, or install"
        " the embedded model with pip install 'chatkit[local]'",
        env_var="OPENAI_API_KEY",
    )


# -- the model string -----------------------------------------------------------

# Servers whose model names are their own tags, where a colon belongs to the
# name (Ollama's "mistral:7b", whatever a local server was started with):
# another provider's name before the colon is part of the model, not a route.
TAGGED_MODEL_NAMES = frozenset({"ollama", "local", "vllm", "llamacpp", "lmstudio"})


def split_model(model: str) -> tuple[str | None, str]:
    """``"groq:llama-3.3"`` -> ``("groq", "llama-3.3")`` when the prefix names a provider.

    Only for a call whose provider is not fixed: the prefix then chooses it.
    """
    prefix, sep, rest = model.partition(":")
    if sep and prefix.lower() in PROVIDERS:
        return prefix.lower(), rest
    return None, model


def registered_name(provider: object) -> str | None:
    """The registry name of a provider's exact class, or None (third-party, combinators)."""
    cls = provider if isinstance(provider, type) else type(provider)
    for name, registered in PROVIDERS.items():
        if registered is cls:
            return name
    return None


def model_for(provider: Provider | type[Provider], model: str) -> str:
    """The model string that ``provider``, fixed for this call, receives for ``model``.

    The ``"name:"`` prefix routes only calls whose provider is not fixed.
    Here the provider is already chosen, so the string goes upstream as it
    is, except in two cases:

    - the prefix is the provider's own registry name (``"anthropic:claude-..."``
      with ``Anthropic``, ``"ollama:llama3.2"`` with ``Ollama``): stripped, so
      one model string works with and without a fixed provider;
    - the prefix names another provider and this provider is a vendor API
      whose ids never carry one (``"openai:gpt-4o"`` with ``Anthropic``):
      ``InvalidRequestError`` before any I/O, instead of sending ``gpt-4o``
      to the wrong vendor.

    Kept as they are: every model of a server with its own tags (Ollama,
    ``Local``, vLLM, llama.cpp, LM Studio), of the generic ``OpenAI`` provider
    at a caller-chosen ``base_url`` (any OpenAI-compatible server, a gateway
    that routes by prefix itself), and of third-party providers and
    combinators, whose naming chatkit does not know.
    """
    prefix, sep, rest = model.partition(":")
    named = prefix.lower()
    if not sep or named not in PROVIDERS:
        return model
    own = registered_name(provider)
    if own is None or (own == "openai" and _at_own_server(provider) is False):
        return model
    if named == own:
        return rest
    if own in TAGGED_MODEL_NAMES:
        return model
    raise InvalidRequestError(
        f"model: {model!r} names the provider {prefix!r}, but this call's provider is"
        f" {provider_name(provider)}; drop the prefix, or leave the provider unset so"
        " that the prefix chooses it",
        field="model",
    )


def _at_own_server(provider: Provider | type[Provider]) -> bool | None:
    """Whether an ``OpenAI`` instance talks to its class's default URL (None for a class)."""
    if not isinstance(provider, OpenAI):
        return None
    return provider.base_url == provider.default_base_url
