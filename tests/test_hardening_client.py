"""Issue 11, the client surface: model routing, bad input, strict schemas,
local servers' models, closed clients and connection limits."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import chatkit
from chatkit import InvalidRequestError, Limits
from chatkit._config import DEFAULT_LIMITS
from chatkit._request import strict_json_schema
from chatkit.providers import (
    PRESETS,
    Anthropic,
    Groq,
    Ollama,
    OpenAI,
    RetryProvider,
    vLLM,
)
from chatkit.providers._base import Capabilities
from chatkit.providers.presets import preset
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOllamaServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def server() -> Any:
    # In its own thread: the sync client blocks the test's thread, and so its loop.
    with FakeOpenAIServer().run_in_thread() as running:
        yield running


def sent_models(server: FakeOpenAIServer) -> list[Any]:
    """The model of every chat request (OpenAI's /v1/chat/completions, Ollama's /api/chat)."""
    return [r.json["model"] for r in server.requests if r.path.endswith(("/completions", "/chat"))]


# -- item 1: the "provider:" prefix routes only unfixed calls -----------------


@pytest.mark.parametrize("model", ["mistral:7b", "mistral:latest", "gemini:2b", "llama3.2:1b"])
async def test_a_fixed_ollama_gets_its_tags_unchanged(model: str) -> None:
    with FakeOllamaServer().run_in_thread() as ollama:
        async with chatkit.AsyncClient(provider=Ollama(base_url=ollama.base_url)) as client:
            await client.chat.completions.create(model=model, messages=HELLO)
            stream = client.chat.completions.create(model=model, messages=HELLO, stream=True)
            async for _ in stream:
                pass
    assert sent_models(ollama) == [model, model]


async def test_a_fixed_provider_has_its_own_name_stripped() -> None:
    with FakeOllamaServer().run_in_thread() as ollama:
        client = chatkit.Client(provider=Ollama(base_url=ollama.base_url))
        with client:
            client.chat.completions.create(model="ollama:llama3.2", messages=HELLO)
            client.chat.completions.create(model="Ollama:mistral:7b", messages=HELLO)
    assert sent_models(ollama) == ["llama3.2", "mistral:7b"]


async def test_a_vendor_preset_strips_its_own_name(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(provider=Groq, base_url=server.base_url) as client:
        await client.chat.completions.create(model="groq:llama-3.3", messages=HELLO)
    assert sent_models(server) == ["llama-3.3"]


@pytest.mark.parametrize(
    "model", ["mistral:7b", "openai:gpt-4o", "anthropic:claude-x", "ollama:qwen2.5:7b"]
)
async def test_base_url_sends_the_model_string_unchanged(
    server: FakeOpenAIServer, model: str
) -> None:
    # Any OpenAI-compatible server, a chatkit gateway (which routes by prefix
    # itself) included: the string is the server's business.
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        await client.chat.completions.create(model=model, messages=HELLO)
    sync = chatkit.Client(base_url=server.base_url)
    with sync:
        sync.chat.completions.create(model=model, messages=HELLO, stream=True).until_done()
    assert sent_models(server) == [model, model]


async def test_local_presets_keep_other_providers_names(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(provider=vLLM, base_url=server.base_url) as client:
        await client.chat.completions.create(model="mistral:7b", messages=HELLO)
        await client.chat.completions.create(model="vllm:served", messages=HELLO)
    assert sent_models(server) == ["mistral:7b", "served"]


async def test_a_retry_provider_gets_the_model_unchanged(server: FakeOpenAIServer) -> None:
    inner = OpenAI(base_url=server.base_url, api_key="sk-test")
    async with chatkit.AsyncClient(provider=RetryProvider([inner])) as client:
        await client.chat.completions.create(model="mistral:7b", messages=HELLO)
    assert sent_models(server) == ["mistral:7b"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fixed_vendor_refuses_another_providers_prefix(
    server: FakeOpenAIServer, stream: bool
) -> None:
    async with chatkit.AsyncClient(provider=Anthropic, api_key="sk-ant-test") as client:
        with pytest.raises(InvalidRequestError, match="openai") as caught:
            client.chat.completions.create(model="openai:gpt-4o", messages=HELLO, stream=stream)
        assert caught.value.field == "model"
    # The same through a per-call provider, and through the sync client.
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        with pytest.raises(InvalidRequestError) as caught:
            client.chat.completions.create(
                model="openai:gpt-4o",
                messages=HELLO,
                provider=Anthropic(api_key="sk-ant-test"),
                stream=stream,
            )
        assert caught.value.field == "model"
    sync = chatkit.Client(provider=OpenAI(api_key="sk-test"))
    with sync, pytest.raises(InvalidRequestError) as caught:
        sync.chat.completions.create(model="anthropic:claude-x", messages=HELLO, stream=stream)
    assert caught.value.field == "model"
    assert server.requests == []


async def test_an_unfixed_call_is_still_routed_by_the_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeAnthropicServer() as anthropic:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic.base_url)
        async with chatkit.AsyncClient(max_retries=0) as client:
            reply = await client.chat.completions.create(model="anthropic:claude-x", messages=HELLO)
    assert reply.provider == "Anthropic"
    assert anthropic.requests[-1].json["model"] == "claude-x"


# -- item 20: bad input, before any I/O, naming the field ----------------------


class Opaque:
    """An object JSON cannot hold; equal to its copies, so that mutation checks work."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)

    __hash__ = object.__hash__


