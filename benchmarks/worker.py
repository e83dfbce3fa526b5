"""One contender in its own process, driven by ``run.py`` over stdin/stdout.

    python benchmarks/worker.py "chatkit async" http://127.0.0.1:PORT/v1

Each contender runs in a process of its own so that what one library imports
and allocates (its heap, hence the garbage collector's work, its threads)
does not slow down another. The worker opens its client, warms it up, says
``{"ready": true}``, then answers one JSON command per line:

    {"op": "run", "workload": "long", "sizes": {...}}  ->  {"value": 91234.5}
    {"op": "quit"}                                      ->  (closes and exits)

A failure (a wrong chunk count, an HTTP error) comes back as ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import ASYNC_CONTENDERS, CEILING, SYNC_CONTENDERS
from measure import ASYNC_WORKLOADS, SYNC_WORKLOADS, Rates, Sizes, behavior


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _serve_async(name: str, base_url: str, out: TextIO) -> None:
    contender = ASYNC_CONTENDERS[name]()
    # One loop for the worker's life: the client's connections live on it.
    with asyncio.Runner() as runner:
        runner.run(contender.open(base_url))
        try:
            runner.run(contender.stream(behavior(5)))
            if name != CEILING:
                runner.run(contender.complete())
            _send(out, {"ready": True})
            for command in _commands():
                workload = ASYNC_WORKLOADS[command["workload"]]
                sizes = Sizes(**command["sizes"])
                measure = functools.partial(_run_async, runner, workload, contender, sizes)
                _answer(out, measure)
        finally:
            runner.run(contender.close())


def _serve_sync(name: str, base_url: str, out: TextIO) -> None:
    contender = SYNC_CONTENDERS[name]()
    contender.open(base_url)
    try:
        contender.stream(behavior(5))
        _send(out, {"ready": True})
        for command in _commands():
            workload = SYNC_WORKLOADS[command["workload"]]
            measure = functools.partial(workload, contender, Sizes(**command["sizes"]))
            _answer(out, measure)
    finally:
        contender.close()


def _commands() -> Any:
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            return
        yield command


def _run_async(runner: asyncio.Runner, workload: Any, contender: Any, sizes: Sizes) -> Rates:
    rates: Rates = runner.run(workload(contender, sizes))
    return rates


def _answer(out: TextIO, measure: Callable[[], Rates]) -> None:
    try:
        rates = measure()
    except Exception as exc:
        _send(out, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    else:
        _send(out, {"value": rates.wall, "cpu": rates.cpu})


def main() -> int:
    name, base_url = sys.argv[1], sys.argv[2]
    # The protocol owns stdout; anything a library prints goes to stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        if name in ASYNC_CONTENDERS:
            _serve_async(name, base_url, out)
        else:
            _serve_sync(name, base_url, out)
    except Exception as exc:
        _send(out, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
