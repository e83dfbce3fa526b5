"""The clients the benchmark compares, each behind the same tiny interface.

An async contender offers ``stream(behavior)`` (one streamed request; returns
how many content chunks arrived) and ``complete()`` (one non-streamed request;
returns the answer's length). A sync contender offers ``stream`` only. Every
contender counts what it received, so a broken stream cannot pass for a fast
one: the runner checks the counts.

``behavior`` is the JSON text of the fake server's ``x-fake-behavior`` header.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Say something."}]
HEADER = "x-fake-behavior"
API_KEY = "sk-bench"


class AsyncContender(Protocol):
    name: str

    async def open(self, base_url: str) -> None: ...
    async def stream(self, behavior: str) -> int: ...
    async def complete(self) -> int: ...
    async def close(self) -> None: ...


class SyncContender(Protocol):
    name: str

    def open(self, base_url: str) -> None: ...
    def stream(self, behavior: str) -> int: ...
    def close(self) -> None: ...


def _orjson_loads() -> Callable[[bytes], Any]:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    return loads


def orjson_available() -> bool:
    """Whether the limit contender can run (orjson is in the ``bench`` extra)."""
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


def _request_body(stream: bool) -> bytes:
    return json.dumps({"model": MODEL, "messages": MESSAGES, "stream": stream}).encode()


class RawAiohttp:
    """The floor: aiohttp ``iter_any()``, split lines, ``json.loads`` each event.

    It does what any client must (parse every chunk, pick out the content and
    keep it) and nothing else: no validation, no objects, no retries.
    With ``parse=False`` it only counts events: how fast the fake server can
    emit and aiohttp can read, the ceiling for every contender. With
    ``fast=True`` it parses with orjson instead of ``json``: the practical
    limit of a Python client (issue 17's "limit" contender), untyped and
    unchecked.
    """

    def __init__(self, *, parse: bool = True, fast: bool = False) -> None:
        self.parse = parse
        self.fast = fast
        self.name = LIMIT if fast else RAW if parse else CEILING
        self._session: Any = None
        self._url = ""

    async def open(self, base_url: str) -> None:
        import aiohttp

        self._url = base_url + "/chat/completions"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **extra}

    async def stream(self, behavior: str) -> int:
        headers = self._headers({HEADER: behavior, "Accept": "text/event-stream"})
        async with self._session.post(self._url, data=_request_body(True), headers=headers) as resp:
            resp.raise_for_status()
            if not self.parse:
                events = 0
                half = False  # the last read ended with the first LF of an event's end
                async for data in resp.content.iter_any():
                    events += data.count(b"\n\n") + (half and data[:1] == b"\n")
                    half = data[-1:] == b"\n" and data[-2:] != b"\n\n"
                return events - 3  # role chunk, finish chunk, [DONE]
            loads = _orjson_loads() if self.fast else json.loads
            parts: list[str] = []
            tail = b""
            async for data in resp.content.iter_any():
                lines = (tail + data).split(b"\n") if tail else data.split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if line[:6] != b"data: ":
                        continue
                    payload = line[6:]
                    if payload == b"[DONE]":
                        return len(parts)
                    choices = loads(payload)["choices"]
                    if choices:
                        content = choices[0]["delta"].get("content")
                        if content:
                            parts.append(content)
            return len(parts)

    async def complete(self) -> int:
        headers = self._headers({})
        loads = _orjson_loads() if self.fast else json.loads
        async with self._session.post(
            self._url, data=_request_body(False), headers=headers
        ) as resp:
            resp.raise_for_status()
            body = loads(await resp.read())
        return len(body["choices"][0]["message"]["content"])

    async def close(self) -> None:
        await self._session.close()


class ChatkitAsync:
    """``chatkit.AsyncClient`` with its defaults, as a user would write it."""

    name = "chatkit async"

    def __init__(self) -> None:
        self._client: Any = None

    async def open(self, base_url: str) -> None:
        import chatkit

        self._client = chatkit.AsyncClient(base_url=base_url, api_key=API_KEY)

    async def stream(self, behavior: str) -> int:
        count = 0
        async for chunk in self._client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={HEADER: behavior}
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
        return count

    async def complete(self) -> int:
        completion = await self._client.chat.completions.create(model=MODEL, messages=MESSAGES)
        return len(completion.choices[0].message.content)

    async def close(self) -> None:
        await self._client.aclose()


def _openai_timeout() -> Any:
    import openai

    # The SDK's default connect timeout is 5 s; a busy machine accepting 100
    # connections at once can take longer, and a timeout is no throughput figure.
    return openai.Timeout(600.0, connect=60.0)


class OpenAIAsync:
    """The official SDK: ``AsyncOpenAI(base_url=..., max_retries=0)``."""

    name = "openai async"

    def __init__(self) -> None:
        self._client: Any = None

    async def open(self, base_url: str) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=API_KEY, max_retries=0, timeout=_openai_timeout()
        )

    async def stream(self, behavior: str) -> int:
        count = 0
        stream = await self._client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={HEADER: behavior}
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
        return count

    async def complete(self) -> int:
        completion = await self._client.chat.completions.create(model=MODEL, messages=MESSAGES)
        return len(completion.choices[0].message.content)

    async def close(self) -> None:
        await self._client.close()


class ChatkitSync:
    """``chatkit.Client``: the sync facade over the async core."""

    name = "chatkit sync"

    def __init__(self) -> None:
        self._client: Any = None

    def open(self, base_url: str) -> None:
        import chatkit

        self._client = chatkit.Client(base_url=base_url, api_key=API_KEY)

    def stream(self, behavior: str) -> int:
        count = 0
        with self._client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={HEADER: behavior}
        ) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
        return count

    def close(self) -> None:
        self._client.close()


class OpenAISync:
    """The official SDK's sync client, ``OpenAI(base_url=..., max_retries=0)``."""

    name = "openai sync"

    def __init__(self) -> None:
        self._client: Any = None

    def open(self, base_url: str) -> None:
        import openai

        self._client = openai.OpenAI(
            base_url=base_url, api_key=API_KEY, max_retries=0, timeout=_openai_timeout()
        )

    def stream(self, behavior: str) -> int:
        count = 0
        with self._client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={HEADER: behavior}
        ) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
        return count

    def close(self) -> None:
        self._client.close()