LONE = "caf\udce9"  # a lone surrogate: what a bad decode with surrogateescape leaves

BAD_INPUT: list[tuple[str, dict[str, Any], str]] = [
    ("role list", {"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ("role dict", {"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    (
        "part type list",
        {"messages": [HELLO[0], {"role": "user", "content": [{"type": ["text"], "text": "x"}]}]},
        "messages[1].content[0].type",
    ),
    (
        "part type dict",
        {"messages": [{"role": "user", "content": [{"type": {}, "text": "x"}]}]},
        "messages[0].content[0].type",
    ),
    ("bytes content", {"messages": [{"role": "user", "content": b"hi"}]}, "messages[0].content"),
    (
        "bytes in a part",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": b""}]}]},
        "messages[0].content[0].x",
    ),
    ("set in extra_body", {"extra_body": {"tags": {"a"}}}, "extra_body.tags"),
    (
        "object in tools",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": Opaque()}}]},
        "tools[0].function.parameters",
    ),
    ("object in a message", {"messages": [{**HELLO[0], "meta": Opaque()}]}, "messages[0].meta"),
    ("tuple key", {"extra_body": {"k": {(1, 2): 3}}}, "extra_body.k"),
    ("NaN temperature", {"temperature": math.nan}, "temperature"),
    ("Infinity top_p", {"top_p": math.inf}, "top_p"),
    (
        "-Infinity nested",
        {"extra_body": {"options": {"x": [1.0, -math.inf]}}},
        "extra_body.options.x[1]",
    ),
    (
        "NaN in a tool schema",
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"minimum": math.nan}}}
            ]
        },
        "tools[0].function.parameters.minimum",
    ),
    ("huge max_tokens", {"max_tokens": 2**64}, "max_tokens"),
    ("huge negative seed", {"seed": -(2**63) - 1}, "seed"),
    ("huge int in extra_body", {"extra_body": {"n": 10**30}}, "extra_body.n"),
    (
        "lone surrogate content",
        {"messages": [{"role": "user", "content": LONE}]},
        "messages[0].content",
    ),
    (
        "lone surrogate in a part",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
        "messages[0].content[0].text",
    ),
    ("lone surrogate model", {"model": LONE}, "model"),
    ("lone surrogate key", {"extra_body": {LONE: 1}}, "extra_body"),
    ("lone surrogate query", {"extra_query": {"q": LONE}}, "extra_query.q"),
    ("header CR LF", {"extra_headers": {"X-Foo": "a\r\nX-Evil: 1"}}, "extra_headers[X-Foo]"),
    ("header newline at end", {"extra_headers": {"X-Foo": "value\n"}}, "extra_headers[X-Foo]"),
    ("header name with colon", {"extra_headers": {"X-Foo: a": "b"}}, "extra_headers["),
    ("header value not Latin-1", {"extra_headers": {"X-Foo": "\u20ac"}}, "extra_headers[X-Foo]"),
    ("provider int instance", {"provider": 42}, "provider"),
    ("provider int class", {"provider": int}, "provider"),
    ("timeout string", {"timeout": "10"}, "timeout"),
]


