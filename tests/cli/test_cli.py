"""The ``chatkit`` command as a subprocess, against the fake server (and once the real model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatkit.providers import Local
from chatkit.testing import Behavior, FakeOpenAIServer

ANSWER = "Hello! How can I help you today?"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behavior(text=ANSWER)).run_in_thread() as running:
        yield running


@pytest.fixture
def fake(server: FakeOpenAIServer) -> FakeOpenAIServer:
    server.requests.clear()
    server._script.clear()
    return server


def run_cli(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    module: bool = True,
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "chatkit"] if module else [str(_script())]
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [*command, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


def _script() -> Path:
    return Path(sys.executable).with_name("chatkit")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_question_streams_the_answer_to_stdout_only(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "Why", "is the sky blue?")
    assert (result.returncode, result.stdout, result.stderr) == (0, ANSWER + "\n", "")
    body = fake.requests[-1].json
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.skipif(not _script().exists(), reason="console script not installed")
def test_the_console_script_is_the_same_command(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "hi", module=False)
    assert (result.returncode, result.stdout) == (0, ANSWER + "\n")


def test_options_reach_the_request(fake: FakeOpenAIServer) -> None:
    result = run_cli(
        "--base-url", fake.base_url, "-m", "my-model", "-s", "Be brief.",
        "--temperature", "0.2", "--max-tokens", "7", "hi",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = fake.requests[-1].json
    assert body["model"] == "my-model"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (body["temperature"], body["max_tokens"]) == (0.2, 7)


def test_piped_stdin_is_appended_to_the_question(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "summarise", stdin="line one\nline two\n")
    assert result.returncode == 0, result.stderr
    content = fake.requests[-1].json["messages"][-1]["content"]
    assert content == "summarise\n\nline one\nline two"
    alone = run_cli("--base-url", fake.base_url, stdin="just this")
    assert alone.returncode == 0
    assert fake.requests[-1].json["messages"][-1]["content"] == "just this"


def test_json_prints_one_chunk_per_line(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "--json", "hi")
    assert result.returncode == 0, result.stderr
    chunks = [json.loads(line) for line in result.stdout.splitlines()]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    assert any(c["choices"] and c["choices"][0].get("finish_reason") == "stop" for c in chunks)


def test_no_stream_prints_the_completion(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "--no-stream", "hi")
    assert (result.returncode, result.stdout) == (0, ANSWER + "\n")
    assert fake.requests[-1].json["stream"] is False
    as_json = run_cli("--base-url", fake.base_url, "--no-stream", "--json", "hi")
    assert json.loads(as_json.stdout)["choices"][0]["message"]["content"] == ANSWER


def test_retries_option(fake: FakeOpenAIServer) -> None:
    fake.fail(1, 503, retry_after=0)
    assert run_cli("--base-url", fake.base_url, "--retries", "1", "hi").returncode == 0
    fake.fail(1, 503, retry_after=0)
    failed = run_cli("--base-url", fake.base_url, "--retries", "0", "hi")
    assert failed.returncode == 1 and "503" in failed.stderr


def test_an_api_error_is_one_line_without_traceback(fake: FakeOpenAIServer) -> None:
    fake.fail(1, 401)
    result = run_cli("--base-url", fake.base_url, "hi")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("chatkit: error:") and result.stderr.count("\n") == 1
    fake.fail(1, 401)
    debug = run_cli("--base-url", fake.base_url, "--debug", "hi")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_missing_key_names_the_variable() -> None:
    result = run_cli("-p", "openai", "hi")
    assert result.returncode == 1
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_network_down_and_bad_proxy_are_one_line_errors() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    down = run_cli("--base-url", url, "--retries", "0", "hi")
    assert down.returncode == 1 and "cannot connect" in down.stderr
    assert down.stderr.count("\n") == 1
    proxied = run_cli(
        "--base-url", "http://example.invalid/v1", "--proxy",
        f"http://127.0.0.1:{_closed_port()}", "--retries", "0", "hi",
    )  # fmt: skip
    assert proxied.returncode == 1 and "proxy" in proxied.stderr.lower()


def test_usage_errors() -> None:
    empty = run_cli()
    assert empty.returncode == 2 and "no question" in empty.stderr
    unknown = run_cli("-p", "nope", "hi")
    assert unknown.returncode == 1 and "unknown provider 'nope'" in unknown.stderr


def test_models_lists_providers_and_what_is_ready() -> None:
    result = run_cli("models", env={"OPENAI_API_KEY": "sk-test"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "ready (OPENAI_API_KEY set)" in lines["openai"]
    assert "ANTHROPIC_API_KEY" in lines["anthropic"]
    assert ("ready" in lines["local"]) == Local.is_available()
    assert 'chatkit "..." uses openai' in result.stdout
    assert "sk-test" not in result.stdout


def test_models_of_a_server(fake: FakeOpenAIServer) -> None:
    result = run_cli("models", "--base-url", fake.base_url)
    assert (result.returncode, result.stdout) == (0, "fake-model\n")


def test_help_lists_the_subcommands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "chatkit chat" in result.stdout and "chatkit models" in result.stdout


@pytest.mark.skipif(not Local.is_available(), reason="needs chatkit[local]")
def test_without_any_key_the_embedded_model_answers(tmp_path: Path) -> None:
    result = run_cli(
        "--max-tokens", "8", "--temperature", "0", "What is the capital of France?",
        env={"CHATKIT_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")
    assert "Gemma Terms of Use" in result.stderr  # the one-time notice, on stderr
    again = run_cli(
        "-m", "local:", "--max-tokens", "4", "hi", env={"CHATKIT_CACHE_DIR": str(tmp_path)}
    )
    assert again.returncode == 0 and again.stderr == ""
