"""OpenAI-compatible vendors and local servers: one declaration each.

Every preset is the ``OpenAI`` provider (same wire code, ``openai.py``) with its
own name, base URL, key variable and default model. Adding one is one line in
``PRESETS`` below. ``AzureOpenAI`` differs in auth and URL shape, so it is a
small subclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from chatkit._config import env_value
from chatkit._errors import MissingAuthError, ModelNotFoundError
from chatkit._request import ChatRequest
from chatkit._transport import HTTPCall
from chatkit._types import ChatCompletion, ChatCompletionChunk
from chatkit.providers._base import Capabilities, SupportsAclose
from chatkit.providers.openai import OpenAI

__all__ = ["PRESETS", "AzureOpenAI", "LocalServer", "preset"]

_NO_VISION = Capabilities(vision=False)
_TEXT_ONLY = Capabilities(tools=False, vision=False, json_schema=False)
# vLLM and llama.cpp's server continue a final assistant message when asked
# with ``continue_final_message: true, add_generation_prompt: false`` (llama.cpp
# does it for any final assistant message): a broken stream can be resumed.
_CONTINUES = Capabilities(continue_message=True)


class LocalServer(OpenAI):
    """A local OpenAI-compatible server (vLLM, llama.cpp, LM Studio): its model is its own.

    With no ``model`` in the call and no ``default_model`` given, the model is
    the first one the server lists at ``GET /v1/models``, asked once per
    provider instance (a new instance asks again, e.g. after loading another
    model). A server that lists none is a ``ModelNotFoundError`` naming
    ``model``: such servers reject made-up names, or worse, ignore them.
    """

    default_model: str = ""
    requires_key: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served_model: str | None = None

    async def _with_model(self, request: ChatRequest, http: HTTPCall) -> ChatRequest:
        if request.model or self.default_model:
            return request
        if self._served_model is None:
            models = await self.list_models(http)
            if not models:
                raise ModelNotFoundError(
                    f"model: {self.name} at {self.base_url} lists no models (GET /models);"
                    " load one in the server or pass model=...",
                    field="model",
                )
            self._served_model = models[0].id
        return dataclasses.replace(request, model=self._served_model)

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        request = await self._with_model(request, http)
        chunks = super().stream(request, http)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            # Closing this stream closes the upstream one at once, not at GC.
            if isinstance(chunks, SupportsAclose):
                await chunks.aclose()

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        return await super().complete(await self._with_model(request, http), http)


def preset(
    name: str,
    base_url: str,
    key_env: str | None,
    default_model: str,
    *,
    capabilities: Capabilities | None = None,
    base: type[OpenAI] = OpenAI,
) -> type[OpenAI]:
    """An ``OpenAI`` subclass for a vendor; ``key_env=None`` for keyless local servers.

    ``base=LocalServer`` with ``default_model=""`` asks the server for its model.
    """
    prefix = name.upper().replace(".", "").replace(" ", "_")
    attributes: dict[str, Any] = {
        "name": name,
        "default_base_url": base_url,
        "api_key_env": (key_env,) if key_env else (),
        "base_url_env": (f"{prefix}_BASE_URL",),
        "default_model": default_model,
        "requires_key": key_env is not None,
        "__doc__": f"{name} through its OpenAI-compatible endpoint ({base_url}).",
        "__module__": __name__,
    }
    if capabilities is not None:
        attributes["capabilities"] = capabilities
    return type(name.replace(".", "").replace(" ", ""), (base,), attributes)


# registry name -> provider class
PRESETS: dict[str, type[OpenAI]] = {
    "groq": preset(
        "Groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "llama-3.3-70b-versatile"
    ),
    "openrouter": preset(
        "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai/gpt-4o-mini"
    ),
    "deepseek": preset(
        "DeepSeek",
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
        "deepseek-chat",
        capabilities=_NO_VISION,
    ),
    "together": preset(
        "Together",
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    "mistral": preset(
        "Mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "mistral-small-latest"
    ),
    "fireworks": preset(
        "Fireworks",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
        "accounts/fireworks/models/llama-v3p3-70b-instruct",
    ),
    "xai": preset("xAI", "https://api.x.ai/v1", "XAI_API_KEY", "grok-3-mini"),
    "cerebras": preset(
        "Cerebras",
        "https://api.cerebras.ai/v1",
        "CEREBRAS_API_KEY",
        "llama-3.3-70b",
        capabilities=_NO_VISION,
    ),
    "deepinfra": preset(
        "DeepInfra",
        "https://api.deepinfra.com/v1/openai",
        "DEEPINFRA_API_KEY",
        "meta-llama/Llama-3.3-70B-Instruct",
    ),
    "perplexity": preset(
        "Perplexity",
        "https://api.perplexity.ai",
        "PERPLEXITY_API_KEY",
        "sonar",
        capabilities=_TEXT_ONLY,
    ),
    # Local servers: no key, never picked automatically (nothing says they run).
    # Each serves the model it was started with (or loaded): asked, never guessed.
    "vllm": preset(
        "vLLM", "http://localhost:8000/v1", None, "", capabilities=_CONTINUES, base=LocalServer
    ),
    "llamacpp": preset(
        "LlamaCpp", "http://localhost:8080/v1", None, "", capabilities=_CONTINUES, base=LocalServer
    ),
    "lmstudio": preset("LMStudio", "http://localhost:1234/v1", None, "", base=LocalServer),
}


class AzureOpenAI(OpenAI):
    """Azure OpenAI: a deployment URL, the ``api-key`` header and ``api-version``.

    ``base_url`` (or ``AZURE_OPENAI_ENDPOINT`` plus ``deployment``) points at
    ``https://{resource}.openai.azure.com/openai/deployments/{deployment}``;
    the key comes from ``api_key`` or ``AZURE_OPENAI_API_KEY``.
    """

    name: ClassVar[str] = "AzureOpenAI"
    default_base_url: ClassVar[str] = "https://example.openai.azure.com/openai"
    api_key_env: ClassVar[tuple[str, ...]] = ("AZURE_OPENAI_API_KEY",)
    base_url_env: ClassVar[tuple[str, ...]] = ()
    default_api_version: ClassVar[str] = "2024-10-21"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        deployment: str | None = None,
        api_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        if base_url is None:
            endpoint = env_value("AZURE_OPENAI_ENDPOINT")
            deployment = deployment or env_value("AZURE_OPENAI_DEPLOYMENT")
            if endpoint is None or deployment is None:
                raise MissingAuthError(
                    "AzureOpenAI needs base_url=... or AZURE_OPENAI_ENDPOINT and"
                    " AZURE_OPENAI_DEPLOYMENT",
                    provider=self.name,
                    env_var="AZURE_OPENAI_ENDPOINT",
                )
            base_url = f"{endpoint.rstrip('/')}/openai/deployments/{deployment}"
        if api_key is None and env_value(*self.api_key_env) is None:
            raise MissingAuthError(
                "AzureOpenAI needs an API key: set AZURE_OPENAI_API_KEY or pass api_key=...",
                provider=self.name,
                env_var="AZURE_OPENAI_API_KEY",
            )
        super().__init__(api_key, base_url, **kwargs)
        self.api_version = (
            api_version or env_value("OPENAI_API_VERSION") or self.default_api_version
        )

    @classmethod
    def is_configured(cls) -> bool:
        return all(
            env_value(v) is not None
            for v in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT")
        )

    def _auth_headers(self, accept: str) -> dict[str, str]:
        headers = super()._auth_headers(accept)
        token = headers.pop("Authorization", "")
        headers["api-key"] = token.removeprefix("Bearer ")
        return headers

    def _with_version(self, request: ChatRequest) -> ChatRequest:
        query = {"api-version": self.api_version, **request.extra_query}
        return dataclasses.replace(request, extra_query=query)

    def stream(self, request: ChatRequest, http: HTTPCall) -> AsyncIterator[ChatCompletionChunk]:
        return super().stream(self._with_version(request), http)

    async def complete(self, request: ChatRequest, http: HTTPCall) -> ChatCompletion:
        return await super().complete(self._with_version(request), http)
