"""``chatkit chat`` in a real pseudo-terminal (pexpect), against the fake server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pexpect  # type: ignore[import-untyped]  # no stubs (types-pexpect) in the test extra
import pytest

from chatkit.testing import Behavior, FakeOpenAIServer

PROMPT = "\r\n> "


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behavior(text="Sure thing.")).run_in_thread() as running:
        yield running


@pytest.fixture
def chat(server: FakeOpenAIServer) -> Iterator[pexpect.spawn]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chatkit", "chat", "--base-url", server.base_url, "--retries", "0"],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect("/exit to leave")
    child.expect("> ")
    yield child
    child.close(force=True)


def _messages(server: FakeOpenAIServer) -> list[dict[str, str]]:
    return list(server.requests[-1].json["messages"])


def test_the_conversation_keeps_its_history(chat: pexpect.spawn, server: FakeOpenAIServer) -> None:
    chat.sendline("Hello")
    chat.expect("Sure thing.")
    chat.expect(PROMPT)
    chat.sendline("And again")
    chat.expect("Sure thing.")
    chat.expect(PROMPT)
    assert _messages(server) == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Sure thing."},
        {"role": "user", "content": "And again"},
    ]
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_system_and_reset(chat: pexpect.spawn, server: FakeOpenAIServer) -> None:
    chat.sendline("/system Be terse.")
    chat.expect("system prompt set")
    chat.sendline("One")
    chat.expect(PROMPT)
    chat.sendline("/reset")
    chat.expect("conversation cleared")
    chat.sendline("Two")
    chat.expect("Sure thing.")
    chat.expect(PROMPT)
    assert _messages(server) == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Two"},
    ]
    chat.sendline("/system")
    chat.expect("system prompt: Be terse.")
    chat.sendline("/help")
    chat.expect("/retry")
    chat.sendeof()
    chat.expect(pexpect.EOF)


def test_ctrl_c_stops_the_answer_but_not_the_chat(
    chat: pexpect.spawn, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(chunks=["tick "] * 200, delay=0.05))
    chat.sendline("Count")
    chat.expect("tick tick")
    chat.sendintr()
    chat.expect(r"\(stopped\)")
    assert server.wait_for_disconnects_sync(1, timeout=10)  # the request was dropped
    chat.sendline("Next")
    chat.expect("Sure thing.")
    chat.expect(PROMPT)
    messages = _messages(server)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"].startswith("tick tick")  # the part shown is kept
    chat.sendintr()  # at the prompt: nothing to stop, the chat goes on
    chat.expect("Ctrl-D or /exit")
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)


def test_an_error_keeps_the_conversation_and_retry_resends(
    chat: pexpect.spawn, server: FakeOpenAIServer
) -> None:
    chat.sendline("First")
    chat.expect(PROMPT)
    server.fail(1, 500)
    chat.sendline("Second")
    chat.expect("chatkit: error: .*500.*/retry")
    chat.sendline("/retry")
    chat.expect("Sure thing.")
    chat.expect(PROMPT)
    assert [m["content"] for m in _messages(server)] == ["First", "Sure thing.", "Second"]
    chat.sendline("/retry")
    chat.expect("nothing to retry")
    chat.sendline("/bogus")
    chat.expect("unknown command")


def test_a_status_line_shows_on_a_terminal_while_waiting(
    chat: pexpect.spawn, server: FakeOpenAIServer
) -> None:
    server.script(Behavior(text="Sure thing.", stall_after=0, stall_seconds=1.0))
    chat.sendline("Slow")
    chat.expect(r"waiting for the answer \d+\.\ds")
    chat.expect("Sure thing.")
