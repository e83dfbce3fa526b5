"""chatkit inside a Starlette (or FastAPI) endpoint, streamed to the browser as SSE.

Needs: pip install 'chatkit[examples]'   (starlette and uvicorn)
Run:   python examples/starlette_sse.py [--base-url URL] [--port 8080]
Then:  curl -N 'http://127.0.0.1:8080/ask?q=Hello'

FastAPI is Starlette underneath: the same ``ask`` body works in a
``@app.get("/ask")`` function. Without --base-url the provider is the one
configured in the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).

``await stream`` runs the call up to its first chunk before the response
starts, so errors are real HTTP statuses. The generator holds the stream in
``async with``: when the browser disconnects Starlette cancels the generator
and the upstream request is closed at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import chatkit


def sse(data: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


async def ask(request: Request) -> Response:
    question = request.query_params.get("q", "").strip()
    if not question:
        return JSONResponse({"error": "add ?q=your+question"}, status_code=400)
    client: chatkit.AsyncClient = request.app.state.client
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": question}], stream=True
    )
    try:
        await stream  # up to the first chunk: nothing has been sent yet
    except chatkit.APIError as exc:
        await stream.aclose()
        status = exc.status_code if isinstance(exc, chatkit.APIStatusError) else 502
        return JSONResponse({"error": str(exc)}, status_code=status)

    async def events() -> AsyncIterator[str]:
        async with stream:  # closes the upstream request however this ends
            try:
                async for chunk in stream:
                    if chunk.text:
                        yield sse(chunk.text)
            except chatkit.APIError as exc:  # broke off mid-way
                yield sse(str(exc), event="error")
                return
            yield sse({"provider": stream.provider}, event="done")

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def make_app(base_url: str | None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with chatkit.AsyncClient(base_url=base_url) as client:
            app.state.client = client
            yield

    return Starlette(routes=[Route("/ask", ask)], lifespan=lifespan)


def main(host: str, port: int, base_url: str | None) -> None:
    # Bind first, so that --port 0 can report the port it got.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(make_app(base_url), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--base-url", help="an OpenAI-compatible server, e.g. a local one")
    args = parser.parse_args()
    # uvicorn shuts down gracefully on Ctrl-C, then re-raises it: leave quietly.
    with contextlib.suppress(KeyboardInterrupt):
        main(args.host, args.port, args.base_url)
