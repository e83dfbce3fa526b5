"""``chatkit "question"``: ask once, stream the answer to stdout."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from chatkit.cli._common import (
    Session,
    Status,
    add_client_options,
    error_line,
    stdin_text,
    undecodable_line,
    write,
)

__all__ = ["HELP", "add_arguments", "ask", "run"]

HELP = "Ask a question and stream the answer (stdin is appended when piped)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", nargs="*", help="the question (words are joined)")
    add_client_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--no-stream", action="store_true", help="print the answer when complete")
    output.add_argument(
        "--json",
        action="store_true",
        help="one JSON chunk per line (with --no-stream: the completion)",
    )


def build_messages(system: str | None, prompt: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


async def ask(
    session: Session, messages: list[dict[str, Any]], out: TextIO, *, as_json: bool = False
) -> str:
    """Stream one answer to ``out``; return its text. A status line shows until it starts."""
    await session.prepare()
    status = session.status
    status.start("waiting for the answer")
    text: list[str] = []
    try:
        # Closed here, whatever ends the loop (a broken pipe included): left to
        # asyncio.run's shutdown, the stream would be closed after the client.
        async with session.create(messages, stream=True) as stream:
            async for chunk in stream:
                if as_json:
                    status.stop()
                    write(out, chunk.model_dump_json(exclude_none=True) + "\n")
                elif chunk.text:
                    status.stop()
                    write(out, chunk.text)
                text.append(chunk.text)
    finally:
        status.stop()
        answer = "".join(text)
        if not as_json and answer and not answer.endswith("\n"):
            write(out, "\n")
    return answer


async def _ask_once(
    session: Session, messages: list[dict[str, Any]], args: argparse.Namespace
) -> None:
    try:
        if args.no_stream:
            await session.prepare()
            session.status.start("waiting for the answer")
            try:
                completion = await session.create(messages, stream=False)
            finally:
                session.status.stop()
            if args.json:
                write(sys.stdout, completion.model_dump_json(exclude_none=True) + "\n")
            else:
                write(sys.stdout, completion.text.rstrip("\n") + "\n")
        else:
            await ask(session, messages, sys.stdout, as_json=args.json)
    finally:
        await session.aclose()


def run(args: argparse.Namespace) -> int:
    question = " ".join(args.question).strip()
    try:
        piped = stdin_text(sys.stdin)
    except UnicodeDecodeError as exc:
        print(undecodable_line("standard input", exc), file=sys.stderr)
        return 1
    if piped and piped.strip():
        question = f"{question}\n\n{piped.strip()}" if question else piped.strip()
    if not question:
        print(
            'chatkit: error: no question: chatkit "your question", pipe text in, or'
            " chatkit chat for a conversation",
            file=sys.stderr,
        )
        return 2
    try:
        session = Session(args, Status(sys.stderr))
        asyncio.run(_ask_once(session, build_messages(args.system, question), args))
    except BrokenPipeError:
        raise  # the reader went away (``| head``): main() ends quietly
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 1
    return 0
