"""Every example in examples/ runs as a real subprocess and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_async_quickstart() -> None:
    out = run_example("async_quickstart.py").splitlines()
    assert out[0] == "complete: Paris is the capital of France. (OpenAI)"
    assert out[1] == "stream: Paris is the capital of France."
    assert out[2] == "after a 503: Paris is the capital of France. [OpenAI#1: 503, OpenAI#2: ok]"
