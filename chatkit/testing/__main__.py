"""``python -m chatkit.testing``: run a fake OpenAI server in the foreground.

Prints exactly one line, ``READY http://HOST:PORT/v1``, once listening, then
serves until SIGTERM or SIGINT. Benchmarks and examples start it as a separate
process and steer single requests with the ``x-fake-behavior`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from ._behavior import DEFAULT_TEXT, Behavior
from ._openai_server import FakeOpenAIServer
from ._wire import content_pieces


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chatkit.testing",
        description="Serve a fake OpenAI-compatible Chat Completions API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the answer to stream")
    parser.add_argument(
        "--chunks",
        type=int,
        default=None,
        metavar="N",
        help="stream exactly N content chunks, cycling through the text's word pieces",
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    return parser


def behavior_from_args(args: argparse.Namespace) -> Behavior:
    """The default Behavior the command line describes."""
    behavior = Behavior(text=args.text, delay=args.delay)
    if args.chunks is not None:
        pieces = content_pieces(behavior) or [args.text]
        behavior.chunks = list(itertools.islice(itertools.cycle(pieces), max(args.chunks, 0)))
    return behavior


async def serve(args: argparse.Namespace, out: TextIO) -> None:
    """Serve until SIGTERM or SIGINT; announce the base URL on `out`."""
    server = FakeOpenAIServer(
        behavior_from_args(args), api_key=args.api_key, host=args.host, port=args.port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with server:
            print(f"READY {server.base_url}", file=out, flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    asyncio.run(serve(args, out if out is not None else sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
