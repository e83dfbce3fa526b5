"""The CLI's pieces in-process: status line, stdin detection, chat commands, models."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from chatkit.cli import main
from chatkit.cli._chat import Conversation, _command
from chatkit.cli._common import Status, error_line, stdin_text
from chatkit.cli._models import describe
from chatkit.providers import PROVIDERS
from chatkit.testing import Behavior, FakeOpenAIServer


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behavior(text="Hi.")).run_in_thread() as running:
        yield running


def test_error_line_is_one_line_and_hints_at_debug() -> None:
    line = error_line(RuntimeError("boom\nsecond line"))
    assert line == (
        "chatkit: error: RuntimeError: boom second line (run with --debug for the traceback)"
    )


def test_stdin_is_read_only_when_piped_or_redirected(tmp_path: object) -> None:
    assert stdin_text(None) is None
    closed = io.StringIO()
    closed.close()
    assert stdin_text(closed) is None
    assert stdin_text(io.StringIO("no file descriptor")) is None
    with open(os.devnull) as devnull:
        assert stdin_text(devnull) is None  # a device is not input meant for us
    read_end, write_end = os.pipe()
    os.write(write_end, b"piped")
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        assert stdin_text(pipe) == "piped"


def test_the_status_line_draws_and_clears_only_when_enabled() -> None:
    async def show(status: Status) -> None:
        status.start("waiting")
        await asyncio.sleep(0.25)
        status.stop()
        status.stop()  # idempotent

    drawn = io.StringIO()
    asyncio.run(show(Status(drawn, enabled=True)))
    assert "waiting 0." in drawn.getvalue() and drawn.getvalue().endswith("\r\x1b[K")
    silent = io.StringIO()
    asyncio.run(show(Status(silent)))  # a StringIO is not a terminal
    assert silent.getvalue() == ""


def test_chat_commands(capsys: pytest.CaptureFixture[str]) -> None:
    conversation = Conversation("Be kind.")
    assert _command("/system", conversation) is None
    assert _command("/system -", conversation) is None
    assert conversation.system is None
    assert _command("/system", conversation) is None
    assert _command("/retry", conversation) is None
    conversation.failed = "again please"
    assert _command("/retry", conversation) == "again please"
    assert _command("/quit", conversation) == "exit"
    out = capsys.readouterr().out
    assert "system prompt: Be kind." in out and "system prompt removed" in out
    assert "system prompt: none" in out and "nothing to retry" in out


class _Broken:
    name: ClassVar[str] = "Broken"
    default_model: ClassVar[str] = "b-1"

    @classmethod
    def is_configured(cls) -> bool:
        raise RuntimeError("cannot tell")


class _Keyless:
    default_model: ClassVar[str] = ""


def test_models_describes_odd_third_party_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROVIDERS, "broken", _Broken)
    monkeypatch.setitem(PROVIDERS, "keyless", _Keyless)
    rows = {name: (ready, status, model) for name, ready, status, model in describe()}
    assert rows["broken"] == (False, "unavailable: cannot tell", "b-1")
    assert rows["keyless"] == (False, "not configured", "")


def test_models_fetch_lists_a_ready_providers_models(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    assert main(["models", "--fetch"]) == 0
    out = capsys.readouterr().out
    assert "    fake-model" in out
    assert "model list failed" in out  # anthropic's URL is unreachable: said, not raised


def test_models_with_nothing_ready(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(PROVIDERS):
        if name not in ("openai", "anthropic"):
            monkeypatch.delitem(PROVIDERS, name)
    assert main(["models"]) == 0
    assert "no provider is ready" in capsys.readouterr().out


def test_models_of_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--base-url", "http://127.0.0.1:9/v1"]) == 1
    assert capsys.readouterr().err.startswith("chatkit: error:")
    with pytest.raises(Exception, match=r"127\.0\.0\.1:9"):
        main(["models", "--base-url", "http://127.0.0.1:9/v1", "--debug"])


def test_chat_fails_cleanly_without_a_provider(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "-p", "openai"]) == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_ctrl_c_during_a_one_shot_answer_exits_130(server: FakeOpenAIServer) -> None:
    server.script(Behavior(stall_after=0, stall_seconds=60))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    with subprocess.Popen(
        [sys.executable, "-m", "chatkit", "--base-url", server.base_url, "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        deadline = time.monotonic() + 30
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err
    assert server.wait_for_disconnects_sync(1, timeout=10)
