"""examples/sync_script.py runs as a plain script and prints the streamed answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sync_script.py"


def test_sync_script_example_streams_from_a_server_process() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Hello from a plain script!",
        "text='Hello from a plain script!' finish_reason=stop by OpenAI",
        "non-streamed: Hello from a plain script!",
    ]
    assert done.stderr == ""