@pytest.mark.parametrize(("label", "kwargs", "field"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_input_names_the_field_before_any_io(
    server: FakeOpenAIServer, label: str, kwargs: dict[str, Any], field: str, stream: bool
) -> None:
    call = {"messages": HELLO, "stream": stream, **kwargs}
    snapshot = copy.deepcopy(call)
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk-test") as client:
        with pytest.raises(InvalidRequestError) as caught:
            client.chat.completions.create(**call)  # raises at once: nothing awaited
    assert caught.value.field is not None
    assert caught.value.field.startswith(field), caught.value.field
    assert isinstance(caught.value, ValueError)
    assert call == snapshot or label.startswith("NaN"), "the caller's arguments were mutated"
    assert server.requests == []
    sync = chatkit.Client(base_url=server.base_url, api_key="sk-test")
    with sync, pytest.raises(InvalidRequestError) as again:
        sync.chat.completions.create(**call)
    assert again.value.field == caught.value.field
    assert server.requests == []


async def test_json_edge_values_that_are_fine_still_go_out(server: FakeOpenAIServer) -> None:
    from collections import OrderedDict
    from enum import IntEnum

    class Level(IntEnum):
        HIGH = 3

    extra = {
        "big": 2**63 - 1,
        "small": -(2**63),
        "level": Level.HIGH,
        "ordered": OrderedDict(a=1),
        "text": "caf\u00e9 \U0001f600",
    }
    async with chatkit.AsyncClient(base_url=server.base_url) as client:
        await client.chat.completions.create(
            messages=HELLO, extra_body=extra, logit_bias={50256: -100}
        )
    body = server.requests[-1].json
    assert body["big"] == 2**63 - 1 and body["small"] == -(2**63) and body["level"] == 3
    assert body["ordered"] == {"a": 1} and body["text"] == "caf\u00e9 \U0001f600"
    assert body["logit_bias"] == {"50256": -100}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"api_key": "sk-abc\n"}, "api_key"),
        ({"api_key": "sk-abc\r\nX-Evil: 1"}, "api_key"),
        ({"api_key": " sk-abc"}, "api_key"),
        ({"api_key": {"openai": "sk-abc\n"}}, "api_key[openai]"),
        ({"api_key": {1: "sk-abc"}}, "api_key"),
        ({"api_key": b"sk-abc"}, "api_key"),
        ({"default_headers": {"X-Foo": "a\nb"}}, "default_headers[X-Foo]"),
        ({"base_url": "http://[::1"}, "base_url"),
        ({"base_url": "http://127.0.0.1:99999/v1"}, "base_url"),
        ({"base_url": "http://exa mple.test/v1"}, "base_url"),
        ({"base_url": "http://"}, "base_url"),
        ({"provider": int}, "provider"),
        ({"provider": 3.5}, "provider"),
        ({"provider": object()}, "provider"),
        ({"limits": {"max_connections": 10}}, "limits"),
        ({"limits": None}, "limits"),
        ({"timeout": math.nan}, "timeout"),
    ],
)
@pytest.mark.parametrize("client_class", [chatkit.AsyncClient, chatkit.Client])
def test_bad_client_arguments_name_the_field(
    kwargs: dict[str, Any], field: str, client_class: type[Any]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client_class(**kwargs)
    assert caught.value.field == field
    assert "sk-abc" not in str(caught.value)


def test_limits_values_are_checked() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chatkit.AsyncClient(limits=Limits(max_connections=0))
    assert caught.value.field == "limits.max_connections"


@pytest.mark.parametrize("where", ["client", "call"])
async def test_infinite_timeout_means_no_limit(server: FakeOpenAIServer, where: str) -> None:
    client_timeout = math.inf if where == "client" else None
    call_timeout = math.inf if where == "call" else None
    async with chatkit.AsyncClient(base_url=server.base_url, timeout=client_timeout) as client:
        reply = await client.chat.completions.create(messages=HELLO, timeout=call_timeout)
        stream = client.chat.completions.create(messages=HELLO, timeout=call_timeout, stream=True)
        assert (await stream.until_done()).text == reply.text
        if where == "client":
            assert client.timeout.total is None
    sync = chatkit.Client(base_url=server.base_url, timeout=client_timeout)
    with sync:
        assert sync.chat.completions.create(messages=HELLO, timeout=call_timeout).text
    assert chatkit.Timeout(total=math.inf, read=math.inf).read is None


# -- item 22: a closed client fails at once; Limits reach the transport ---------


@pytest.mark.parametrize("how", ["aclose", "async with"])
async def test_a_closed_async_client_raises_at_once(server: FakeOpenAIServer, how: str) -> None:
    client = chatkit.AsyncClient(base_url=server.base_url, max_retries=5)
    if how == "aclose":
        await client.aclose()
    else:
        async with client:
            pass
    for stream in (False, True):
        with pytest.raises(chatkit.ClientClosedError, match="closed") as caught:
            client.chat.completions.create(messages=HELLO, stream=stream)  # nothing awaited
        assert isinstance(caught.value, RuntimeError)
        assert not isinstance(caught.value, chatkit.APIConnectionError)
    with pytest.raises(chatkit.ClientClosedError):
        await client.models.list()

    class City(BaseModel):
        name: str

    with pytest.raises(chatkit.ClientClosedError):
        await client.chat.completions.parse(messages=HELLO, response_format=City)
    assert server.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_closed_sync_client_raises_at_once(server: FakeOpenAIServer, stream: bool) -> None:
    client = chatkit.Client(base_url=server.base_url, max_retries=5)
    client.close()
    with pytest.raises(chatkit.ClientClosedError):
        client.chat.completions.create(messages=HELLO, stream=stream)
    with pytest.raises(chatkit.ClientClosedError):
        client.models.list()
    assert server.requests == []


async def test_limits_reach_the_transport(server: FakeOpenAIServer) -> None:
    limits = Limits(max_connections=3, max_connections_per_host=2)
    async with chatkit.AsyncClient(base_url=server.base_url, limits=limits) as client:
        assert client._transport.limits is limits
        assert (await client.chat.completions.create(messages=HELLO)).text
    sync = chatkit.Client(base_url=server.base_url, limits=limits)
    with sync:
        assert sync._async._transport.limits is limits
    assert chatkit.AsyncClient()._transport.limits == DEFAULT_LIMITS


# -- item 7: strict JSON schemas for parse() ----------------------------------


class Address(BaseModel):
    street: str
    city: str | None = None


class Person(BaseModel):
    name: str
    age: int = 0
    nickname: str | None = None
    home: Address = Field(description="where they live")
    offices: list[Address] = []


PERSON = (
    '{"name": "Ada", "age": 36, "nickname": null,'
    ' "home": {"street": "S", "city": null}, "offices": []}'
)


def objects(schema: Any) -> list[dict[str, Any]]:
    """Every object schema inside ``schema``."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found.extend(objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(objects(value))
    return found


@pytest.mark.parametrize("client_class", ["async", "sync"])
async def test_parse_sends_a_strict_schema_to_openai(
    server: FakeOpenAIServer, client_class: str
) -> None:
    server.script(Behavior(text=PERSON))
    if client_class == "async":
        async with chatkit.AsyncClient(base_url=server.base_url) as client:
            completion = await client.chat.completions.parse(messages=HELLO, response_format=Person)
    else:
        with chatkit.Client(base_url=server.base_url) as sync:
            completion = sync.chat.completions.parse(messages=HELLO, response_format=Person)
    person = completion.parsed
    assert person is not None and person.name == "Ada" and person.home.street == "S"
    spec = server.requests[-1].json["response_format"]["json_schema"]
    assert spec["strict"] is True and spec["name"] == "Person"
    schema = spec["schema"]
    assert len(objects(schema)) >= 3  # Person, the inlined home, Address in $defs
    for obj in objects(schema):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert schema["required"] == ["name", "age", "nickname", "home", "offices"]
    # Optional[X] = None stays nullable, without the None default strict mode rejects.
    nickname = schema["properties"]["nickname"]
    assert {"type": "null"} in nickname["anyOf"] and "default" not in nickname
    # A $ref with a sibling (the description) is inlined: strict mode allows no siblings.
    home = schema["properties"]["home"]
    assert "$ref" not in home and home["description"] == "where they live"
    assert home["properties"]["street"] == {"title": "Street", "type": "string"}
    assert schema["properties"]["offices"]["items"] == {"$ref": "#/$defs/Address"}
    assert schema["$defs"]["Address"]["additionalProperties"] is False


async def test_parse_without_strict_support_sends_the_plain_schema(
    server: FakeOpenAIServer,
) -> None:
    loose = preset(
        "Loose",
        server.base_url,
        None,
        "m",
        capabilities=Capabilities(strict_json_schema=False),
    )
    server.script(Behavior(text=PERSON))
    async with chatkit.AsyncClient(provider=loose) as client:
        await client.chat.completions.parse(messages=HELLO, response_format=Person)
    spec = server.requests[-1].json["response_format"]["json_schema"]
    assert "strict" not in spec
    assert spec["schema"] == Person.model_json_schema()


def test_every_openai_compatible_preset_declares_strict_schemas() -> None:
    assert OpenAI.capabilities.strict_json_schema
    for name, cls in PRESETS.items():
        assert cls.capabilities.strict_json_schema, name


def test_strict_schema_leaves_the_callers_schema_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"allOf": [{"$ref": "#/$defs/A"}], "description": "an A"},
            "b": {"type": "object", "additionalProperties": True, "properties": {}},
        },
        "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    }
    before = copy.deepcopy(schema)
    strict = strict_json_schema(schema)
    assert schema == before
    a = strict["properties"]["a"]
    assert "allOf" not in a and "$ref" not in a and a["description"] == "an A"
    assert a["required"] == ["x"] and a["additionalProperties"] is False
    assert strict["properties"]["b"]["additionalProperties"] is True  # the caller's choice
    with pytest.raises(InvalidRequestError):
        strict_json_schema({"properties": {"a": {"$ref": "#/$defs/Nope", "title": "A"}}})


async def test_anthropic_parse_still_gets_its_output_format() -> None:
    async with FakeAnthropicServer() as anthropic:
        anthropic.script(Behavior(text=PERSON))
        provider = Anthropic(base_url=anthropic.base_url, api_key="sk-ant-test")
        async with chatkit.AsyncClient(provider=provider) as client:
            completion = await client.chat.completions.parse(messages=HELLO, response_format=Person)
    assert completion.parsed is not None and completion.parsed.name == "Ada"
    schema = anthropic.requests[-1].json["output_config"]["format"]["schema"]
    assert schema["additionalProperties"] is False


# -- item 9: local servers are asked for their model --------------------------


@pytest.mark.parametrize("name", ["vllm", "llamacpp", "lmstudio"])
@pytest.mark.parametrize("stream", [False, True])
async def test_local_presets_ask_the_server_for_its_model(name: str, stream: bool) -> None:
    async with FakeOpenAIServer(models=["served-model", "other"]) as local:
        provider = PRESETS[name](base_url=local.base_url)
        async with chatkit.AsyncClient(provider=provider) as client:
            for _ in range(2):
                if stream:
                    await client.chat.completions.create(messages=HELLO, stream=True).until_done()
                else:
                    await client.chat.completions.create(messages=HELLO)
            # An explicit model is sent as it is, and asks nothing.
            await client.chat.completions.create(model="chosen", messages=HELLO)
    paths = [r.path for r in local.requests]
    # Asked once per provider instance.
    assert paths == ["/v1/models"] + ["/v1/chat/completions"] * 3
    assert sent_models(local) == ["served-model", "served-model", "chosen"]


def test_a_local_preset_with_a_default_model_asks_nothing(server: FakeOpenAIServer) -> None:
    with chatkit.Client(provider=vLLM(base_url=server.base_url, default_model="mine")) as client:
        client.chat.completions.create(messages=HELLO)
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]
    assert sent_models(server) == ["mine"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_local_server_with_no_models_is_a_clear_error(stream: bool) -> None:
    async with FakeOpenAIServer(models=[]) as local:
        async with chatkit.AsyncClient(provider=vLLM(base_url=local.base_url)) as client:
            with pytest.raises(chatkit.ModelNotFoundError, match="lists no models") as caught:
                if stream:
                    await client.chat.completions.create(messages=HELLO, stream=True)
                else:
                    await client.chat.completions.create(messages=HELLO)
        assert caught.value.field == "model"
        assert [r.path for r in local.requests] == ["/v1/models"]


# -- item 10: a user's script passes mypy --strict ----------------------------

TYPING = Path(__file__).parent / "typing"


def run_mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=50,
        check=False,
    )


def test_a_users_script_passes_mypy_strict() -> None:
    # assert_type in the script fails mypy if a call's type is wrong or Any.
    result = run_mypy(TYPING / "user_script.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_misusing_a_result_fails_mypy(tmp_path: Path) -> None:
    script = tmp_path / "misuse.py"
    script.write_text(
        "import chatkit\n"
        "from chatkit import ChatCompletion\n"
        "async def main(client: chatkit.AsyncClient, sync: chatkit.Client) -> None:\n"
        "    wrong: ChatCompletion = client.chat.completions.create(stream=True)\n"
        "    also_wrong: str = await client.chat.completions.create()\n"
        "    sync.chat.completions.create().until_done()\n"
    )
    result = run_mypy(script)
    assert result.returncode == 1
    assert result.stdout.count("error:") == 3, result.stdout


@pytest.mark.parametrize("mode", ["stream", "plain"])
def test_the_users_script_runs(mode: str) -> None:
    with FakeOpenAIServer(Behavior(text='{"name": "Paris"}')).run_in_thread() as json_server:
        result = subprocess.run(
            [sys.executable, str(TYPING / "user_script.py"), json_server.base_url, mode],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("|Paris")
