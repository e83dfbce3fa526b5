"""The README's async usage, against chatkit.testing's fake server (no key, no network).

Run: python examples/async_quickstart.py
"""

from __future__ import annotations

import asyncio

import chatkit
from chatkit.providers import OpenAI
from chatkit.testing import Behavior, FakeOpenAIServer


async def main() -> None:
    async with FakeOpenAIServer(Behavior(text="Paris is the capital of France.")) as server:
        provider = OpenAI(base_url=server.base_url, api_key="sk-example")
        async with chatkit.AsyncClient(provider=provider) as client:
            messages = [{"role": "user", "content": "What is the capital of France?"}]

            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            print("complete:", reply.choices[0].message.content, f"({reply.provider})")

            print("stream: ", end="")
            async for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True
            ):
                print(chunk.choices[0].delta.content or "", end="", flush=True)
            print()

            server.fail(1, 503, retry_after=0.05)  # one transient failure, retried for you
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            async with stream:
                async for _ in stream:
                    pass
            attempts = ", ".join(
                f"{a.provider}#{a.number}: {'ok' if a.ok else a.status_code}"
                for a in stream.attempts
            )
            print("after a 503:", stream.text, f"[{attempts}]")


if __name__ == "__main__":
    asyncio.run(main())
