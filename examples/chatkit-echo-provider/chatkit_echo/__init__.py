"""A chatkit provider for the Echo wire format, built on ``chatkit.providers.base`` only.

The wire format (made up for this example, so that nothing here is OpenAI's):
``POST {base_url}/v1/echo`` with the model and the messages as JSON; the
answer is an SSE stream of ``token`` events whose data is plain text, ended by
one ``done`` event whose data is the finish reason. An ``error`` event (a JSON
object with ``message`` and ``type``) reports a failure inside the 200 stream.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from chatkit.providers.base import (
    Capabilities,
    ChatCompletionChunk,
    ChatRequest,
    ChoiceDelta,
    ChunkChoice,
    HTTPCall,
    InvalidRequestError,
    UnsupportedCapabilityError,
    error_from_event,
    set_provider,
    sse_events,
    stream_ended_early,
)

__all__ = ["EchoProvider"]

DEFAULT_BASE_URL = "http://127.0.0.1:8765"


class EchoProvider:
    """An Echo server at ``base_url`` (else ``ECHO_BASE_URL``), key from ``ECHO_API_KEY``.

    No chatkit base class: chatkit only needs ``stream()``; ``name``,
    ``default_model``, ``capabilities`` and ``check_request`` are optional.
    """

    name = "Echo"
    default_model = "echo-1"
    # Text in, text out: chatkit refuses tools, images and JSON modes before any I/O.
    capabilities = Capabilities(
        tools=False,
        vision=False,
        json_object=False,
        json_schema=False,
        strict_json_schema=False,
    )
    # What ``chatkit models`` and the default-provider search read.
    api_key_env = ("ECHO_API_KEY",)

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        # Constructors do no I/O: chatkit may build a provider it never calls.
        url = base_url or os.environ.get("ECHO_BASE_URL") or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"base_url must be an http(s) URL: {url!r}", field="base_url")
        self.base_url = url.rstrip("/")
        self._api_key = api_key or os.environ.get("ECHO_API_KEY")

    def __repr__(self) -> str:
        # Never the key itself.
        key = "set" if self._api_key else "none"
        return f"EchoProvider(base_url={self.base_url!r}, api_key={key})"

    def check_request(self, request: ChatRequest) -> None:
        """Refuse, before any I/O, what the Echo API cannot do."""
        self.capabilities.check(request, self.name)
        if request.params.get("n", 1) != 1:
            raise UnsupportedCapabilityError(f"{self.name} answers one choice only", field="n")

    async def stream(
        self, request: ChatRequest, http: HTTPCall
    ) -> AsyncIterator[ChatCompletionChunk]:
        model = request.model or self.default_model
        headers = {"Accept": "text/event-stream", **request.extra_headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": m["role"], "content": _text(m.get("content"))} for m in request.messages
            ],
            **request.extra_body,
        }
        completion_id = f"echo-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: ChoiceDelta, finish: str | None = None) -> ChatCompletionChunk:
            made = ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=model,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            )
            set_provider(made, self.name)
            return made

        # http.open raises the typed error for a non-2xx status (429 -> RateLimitError,
        # retried; 401 -> AuthenticationError, not retried), with the call's
        # timeouts, proxies and deadline applied.
        async with http.open(
            "POST",
            f"{self.base_url}/v1/echo",
            provider=self.name,
            headers=headers,
            json_body=body,
            params=request.extra_query or None,
        ) as response:
            first = True
            async for event in sse_events(response, self.name):
                if event.event == "token":
                    yield chunk(
                        ChoiceDelta(role="assistant" if first else None, content=event.data)
                    )
                    first = False
                elif event.event == "done":
                    yield chunk(ChoiceDelta(), finish=event.data or "stop")
                    return
                elif event.event == "error":
                    raise error_from_event(_error_payload(event.data), provider=self.name)
                # Other event types (keep-alives, later additions) carry nothing for us.
        # The body ended without "done": a dropped connection. Retried before any
        # content; after content chatkit reports it as StreamInterrupted.
        raise stream_ended_early(self.name, "its done event")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _error_payload(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return {"message": data}
