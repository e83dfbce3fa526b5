"""``chatkit chat``: a conversation in the terminal that keeps its history.

Ctrl-C while an answer streams stops that answer (the part shown stays in the
history) and returns to the prompt; Ctrl-C at the prompt clears the line;
Ctrl-D or ``/exit`` leaves. A failed request keeps the conversation; ``/retry``
sends the failed message again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from chatkit.cli._common import Session, Status, add_client_options, error_line, undecodable_line

__all__ = ["HELP", "Conversation", "add_arguments", "run"]

HELP = "Chat interactively (/help for commands)."

COMMAND_HELP = """\
/exit           leave (or Ctrl-D)
/reset          forget the conversation (keeps the system prompt)
/system [TEXT]  show or set the system prompt (/system - removes it)
/retry          send the last failed message again
/help           this list
Ctrl-C stops the current answer."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser)


class Conversation:
    """The history: an optional system prompt and alternating turns."""

    def __init__(self, system: str | None) -> None:
        self.system = system
        self.turns: list[dict[str, Any]] = []
        self.failed: str | None = None

    def messages(self, user_text: str) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.turns, {"role": "user", "content": user_text}]

    def record(self, user_text: str, answer: str) -> None:
        self.turns += [
            {"role": "user", "content": user_text},
            {"role": "assistant", "content": answer},
        ]


def _read_line(prompt: str) -> str | None:
    """One line from the user; None at end of input.

    Raises ``UnicodeDecodeError`` for a line that is not UTF-8 text.
    """
    try:
        line = input(prompt)
    except EOFError:
        return None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Python reads undecodable bytes as lone surrogates (surrogateescape);
        # reported as the bytes they were, like undecodable piped input.
        raw = line.encode("utf-8", "surrogateescape")
        start = len(line[: exc.start].encode("utf-8", "surrogateescape"))
        raise UnicodeDecodeError("utf-8", raw, start, start + 1, "invalid byte") from None
    return line


def _command(line: str, conversation: Conversation) -> str | None:
    """Handle a slash command; return "exit", a message to send, or None."""
    name, _, rest = line.partition(" ")
    if name in ("/exit", "/quit"):
        return "exit"
    if name == "/reset":
        conversation.turns.clear()
        print("(conversation cleared)")
    elif name == "/system":
        value = rest.strip()
        if value == "-":
            conversation.system = None
            print("(system prompt removed)")
        elif value:
            conversation.system = value
            print("(system prompt set)")
        else:
            print(f"(system prompt: {conversation.system or 'none'})")
    elif name == "/retry":
        if conversation.failed is None:
            print("(nothing to retry)")
        else:
            return conversation.failed
    elif name == "/help":
        print(COMMAND_HELP)
    else:
        print(f"(unknown command {name}; /help lists them)")
    return None


async def _answer(session: Session, conversation: Conversation, text: str) -> None:
    from chatkit.cli._ask import ask

    shown: list[str] = []

    class _Tee:
        def write(self, piece: str) -> None:
            shown.append(piece)
            sys.stdout.write(piece)

        def flush(self) -> None:
            sys.stdout.flush()

    try:
        await ask(session, conversation.messages(text), _Tee())  # type: ignore[arg-type]
    except asyncio.CancelledError:
        # Ctrl-C: keep what was shown, so the conversation reads as the user saw it.
        partial = "".join(shown).strip()
        if partial:
            conversation.record(text, partial)
        raise
    conversation.failed = None
    conversation.record(text, "".join(shown).strip())


def run(args: argparse.Namespace) -> int:
    conversation = Conversation(args.system)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    with asyncio.Runner() as runner:
        try:
            session = Session(args, Status(sys.stderr))
            runner.run(session.prepare())
        except Exception as exc:
            if args.debug:
                raise
            print(error_line(exc), file=sys.stderr)
            return 1
        print(f"chatkit chat: {_describe(session)}. /help for commands, /exit to leave.")
        try:
            _loop(runner, session, conversation, args.debug)
        finally:
            runner.run(session.aclose())
    return 0


def _describe(session: Session) -> str:
    provider = session.client.provider
    name = getattr(provider, "name", None) or "auto"
    model = session.model or getattr(provider, "default_model", "") or "default model"
    return f"{name} {model}".strip()


def _loop(
    runner: asyncio.Runner, session: Session, conversation: Conversation, debug: bool
) -> None:
    while True:
        try:
            line = _read_line("> ")
        except KeyboardInterrupt:
            print("^C (Ctrl-D or /exit to leave)")
            continue
        except UnicodeDecodeError as exc:
            print(undecodable_line("that line", exc) + " (ignored)", file=sys.stderr)
            continue
        if line is None:
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            outcome = _command(text, conversation)
            if outcome == "exit":
                return
            if outcome is None:
                continue
            text = outcome
        try:
            runner.run(_answer(session, conversation, text))
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C cancels the answer's task: Runner reports it as KeyboardInterrupt,
            # or as CancelledError when the cancellation was absorbed on the way
            # out (retry and stream clean-up run their own cancel scopes).
            print("(stopped)", file=sys.stderr)
        except BrokenPipeError:
            raise  # stdout is gone: main() ends quietly
        except Exception as exc:
            if debug:
                raise
            conversation.failed = text
            print(error_line(exc) + " (/retry to send it again)", file=sys.stderr)
