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


def test_observability_example_prints_the_log_lines_and_the_span_tree() -> None:
    out = run_example("observability.py").splitlines()
    assert [line.split()[1] for line in out[:4]] == [
        "event=attempt",
        "event=attempt",
        "event=attempt",
        "event=call",
    ]
    assert out[4] == "answer: Hello! How can I help you today? (Groq)"
    assert out[5:] == [
        "span: chat gpt-4o-mini ",
        "span:   attempt OpenAI retry",
        "span:   attempt OpenAI next",
        "span:   attempt Groq success",
    ]
