"""The ``chatkit`` command (also ``python -m chatkit``).

``chatkit "question"`` asks once and streams the answer to stdout. Subcommands
come first on the command line and live in their own modules, listed in
``COMMANDS``: each has ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Progress goes to stderr (only on a terminal), errors are
one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import chatkit

__all__ = [
    "COMMANDS",
    "EXIT_BROKEN_PIPE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "main",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The reader of stdout went away (``chatkit ... | head``): what a shell reports
# for a command killed by SIGPIPE (128 + 13), as ``yes | head`` does.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (exit status 2), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# name -> module; a module provides HELP, add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, str] = {
    "chat": "chatkit.cli._chat",
    "models": "chatkit.cli._models",
    "serve": "chatkit.cli._serve",
}
_ASK = "chatkit.cli._ask"


def _parser(command: str | None) -> tuple[argparse.ArgumentParser, ModuleType]:
    module = importlib.import_module(COMMANDS[command] if command else _ASK)
    if command is None:
        listed = "\n".join(
            f"  chatkit {name:<8} {importlib.import_module(path).HELP}"
            for name, path in COMMANDS.items()
        )
        parser = _Parser(
            prog="chatkit",
            description=module.HELP,
            epilog=f"commands (put them first):\n{listed}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    else:
        parser = _Parser(prog=f"chatkit {command}", description=module.HELP)
    parser.add_argument("--version", action="version", version=f"chatkit {chatkit.__version__}")
    module.add_arguments(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in COMMANDS else None
    parser, module = _parser(command)
    args = parser.parse_args(args_list[1:] if command else args_list)
    try:
        status: int = module.run(args)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C: asyncio cancels the running task and reports it as either.
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return status


def _discard_stdout() -> None:
    """After a broken pipe: send what is still buffered nowhere, quietly.

    Python flushes stdout again at exit, which would fail again and print
    "Exception ignored ... BrokenPipeError" (the recipe in the docs of signal).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded): nothing to flush there
        pass
