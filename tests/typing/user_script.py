"""A user's script, as a new user writes it: checked with ``mypy --strict``.

tests/test_hardening_client.py runs mypy on this file; ``assert_type`` makes
mypy fail if a call's type is wrong or degrades to ``Any``. It is also run
for real against a fake server, so the types and the behaviour agree.
"""

from __future__ import annotations

import asyncio
import sys
from typing import assert_type

from pydantic import BaseModel

import chatkit
from chatkit import (
    AsyncChatStream,
    ChatCompletion,
    ChatCompletionChunk,
    ChatStream,
    ParsedChatCompletion,
    ParsedChatStream,
)

MESSAGES = [{"role": "user", "content": "Hello"}]


class City(BaseModel):
    name: str


def sync_part(base_url: str, stream_flag: bool) -> str:
    with chatkit.Client(base_url=base_url, timeout=30.0) as client:
        completion = client.chat.completions.create(model="m", messages=MESSAGES)
        assert_type(completion, ChatCompletion)
        text: str | None = completion.choices[0].message.content

        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert_type(stream, ChatStream)
        for chunk in stream:
            assert_type(chunk, ChatCompletionChunk)
            piece: str | None = chunk.choices[0].delta.content if chunk.choices else None
            del piece

        either = client.chat.completions.create(messages=MESSAGES, stream=stream_flag)
        assert_type(either, ChatCompletion | ChatStream)
        if isinstance(either, ChatStream):
            either = either.until_done()
        assert_type(either, ChatCompletion)

        parsed = client.chat.completions.parse(messages=MESSAGES, response_format=City)
        assert_type(parsed, ParsedChatCompletion[City])
        assert_type(parsed.parsed, City | None)
        partials = client.chat.completions.parse(
            messages=MESSAGES, response_format=City, stream=True
        )
        assert_type(partials, ParsedChatStream[City])
        for partial in partials:
            assert_type(partial, City)
        assert_type(partials.get_final_completion(), ParsedChatCompletion[City])
        return f"{text}|{stream.text}|{either.text}"


async def async_part(base_url: str, stream_flag: bool) -> str:
    async with chatkit.AsyncClient(base_url=base_url, limits=chatkit.Limits()) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert_type(completion, ChatCompletion)

        # g4f style: iterate the call directly.
        pieces: list[str] = []
        async for chunk in client.chat.completions.create(messages=MESSAGES, stream=True):
            assert_type(chunk, ChatCompletionChunk)
            pieces.append(chunk.text)

        # openai style: await the stream first.
        stream = await client.chat.completions.create(messages=MESSAGES, stream=True)
        assert_type(stream, AsyncChatStream)
        final = await stream.until_done()
        assert_type(final, ChatCompletion)

        either = await client.chat.completions.create(messages=MESSAGES, stream=stream_flag)
        assert_type(either, ChatCompletion | AsyncChatStream)
        if isinstance(either, AsyncChatStream):
            either = await either.until_done()

        parsed = await client.chat.completions.parse(messages=MESSAGES, response_format=City)
        assert_type(parsed, ParsedChatCompletion[City])
        city = parsed.choices[0].message.parsed
        assert_type(city, City | None)
        assert city is not None
        async for partial in client.chat.completions.parse(
            messages=MESSAGES, response_format=City, stream=True
        ):
            assert_type(partial, City)
        return f"{completion.text}|{''.join(pieces)}|{final.text}|{either.text}|{city.name}"


if __name__ == "__main__":
    url, flag = sys.argv[1], sys.argv[2] == "stream"
    print(sync_part(url, flag))
    print(asyncio.run(async_part(url, flag)))
