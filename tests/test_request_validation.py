"""Bad input: a clear error naming the field, before any I/O, caller's data untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import chatkit
from chatkit import InvalidRequestError, ProviderNotFoundError, Timeout
from chatkit.providers import OpenAI
from chatkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def server() -> Any:
    async with FakeOpenAIServer() as running:
        yield running


@pytest.fixture
async def client(server: FakeOpenAIServer) -> Any:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test") as made:
        yield made


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("messages not a list", {"messages": "Hello"}, "messages"),
    ("messages a dict", {"messages": {"role": "user"}}, "messages"),
    ("messages empty", {"messages": []}, "messages"),
    ("message not a dict", {"messages": ["Hello"]}, "messages[0]"),
    ("message without role", {"messages": [{"content": "Hi"}]}, "messages[0].role"),
    ("unknown role", {"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
    ("content wrong type", {"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ("user without content", {"messages": [{"role": "user"}]}, "messages[0].content"),
    (
        "content part not a dict",
        {"messages": [{"role": "user", "content": ["hi"]}]},
        "messages[0].content[0]",
    ),
    (
        "unknown content part",
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages[0].content[0]",
    ),
    (
        "text part without text",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
    ),
    (
        "image part without url",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0]",
    ),
    (
        "empty content list",
        {"messages": [{"role": "user", "content": []}]},
        "messages[0].content",
    ),
    (
        "tool message without tool_call_id",
        {"messages": [*HELLO, {"role": "tool", "content": "42"}]},
        "messages[1].tool_call_id",
    ),
    (
        "assistant tool_calls not a list",
        {"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]},
        "messages[0].tool_calls",
    ),
    (
        "tool call without function name",
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]}]},
        "messages[0].tool_calls[0]",
    ),
    (
        "tool call without id",
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
        "messages[0].tool_calls[0].id",
    ),
    ("name not a string", {"messages": [{"role": "user", "content": "x", "name": 1}]}, "messages"),
    ("model not a string", {"messages": HELLO, "model": 4}, "model"),
    ("stream not a bool", {"messages": HELLO, "stream": "yes"}, "stream"),
    ("negative timeout", {"messages": HELLO, "timeout": -1}, "timeout"),
    ("non-numeric timeout", {"messages": HELLO, "timeout": "10s"}, "timeout"),
    ("unknown parameter", {"messages": HELLO, "temprature": 0.2}, "temprature"),
    ("wrong parameter type", {"messages": HELLO, "temperature": "hot"}, "temperature"),
    ("bool for an int parameter", {"messages": HELLO, "max_tokens": True}, "max_tokens"),
    ("extra_headers not strings", {"messages": HELLO, "extra_headers": {"a": 1}}, "extra_headers"),
    ("extra_query not a dict", {"messages": HELLO, "extra_query": [1]}, "extra_query"),
    ("extra_body not a dict", {"messages": HELLO, "extra_body": [1]}, "extra_body"),
    ("unknown provider name", {"messages": HELLO, "provider": "nope"}, "provider"),
]


@pytest.mark.parametrize(("label", "kwargs", "field"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_input_is_rejected_before_io(
    client: chatkit.AsyncClient,
    server: FakeOpenAIServer,
    label: str,
    kwargs: dict[str, Any],
    field: str,
    stream: bool,
) -> None:
    kwargs = {"stream": stream, **kwargs}
    snapshot = copy.deepcopy(kwargs)
    with pytest.raises(InvalidRequestError) as caught:
        client.chat.completions.create(**kwargs)  # raises synchronously: nothing awaited
    assert caught.value.field is not None
    assert caught.value.field.startswith(field.split("[")[0])
    assert field.split(".")[0].split("[")[0] in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert kwargs == snapshot, "the caller's arguments were mutated"
    assert server.requests == [], "a request went out for invalid input"


def test_wrong_types_are_also_type_errors() -> None:
    error = InvalidRequestError("x", field="model")
    assert isinstance(error, TypeError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_url": "127.0.0.1:8000/v1"}, "base_url"),
        ({"base_url": "ftp://example.test"}, "base_url"),
        ({"base_url": 8000}, "base_url"),
        ({"timeout": -3}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"default_headers": {"x": 1}}, "default_headers"),
        ({"api_key": 12}, "api_key"),
        ({"provider": 42}, "provider"),
    ],
)
def test_bad_client_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chatkit.AsyncClient(**kwargs)
    assert caught.value.field == field


def test_unknown_provider_name_on_the_client() -> None:
    with pytest.raises(ProviderNotFoundError, match="openai"):
        chatkit.AsyncClient(provider="no-such-provider", api_key="k")


def test_timeout_values_are_checked() -> None:
    with pytest.raises(InvalidRequestError, match=r"timeout\.read"):
        Timeout(read=0)
    with pytest.raises(InvalidRequestError, match=r"timeout\.connect"):
        Timeout(connect="1")  # type: ignore[arg-type]
    assert Timeout(total=None).total is None


async def test_messages_are_copied_not_mutated(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    snapshot = copy.deepcopy(messages)
    await client.chat.completions.create(model="m", messages=messages)
    assert messages == snapshot
    sent = server.requests[-1].json["messages"]
    assert sent == snapshot


async def test_every_role_and_content_form_is_accepted(
    client: chatkit.AsyncClient, server: FakeOpenAIServer
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": "done", "name": "bot"},
        {"role": "user", "content": "thanks"},
    ]
    reply = await client.chat.completions.create(messages=messages)
    assert reply.text
    assert server.requests[-1].json["messages"] == messages


def test_openai_without_key_raises_missing_auth_naming_the_variable() -> None:
    with pytest.raises(chatkit.MissingAuthError, match="OPENAI_API_KEY") as caught:
        OpenAI()
    assert caught.value.env_var == "OPENAI_API_KEY"


def test_openai_reads_key_and_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    provider = OpenAI()
    assert provider.base_url == "http://127.0.0.1:9/v1"
    assert "sk-from-env-123" not in repr(provider)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("socks5://user:s3cret@127.0.0.1:1080", "socks5://***@127.0.0.1:1080"),
        ("http://user:s3cret@host:bad", "http://***@host:bad"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_redact_url_hides_credentials(url: str, shown: str) -> None:
    from chatkit._config import redact_url

    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_copy_json_copies_every_level_and_keeps_foreign_types() -> None:
    from collections import OrderedDict

    from chatkit._request import copy_json

    original: dict[str, Any] = {"a": [1, {"b": (2, [3])}], "c": OrderedDict(x=[1]), "d": None}
    copied = copy_json(original)
    assert copied == original
    assert copied["a"] is not original["a"] and copied["a"][1] is not original["a"][1]
    assert copied["a"][1]["b"][1] is not original["a"][1]["b"][1]
    assert type(copied["c"]) is OrderedDict and copied["c"]["x"] is not original["c"]["x"]
    copied["a"][1]["b"][1].append(4)
    assert original["a"][1]["b"][1] == [3]


@pytest.mark.parametrize("where", ["messages[0]", "extra_body", "tools"])
def test_data_that_refers_to_itself_is_refused_naming_the_field(where: str) -> None:
    loop: dict[str, Any] = {"type": "function", "function": {"name": "f"}}
    loop["function"]["parameters"] = loop
    call: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if where == "messages[0]":
        call["messages"] = [{"role": "user", "content": "hi", "loop": loop}]
    elif where == "extra_body":
        call["extra_body"] = {"loop": loop}
    else:
        call["tools"] = [loop]
    client = chatkit.Client(provider=OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-x"))
    with client, pytest.raises(InvalidRequestError, match="refers to itself") as caught:
        client.chat.completions.create(model="m", **call)
    assert caught.value.field == where
    assert isinstance(caught.value, ValueError)
