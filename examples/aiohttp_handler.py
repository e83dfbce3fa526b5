"""chatkit inside an aiohttp handler, streaming the answer to the browser as it arrives.

Run:  python examples/aiohttp_handler.py [--base-url URL] [--port 8080]
Then open http://127.0.0.1:8080/ or: curl -N 'http://127.0.0.1:8080/ask?q=Hello'

Without --base-url the provider is the one configured in the environment
(OPENAI_API_KEY, ANTHROPIC_API_KEY, ...). The three things that matter:

1. One AsyncClient for the whole app, closed when the app stops.
2. ``await`` the stream before preparing the response: retries and errors
   happen before any byte is sent, so a failure is still a proper HTTP status.
3. ``async with stream`` plus ``handler_cancellation=True``: a browser that
   goes away cancels the handler, which closes the upstream request at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator

from aiohttp import web

import chatkit

CLIENT = web.AppKey("client", chatkit.AsyncClient)

PAGE = """<!doctype html>
<meta charset="utf-8"><title>chatkit + aiohttp</title>
<form id="f"><input id="q" size="60" value="Why is the sky blue?"><button>Ask</button></form>
<pre id="out" style="white-space: pre-wrap"></pre>
<script>
document.getElementById("f").onsubmit = (event) => {
  event.preventDefault();
  const out = document.getElementById("out");
  out.textContent = "";
  const q = encodeURIComponent(document.getElementById("q").value);
  const source = new EventSource("/ask?q=" + q);
  source.onmessage = (e) => { out.textContent += JSON.parse(e.data); };
  source.addEventListener("done", () => source.close());
  source.addEventListener("error", (e) => {
    if (e.data) out.textContent += "\\n[error] " + JSON.parse(e.data);
    source.close();
  });
};
</script>
"""


def sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def ask(request: web.Request) -> web.StreamResponse:
    question = request.query.get("q", "").strip()
    if not question:
        return web.json_response({"error": "add ?q=your+question"}, status=400)
    client = request.app[CLIENT]
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": question}], stream=True
    )
    async with stream:  # closes the upstream request however this handler ends
        try:
            await stream  # up to the first chunk: nothing has been sent yet
        except chatkit.APIStatusError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status_code)
        except chatkit.APIError as exc:
            return web.json_response({"error": str(exc)}, status=502)

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            async for chunk in stream:
                if chunk.text:
                    await response.write(sse(chunk.text))
        except chatkit.APIError as exc:  # broke off mid-way: tell the page, keep the text
            await response.write(sse(str(exc), event="error"))
        else:
            await response.write(sse({"provider": stream.provider}, event="done"))
        return response


def make_app(base_url: str | None) -> web.Application:
    app = web.Application()

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with chatkit.AsyncClient(base_url=base_url) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(client_context)
    app.router.add_get("/", page)
    app.router.add_get("/ask", ask)
    return app


async def main(host: str, port: int, base_url: str | None) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    # handler_cancellation: a disconnect cancels the handler (off by default in aiohttp).
    runner = web.AppRunner(make_app(base_url), handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"listening on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()  # Ctrl-C or SIGTERM: finish cleanly, client closed
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--base-url", help="an OpenAI-compatible server, e.g. a local one")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.base_url))
