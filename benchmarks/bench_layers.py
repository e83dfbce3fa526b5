"""Where the time goes: client CPU per chunk and per request, layer by layer.

    python benchmarks/bench_layers.py              # 7 rounds, about a minute
    python benchmarks/bench_layers.py --rounds 3 --quick

Against the fake server in its own process, one process for every layer so
that they take turns (round by round) on the same heap and the same
connections. CPU time of this process (steadier than wall time on a shared
machine); the medians over the rounds. Streaming, one stream of
``--chunks`` chunks:

- the limit: raw reads, ``split(b"\\n")``, ``orjson.loads`` per ``data:`` line;
- ``SSEDecoder.feed_messages`` over the same reads, nothing parsed;
- the decoder plus ``ChatCompletionChunk`` ``validate_json`` per event: the
  floor of any client that hands out validated models;
- the same with the models built in Python from the first content chunk
  (a copy of its three models with the new text): a fast path that was
  tried and rejected, kept here so that the figure can be checked;
- ``OpenAI.stream`` (the provider alone, on a bare ``HTTPCall``);
- ``AsyncClient`` (everything: the retry layer, the stream object).

Non-streamed, ``--requests`` requests 100 at a time: raw aiohttp + json; the
floor of any chatkit call (raw aiohttp, plus the caller's request checked
before I/O and the answer validated into a ``ChatCompletion``); the
transport (``HTTPCall.open`` + read + ``json.loads``), with chatkit's default
timeouts and with none; the provider (``OpenAI.complete``); ``AsyncClient``.
The ratios at the end are rates (the other time over chatkit's).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import API_KEY, MESSAGES, MODEL
from measure import behavior, fake_server

Layer = Callable[[], Awaitable[int]]


class TemplateCopies:
    """The rejected fast path: after one content chunk validated by pydantic,
    a later event that differs from it only inside the content string gets a
    copy of its three models, built in Python, with the new text.

    Correct only for this benchmark's stream (it checks the bytes around the
    text, not a whole chunk's shape); it measures what building the models in
    Python costs against pydantic-core building them from the JSON.
    """

    def __init__(self) -> None:
        import re

        self._unsafe = re.compile(r'["\\\x00-\x1f]').search
        self._template: Any = None
        self._prefix = self._suffix = ""

    def learn(self, text: str, chunk: Any) -> None:
        if self._template is None and chunk.choices and chunk.choices[0].delta.content:
            start = text.index('"content":"') + len('"content":"')
            self._prefix, self._suffix = text[:start], text[text.index('"', start) + 1 :]
            self._template = chunk

    def copy(self, text: str) -> Any:
        prefix, suffix = self._prefix, self._suffix
        if self._template is None or not (text.startswith(prefix) and text.endswith(suffix)):
            return None
        content = text[len(prefix) : len(text) - len(suffix)]
        if self._unsafe(content):
            return None
        chunk = self._template
        choice = chunk.choices[0]
        delta = _copy(choice.delta, content=content)
        return _copy(chunk, choices=[_copy(choice, delta=delta)])


def _copy(model: Any, **changes: Any) -> Any:
    new = object.__new__(type(model))
    set_slot = object.__setattr__
    set_slot(new, "__dict__", {**model.__dict__, **changes})
    set_slot(new, "__pydantic_fields_set__", set(model.__pydantic_fields_set__))
    set_slot(new, "__pydantic_extra__", {})
    set_slot(new, "__pydantic_private__", None)
    return new


async def _stream_layers(base_url: str, chunks: int, stack: Any) -> dict[str, Layer]:
    import aiohttp
    import orjson

    import chatkit
    from chatkit._request import build_request
    from chatkit._sse import SSEDecoder
    from chatkit._transport import Transport
    from chatkit._types import ChatCompletionChunk
    from chatkit.providers import OpenAI

    url = base_url + "/chat/completions"
    headers = {"x-fake-behavior": behavior(chunks)}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    transport = Transport()
    provider = OpenAI(base_url=base_url, api_key=API_KEY)
    client = chatkit.AsyncClient(base_url=base_url, api_key=API_KEY)
    stack.append(session.close)
    stack.append(transport.aclose)
    stack.append(client.aclose)
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()
    raw_headers = {"Authorization": f"Bearer {API_KEY}", **headers}
    validate = ChatCompletionChunk.__pydantic_validator__.validate_json

    async def limit() -> int:
        count = 0
        async with session.post(url, data=body, headers=raw_headers) as resp:
            tail = b""
            async for data in resp.content.iter_any():
                lines = (tail + data).split(b"\n") if tail else data.split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if line[:6] != b"data: " or line == b"data: [DONE]":
                        continue
                    choices = orjson.loads(line[6:])["choices"]
                    count += bool(choices and choices[0]["delta"].get("content"))
        return count

    async def decoded(typed: bool, copies: TemplateCopies | None = None) -> int:
        count = 0
        decoder = SSEDecoder()
        async with session.post(url, data=body, headers=raw_headers) as resp:
            async for data in resp.content.iter_any():
                for event in decoder.feed_messages(data):
                    if not typed or event == "[DONE]":
                        count += event != "[DONE]"
                        continue
                    assert isinstance(event, str)
                    chunk = copies.copy(event) if copies is not None else None
                    if chunk is None:
                        chunk = validate(event)
                        if copies is not None:
                            copies.learn(event, chunk)
                    count += bool(chunk.choices and chunk.choices[0].delta.content)
        # Untyped, every event counts: the role and finish chunks are two more.
        return count if typed else count - 2

    request = build_request(
        model=MODEL, messages=MESSAGES, stream=True, params={}, extra_headers=headers
    )

    async def provider_only() -> int:
        count = 0
        async for chunk in provider.stream(request, transport.call()):
            count += bool(chunk.choices and chunk.choices[0].delta.content)
        return count

    async def everything() -> int:
        count = 0
        async for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
        ):
            count += bool(chunk.choices and chunk.choices[0].delta.content)
        return count

    return {
        "limit: raw reads + split + orjson": limit,
        "SSEDecoder.feed_messages only": lambda: decoded(False),
        "SSEDecoder + validate_json": lambda: decoded(True),
        "  models copied in Python (rejected)": lambda: decoded(True, TemplateCopies()),
        "OpenAI.stream (provider)": provider_only,
        "AsyncClient (everything)": everything,
    }


async def _request_layers(base_url: str, stack: Any) -> dict[str, Layer]:
    import aiohttp

    import chatkit
    from chatkit._config import Timeout
    from chatkit._request import build_request
    from chatkit._transport import Transport
    from chatkit._types import ChatCompletion
    from chatkit.providers import OpenAI

    url = base_url + "/chat/completions"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=None)
    )
    transport = Transport()
    provider = OpenAI(base_url=base_url, api_key=API_KEY)
    client = chatkit.AsyncClient(base_url=base_url, api_key=API_KEY)
    stack.append(session.close)
    stack.append(transport.aclose)
    stack.append(client.aclose)
    payload = {"model": MODEL, "messages": MESSAGES, "stream": False}
    body = json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = build_request(model=MODEL, messages=MESSAGES, stream=False, params={})
    untimed = Timeout(connect=None, read=None, total=None)

    validate = ChatCompletion.__pydantic_validator__.validate_json

    async def raw() -> int:
        async with session.post(url, data=body, headers=headers) as resp:
            return len(json.loads(await resp.read())["choices"])

    async def floor() -> int:
        # What every chatkit call does beyond raw aiohttp, by contract: the
        # caller's request checked (and copied) before any I/O, and the
        # answer handed back as a validated ChatCompletion.
        checked = build_request(model=MODEL, messages=MESSAGES, stream=False, params={})
        data = {"model": checked.model, "messages": checked.messages, "stream": False}
        async with session.post(url, data=json.dumps(data).encode(), headers=headers) as resp:
            return len(validate(await resp.read()).choices)

    async def transport_only(limits: Timeout | None) -> int:
        http = transport.call() if limits is None else transport.call(timeout=limits)
        async with http.open("POST", url, provider="x", headers=headers, json_body=payload) as r:
            return len(json.loads(await r.read())["choices"])

    async def provider_only() -> int:
        return len((await provider.complete(request, transport.call())).choices)

    async def everything() -> int:
        return len((await client.chat.completions.create(model=MODEL, messages=MESSAGES)).choices)

    return {
        "raw aiohttp + json": raw,
        "floor: + request check + typed answer": floor,
        "+ HTTPCall.open (transport)": lambda: transport_only(None),
        "  the same without any timeout": lambda: transport_only(untimed),
        "+ OpenAI.complete (provider)": provider_only,
        "AsyncClient (everything)": everything,
    }


async def _batch(layer: Layer, total: int, at_once: int = 100) -> float:
    """CPU µs per request of `total` requests, `at_once` at a time."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await layer()

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(at_once)))
    return (time.process_time() - start) / total * 1e6


