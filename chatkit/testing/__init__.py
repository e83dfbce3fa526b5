"""Test helpers that ship with chatkit: a fake OpenAI-compatible server.

`FakeOpenAIServer` is a real aiohttp server on 127.0.0.1 that streams SSE the
way OpenAI does and injects faults on request (error statuses with
Retry-After, resets, dropped or stalled streams, malformed, huge or error
events), so code built on chatkit can be tested without the network::

    async with FakeOpenAIServer(Behavior(text="Hi there")) as server:
        server.fail(2, 503, retry_after=0)
        ...  # point a client at server.base_url

`FakeAnthropicServer`, `FakeGeminiServer` and `FakeOllamaServer` do the same
for the Anthropic Messages API, the Gemini API (SSE) and Ollama's native
``/api/chat`` (NDJSON), scripted with the same `Behavior` objects.

`ProxyServer` / `start_pproxy` run a real pproxy process (HTTP CONNECT,
SOCKS4 or SOCKS5, with a user name and password) and record from its log
which connections it made, to prove that traffic went through a proxy.

Run ``python -m chatkit.testing`` to serve one from another process.
"""

from ._anthropic_server import FakeAnthropicServer
from ._behavior import Behavior, RecordedRequest
from ._gemini_server import FakeGeminiServer
from ._ollama_server import FakeOllamaServer
from ._openai_server import FakeOpenAIServer
from ._proxies import ProxyConnection, ProxyServer, start_pproxy

__all__ = [
    "Behavior",
    "FakeAnthropicServer",
    "FakeGeminiServer",
    "FakeOllamaServer",
    "FakeOpenAIServer",
    "ProxyConnection",
    "ProxyServer",
    "RecordedRequest",
    "start_pproxy",
]
