"""The seed example, run for real through an authenticated SOCKS5 proxy.

Everything stays on this machine: chatkit.testing's fake OpenAI-compatible
server stands in for the API, and a real pproxy SOCKS5 proxy with a user name
and password (``pip install pproxy``) carries the traffic. The middle block is
the g4f seed with chatkit's names; only the addresses are local.

After the answer, the script prints what the proxy logged and exits with
status 1 if the proxy did not carry the request.

Run: python examples/seed_via_socks.py
"""

from __future__ import annotations

import sys

from chatkit import Client
from chatkit.providers import OpenAI, RetryProvider
from chatkit.testing import FakeOpenAIServer, start_pproxy


def main() -> int:
    with (
        FakeOpenAIServer(api_key="sk-local-example").run_in_thread() as server,
        start_pproxy("socks5", username="user", password="pass") as proxy,
    ):
        socks = proxy.url  # "socks5://user:pass@127.0.0.1:PORT"

        # --- the seed -------------------------------------------------------
        client = Client(
            proxies={"http": socks, "https": socks},
            provider=RetryProvider(
                [OpenAI(base_url=server.base_url, api_key="sk-local-example")],
                single_provider_retry=True,
                max_retries=5,
            ),
        )
        for message in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
        ):
            print(message.choices[0].delta.content or "")
        # ----------------------------------------------------------------------
        client.close()

        # The proof: pproxy's own log shows the connection to the server.
        went_through = proxy.wait_for_connections(port=server.port, timeout=10)
        print("---")
        print(f"server: 127.0.0.1:{server.port}")
        for connection in proxy.connections_to(server.port):
            print(
                f"proxy log: {connection.protocol} {connection.client} -> "
                f"{connection.host}:{connection.port}"
            )
        return 0 if went_through else 1


if __name__ == "__main__":
    sys.exit(main())
