"""The local model's child process: llama.cpp's server behind a random port and key.

Run as a script (``python path/to/_local_worker.py``), never imported by the
parent: it is the only code that imports ``xllamacpp``. Protocol:

- stdin, first line: a JSON object with the settings (the API key travels
  here, not on the command line, where other users could read it);
- stdout: one line, ``CHATKIT-LOCAL {"ok": true, "url": ...}`` once the model
  is loaded and the server listens, or ``{"ok": false, "error": ...}``;
- then the process blocks reading stdin and exits when it reaches EOF, which
  happens when the parent closes the pipe *or dies*: the child never outlives
  its parent, even after a SIGKILL.

Everything else the runtime prints goes to stderr (the parent keeps it in a
temporary file to explain a failed load).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, TextIO

READY_PREFIX = "CHATKIT-LOCAL "


def _report(channel: TextIO, **fields: Any) -> None:
    channel.write(READY_PREFIX + json.dumps(fields) + "\n")
    channel.flush()


def start_server(config: dict[str, Any]) -> Any:
    """Load the model and start llama.cpp's HTTP server on a free loopback port."""
    import xllamacpp  # type: ignore[import-untyped,import-not-found,unused-ignore]

    params = xllamacpp.CommonParams()
    params.model.path = config["model_path"]
    params.model_alias = {config["alias"]}
    params.n_ctx = int(config["n_ctx"])
    params.n_parallel = int(config["parallel"])
    params.cpuparams.n_threads = int(config["threads"])
    params.cpuparams_batch.n_threads = int(config["threads"])
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port
    params.api_keys = [config["api_key"]]  # the server is open to every local user otherwise
    params.endpoint_slots = True
    params.verbosity = 1  # errors only: the log file stays small in long sessions
    if config.get("chat_template"):
        params.chat_template = config["chat_template"]
    return xllamacpp.Server(params)


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group; it is meant for the
    # parent (to stop one answer), not for the model server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep a private copy of stdout for the protocol line, and send anything the
    # native code prints on fd 1 to stderr, so it can never fill an unread pipe.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    config = json.loads(sys.stdin.readline())
    try:
        server = start_server(config)
    except Exception as exc:
        _report(channel, ok=False, error=f"{type(exc).__name__}: {exc}")
        return 1
    _report(channel, ok=True, url=server.listening_address)
    channel.close()
    sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
    del server  # stops the HTTP server and frees the model before exiting
    return 0


if __name__ == "__main__":
    sys.exit(main())
