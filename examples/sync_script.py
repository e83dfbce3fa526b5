"""Stream a chat answer from plain, synchronous Python.

Starts chatkit's fake OpenAI-compatible server in a separate process
(``python -m chatkit.testing``), then talks to it with ``chatkit.Client``,
the way a script would talk to any OpenAI-compatible API:

    python examples/sync_script.py
"""

from __future__ import annotations

import subprocess
import sys

from chatkit import Client
from chatkit.providers import OpenAI


def start_fake_server() -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m chatkit.testing``; it prints ``READY <base_url>`` once listening."""
    server = subprocess.Popen(
        [sys.executable, "-m", "chatkit.testing", "--text", "Hello from a plain script!"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    word, _, base_url = server.stdout.readline().strip().partition(" ")
    if word != "READY":
        server.kill()
        raise SystemExit("the fake server did not start")
    return server, base_url


def main() -> None:
    server, base_url = start_fake_server()
    try:
        # The g4f-style loop: no async, no event loop to manage.
        client = Client(provider=OpenAI, base_url=base_url, api_key="sk-example")
        messages = [{"role": "user", "content": "Hello"}]
        for message in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        ):
            print(message.choices[0].delta.content or "", end="", flush=True)
        print()

        # A stream is also a context manager that keeps the whole answer.
        with client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        ) as stream:
            for _ in stream:
                pass
        print(f"text={stream.text!r} finish_reason={stream.finish_reason} by {stream.provider}")

        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        print(f"non-streamed: {reply.choices[0].message.content}")
        client.close()
    finally:
        server.terminate()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


if __name__ == "__main__":
    main()
