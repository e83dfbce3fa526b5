"""Issue 11, the CLI: usage errors, broken pipes and undecodable input end in one line.

The real ``chatkit`` command runs in a subprocess against a fake server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from chatkit.testing import Behavior, FakeOpenAIServer

# More than a pipe's buffer (64 KiB), so the command is still writing when
# the reader goes away.
LONG = "word " * 40_000


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behavior(text=LONG)).run_in_thread() as running:
        yield running


@pytest.fixture
def fake(server: FakeOpenAIServer) -> FakeOpenAIServer:
    server.requests.clear()
    return server


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chatkit", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=60,
        env=_env(),
    )


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.endswith("\n"), text
    return text


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--port", "99999"),
        ("serve", "--port", "-1"),
        ("serve", "--port", "http"),
        ("serve", "--timeout", "nan"),
        ("serve", "--header-timeout", "0"),
        ("serve", "--max-connections", "0"),
        ("serve", "--max-connections", "many"),
        ("serve", "--max-connections-per-host", "-1"),
        ("--temperature", "nan", "hi"),
        ("--temperature", "inf", "hi"),
        ("chat", "--timeout", "-3"),
        ("--no-such-option", "hi"),
    ],
)
def test_usage_errors_are_one_line_and_status_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("chatkit") and "error:" in line and "--help" in line


def test_nan_is_never_sent(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "--temperature", "NaN", "hi")
    assert result.returncode == 2
    assert fake.requests == []


def test_a_closed_stdout_ends_quietly_with_sigpipe_status(fake: FakeOpenAIServer) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "chatkit", "--base-url", fake.base_url, "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(5) == b"word "  # like | head -c 5
        process.stdout.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 141
    assert stderr == b""


def test_undecodable_stdin_is_one_line_and_nothing_is_sent(fake: FakeOpenAIServer) -> None:
    result = run_cli("--base-url", fake.base_url, "summarise", stdin=b"caf\xe9 \xff\xfe")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "standard input is not utf-8 text" in line and "0xe9" in line
    assert result.stdout == b""
    assert fake.requests == []


def test_undecodable_chat_line_is_skipped(fake: FakeOpenAIServer) -> None:
    fake.script(Behavior(text="fine"))
    result = run_cli("chat", "--base-url", fake.base_url, stdin=b"\xff\xfe\nhello\n")
    assert result.returncode == 0, result.stderr
    assert b"that line is not utf-8 text" in result.stderr
    assert b"Traceback" not in result.stderr
    assert b"fine" in result.stdout
    assert len(fake.requests) == 1


def test_serve_collects_secrets_and_allows_its_own_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from chatkit.cli._serve import _allowed_hosts, _secrets

    monkeypatch.setenv("SOME_VENDOR_API_KEY", "vendor-key-123456")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:proxy-pass-987@127.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://[bad")
    args = argparse.Namespace(
        proxy="socks5://u:cli-proxy-pass@127.0.0.1:1080",
        host="192.168.1.5",
        allowed_host=["chat.lan"],
    )
    found = set(_secrets(args, "gateway-key-1"))
    assert {"gateway-key-1", "vendor-key-123456", "proxy-pass-987", "cli-proxy-pass"} <= found
    assert _allowed_hosts(args) == ["chat.lan", "192.168.1.5"]
    args.host = "::1"
    assert _allowed_hosts(args) == ["chat.lan", "[::1]"]
    args.host = "0.0.0.0"
    assert _allowed_hosts(args) == ["chat.lan"]


def test_serve_refuses_a_bad_allowed_host_with_one_line() -> None:
    result = run_cli("serve", "--base-url", "http://127.0.0.1:9/v1", "--allowed-host", "a:b")
    assert result.returncode == 1
    assert "allowed_hosts" in one_line(result.stderr)


@pytest.mark.parametrize("model", ["mistral:7b", "openai:gpt-4o", "ollama:llama3.2"])
def test_with_base_url_the_model_reaches_the_server_unchanged(
    fake: FakeOpenAIServer, model: str
) -> None:
    result = run_cli("--base-url", fake.base_url, "-m", model, "--no-stream", "hi")
    assert result.returncode == 0, result.stderr.decode()
    assert [r.json["model"] for r in fake.requests] == [model]


def _serve_args(*argv: str) -> Any:
    from chatkit.cli import _parser

    parser, _ = _parser("serve")
    return parser.parse_args(["--base-url", "http://127.0.0.1:9/v1", *argv])


@pytest.mark.anyio
async def test_serve_connection_limits_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatkit
    from chatkit.cli._serve import DEFAULT_MAX_CONNECTIONS, build_client

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-limits-0001")
    # By default one upstream may use every connection (item 16).
    cases = [
        ((), chatkit.Limits(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)),
        (("--max-connections", "4000"), chatkit.Limits(4000, 4000)),
        (("--max-connections", "64", "--max-connections-per-host", "8"), chatkit.Limits(64, 8)),
        (("-p", "openai,openai", "--max-connections", "10"), chatkit.Limits(10, 10)),
    ]
    for argv, expected in cases:
        client, _ = build_client(_serve_args(*argv))
        async with client:
            assert client._transport.limits == expected, argv