async def _run(base_url: str, args: argparse.Namespace) -> None:
    stack: list[Callable[[], Awaitable[Any]]] = []
    try:
        streams = await _stream_layers(base_url, args.chunks, stack)
        requests = await _request_layers(base_url, stack)
        for layer in streams.values():  # warm up: connections, lazy imports
            await layer()
        for layer in requests.values():
            await _batch(layer, 100)
        per_chunk: dict[str, list[float]] = {name: [] for name in streams}
        per_request: dict[str, list[float]] = {name: [] for name in requests}
        for _ in range(args.rounds):
            for name, layer in streams.items():
                start = time.process_time()
                got = await layer()
                per_chunk[name].append((time.process_time() - start) / args.chunks * 1e6)
                if got != args.chunks:
                    raise RuntimeError(f"{name}: {got} content chunks, expected {args.chunks}")
            for name, layer in requests.items():
                per_request[name].append(await _batch(layer, args.requests))
    finally:
        for close in reversed(stack):
            await close()
    print(f"one stream of {args.chunks} chunks: CPU µs per chunk, median (min) of {args.rounds}")
    for name, values in per_chunk.items():
        print(f"  {name:40}{statistics.median(values):7.2f} ({min(values):.2f})")
    print(f"{args.requests} requests, 100 at a time: CPU µs per request, median (min)")
    for name, values in per_request.items():
        print(f"  {name:40}{statistics.median(values):7.0f} ({min(values):.0f})")
    print("rates against the reference, median of the per-round ratios (range):")
    for name, reference, results in (
        ("AsyncClient stream / limit", "limit: raw reads + split + orjson", per_chunk),
        ("decode + validate / limit", "limit: raw reads + split + orjson", per_chunk),
        ("floor / raw aiohttp", "raw aiohttp + json", per_request),
        ("AsyncClient / raw aiohttp", "raw aiohttp + json", per_request),
    ):
        measured = results[_RATIO_OF[name]]
        ratios = [ref / got for ref, got in zip(results[reference], measured, strict=True)]
        low, high = min(ratios), max(ratios)
        print(f"  {name:40}{statistics.median(ratios):6.2f}x ({low:.2f}-{high:.2f})")


_RATIO_OF = {
    "AsyncClient stream / limit": "AsyncClient (everything)",
    "decode + validate / limit": "SSEDecoder + validate_json",
    "floor / raw aiohttp": "floor: + request check + typed answer",
    "AsyncClient / raw aiohttp": "AsyncClient (everything)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.requests = 200, 100
    with fake_server() as base_url:
        asyncio.run(_run(base_url, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