def chatkit_sync_available() -> bool:
    """Whether this checkout already has the sync facade (``chatkit.Client``)."""
    try:
        from chatkit import Client  # noqa: F401
    except ImportError:
        return False
    return True


RAW = "raw aiohttp+json"
LIMIT = "limit raw+orjson"
CHATKIT_ASYNC = "chatkit async"
CHATKIT_SYNC = "chatkit sync"
OPENAI_ASYNC = "openai async"
OPENAI_SYNC = "openai sync"
CEILING = "server ceiling"

ASYNC_CONTENDERS: dict[str, Callable[[], AsyncContender]] = {
    RAW: RawAiohttp,
    CHATKIT_ASYNC: ChatkitAsync,
    OPENAI_ASYNC: OpenAIAsync,
    CEILING: lambda: RawAiohttp(parse=False),
    LIMIT: lambda: RawAiohttp(fast=True),
}
SYNC_CONTENDERS: dict[str, Callable[[], SyncContender]] = {
    CHATKIT_SYNC: ChatkitSync,
    OPENAI_SYNC: OpenAISync,
}
COLUMNS = [LIMIT, RAW, CHATKIT_ASYNC, CHATKIT_SYNC, OPENAI_ASYNC, OPENAI_SYNC, CEILING]


def available() -> list[str]:
    """Every contender this checkout can run, in table order.

    The chatkit sync row is added by itself once ``chatkit.Client`` exists,
    the limit row once orjson is installed (``pip install -e ".[bench]"``).
    """
    names = list(COLUMNS)
    if not chatkit_sync_available():
        names.remove(CHATKIT_SYNC)
    if not orjson_available():
        names.remove(LIMIT)
    return names
