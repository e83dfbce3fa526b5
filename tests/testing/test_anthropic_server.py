"""The fake Anthropic server, driven by a raw aiohttp client.

chatkit's client is deliberately not used: these tests pin down the bytes the
server puts on the wire, checked against Anthropic's documented formats
(https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/api/errors).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer, _openai_server
from chatkit.testing._anthropic_server import error_type_for, invalid_request

pytestmark = pytest.mark.anyio

KEY = "sk-ant-fake"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Say hello to me"}],
}
STREAM = {**BODY, "stream": True}


@asynccontextmanager
async def serve(
    behavior: Behavior | None = None, **kwargs: Any
) -> AsyncIterator[tuple[FakeAnthropicServer, aiohttp.ClientSession]]:
    kwargs.setdefault("api_key", KEY)
    async with (
        FakeAnthropicServer(behavior, **kwargs) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
    ):
        yield server, session


def url(server: FakeAnthropicServer) -> str:
    return server.base_url + "/v1/messages"


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data object)`` for each SSE event; checks name == data type."""
    parsed = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        parsed.append((name, data))
    return parsed


async def post(
    session: aiohttp.ClientSession,
    server: FakeAnthropicServer,
    body: Any = STREAM,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url(server), json=body, headers=headers or HEADERS) as response:
        return response.status, dict(response.headers), await response.read()


# -- the stream ---------------------------------------------------------------


async def test_text_stream_follows_the_documented_event_flow() -> None:
    async with serve(Behavior(chunks=["Hi", " there"])) as (server, session):
        status, headers, raw = await post(session, server)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["request-id"] == "req_1"
    assert events(raw) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-test",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 4, "output_tokens": 1},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " there"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


async def test_thinking_text_and_tool_use_blocks() -> None:
    arguments = json.dumps({"city": "Paris"})
    behavior = Behavior(
        text="Checking.",
        reasoning=["Hmm"],
        tool_calls=[{"id": "toolu_1", "name": "get_weather", "arguments": arguments}],
    )
    async with serve(behavior) as (server, session):
        _, _, raw = await post(session, server)
    flow = events(raw)
    starts = [d["content_block"] for n, d in flow if n == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    ]
    deltas = [(d["index"], d["delta"]) for n, d in flow if n == "content_block_delta"]
    assert deltas[0] == (0, {"type": "thinking_delta", "thinking": "Hmm"})
    assert deltas[1] == (0, {"type": "signature_delta", "signature": "ZmFrZS1zaWduYXR1cmU="})
    assert deltas[2] == (1, {"type": "text_delta", "text": "Checking."})
    fragments = [d["partial_json"] for i, d in deltas[3:]]
    assert all(i == 2 for i, _ in deltas[3:])
    assert len(fragments) > 1 and "".join(fragments) == arguments
    stops = [d["index"] for n, d in flow if n == "content_block_stop"]
    assert stops == [0, 1, 2]
    message_delta = next(d for n, d in flow if n == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_finish_reasons_in_either_vocabulary(finish: str, stop_reason: str) -> None:
    async with serve(Behavior(finish_reason=finish)) as (server, session):
        _, _, raw = await post(session, server)
        _, _, whole = await post(session, server, BODY)
    message_delta = next(d for n, d in events(raw) if n == "message_delta")
    assert message_delta["delta"]["stop_reason"] == stop_reason
    assert json.loads(whole)["stop_reason"] == stop_reason


async def test_stop_sequence_names_the_sequence() -> None:
    body = {**STREAM, "stop_sequences": ["END", "STOP"]}
    async with serve(Behavior(finish_reason="stop_sequence")) as (server, session):
        _, _, raw = await post(session, server, body)
    message_delta = next(d for n, d in events(raw) if n == "message_delta")
    assert message_delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


async def test_done_false_leaves_out_message_stop() -> None:
    async with serve(Behavior(done=False)) as (server, session):
        _, _, raw = await post(session, server)
    assert [n for n, _ in events(raw)][-1] == "message_delta"


@pytest.mark.parametrize(
    ("kind", "sent"), [("server_error", "api_error"), ("overloaded_error", "overloaded_error")]
)
async def test_error_event_mid_stream(kind: str, sent: str) -> None:
    behavior = Behavior(chunks=["a", "b", "c"], error_event_after=2, error_event_type=kind)
    async with serve(behavior) as (server, session):
        status, _, raw = await post(session, server)
    assert status == 200
    flow = events(raw)
    texts = [d["delta"]["text"] for n, d in flow if n == "content_block_delta"]
    assert texts == ["a", "b"]
    assert flow[-1] == (
        "error",
        {"type": "error", "error": {"type": sent, "message": "fake error event"}},
    )


async def test_malformed_event() -> None:
    async with serve(Behavior(chunks=["a", "b"], malformed_after=1)) as (server, session):
        _, _, raw = await post(session, server)
    assert b"event: content_block_delta\ndata: {not json\n\n" in raw


async def test_drop_after_closes_mid_body() -> None:
    received = bytearray()
    async with serve(Behavior(chunks=["a", "b", "c"], drop_after=1)) as (server, session):
        response = await session.post(url(server), json=STREAM, headers=HEADERS)
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in response.content.iter_any():
                received += data
        response.close()
    assert b'"text":"a"' in received and b'"text":"b"' not in received


async def test_huge_line() -> None:
    async with serve(Behavior(chunks=["ok"], huge_line=200_000)) as (server, session):
        _, _, raw = await post(session, server)
    longest = max(len(line) for line in raw.split(b"\n"))
    assert 200_000 <= longest < 200_300


async def test_stall_with_trickle_sends_comments() -> None:
    behavior = Behavior(chunks=["a"], stall_after=1, stall_seconds=0.3, trickle=0.1)
    async with serve(behavior) as (server, session):
        _, _, raw = await post(session, server)
    assert b": keep-alive\n\n" in raw
    assert b"message_stop" in raw


async def test_delay_between_chunks_still_sends_everything() -> None:
    async with serve(Behavior(chunks=["a", "b"], delay=0.01)) as (server, session):
        _, _, raw = await post(session, server)
    assert [n for n, _ in events(raw)][-1] == "message_stop"


async def test_client_leaving_mid_stream_counts_as_a_disconnect() -> None:
    behavior = Behavior(chunks=["a"], stall_after=1)
    async with serve(behavior) as (server, session):
        async with session.post(url(server), json=STREAM, headers=HEADERS) as response:
            await response.content.readany()
        assert await server.wait_for_disconnects(1)
        assert server.active_streams == 0


async def test_write_failure_counts_a_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer that vanishes between writes surfaces as ConnectionResetError from
    # write(); force that path, which is timing-dependent on a real socket.
    async def broken_write(*args: Any) -> None:
        raise ConnectionResetError("peer gone")

    monkeypatch.setattr(_openai_server, "write_stream", broken_write)
    async with serve() as (server, session):
        response = await session.post(url(server), json=STREAM, headers=HEADERS)
        await response.read()
        assert server.disconnects == 1
        assert server.active_streams == 0


# -- non-streamed answers -------------------------------------------------------


async def test_message_object() -> None:
    behavior = Behavior(
        text="Hi there",
        reasoning=["Think"],
        tool_calls=[{"id": "toolu_1", "name": "f", "arguments": '{"x": 1}'}, {"name": "g"}],
    )
    body = {**BODY, "system": "Be kind."}
    async with serve(behavior) as (server, session):
        status, headers, raw = await post(session, server, body)
    assert status == 200
    assert headers["request-id"] == "req_1"
    assert json.loads(raw) == {
        "id": "msg_fake1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Think", "signature": "ZmFrZS1zaWduYXR1cmU="},
            {"type": "text", "text": "Hi there"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}},
            {"type": "tool_use", "id": "call_1", "name": "g", "input": {}},
        ],
        "model": "claude-test",
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 6, "output_tokens": 6},
    }


async def test_tool_arguments_that_are_not_json_become_an_empty_input() -> None:
    behavior = Behavior(text="", tool_calls=[{"id": "t", "name": "f", "arguments": "{broken"}])
    async with serve(behavior) as (server, session):
        _, _, raw = await post(session, server, BODY)
    assert json.loads(raw)["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("overloaded_error", 529),
        ("rate_limit_error", 429),
        ("server_error", 500),
        ("timeout_error", 504),
    ],
)
async def test_non_streamed_error_event_becomes_a_status(kind: str, status: int) -> None:
    async with serve(Behavior(error_event_after=0, error_event_type=kind)) as (server, session):
        got, _, raw = await post(session, server, BODY)
    assert got == status
    body = json.loads(raw)
    assert body["type"] == "error"
    assert body["request_id"] == "req_1"


async def test_non_streamed_faults() -> None:
    async with serve() as (server, session):
        server.script(Behavior(malformed_after=0), Behavior(stall_after=0, stall_seconds=0.05))
        status, _, raw = await post(session, server, BODY)
        assert (status, raw) == (200, b"{not json")
        status, _, raw = await post(session, server, BODY)
        assert json.loads(raw)["type"] == "message"
        server.script(Behavior(drop_after=0))
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(session, server, BODY)


# -- errors and validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (418, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
async def test_error_statuses_have_anthropic_bodies(status: int, kind: str) -> None:
    assert error_type_for(status) == kind
    async with serve() as (server, session):
        server.fail(1, status, retry_after=2)
        got, headers, raw = await post(session, server)
    assert got == status
    assert headers["Retry-After"] == "2"
    assert headers["request-id"] == "req_1"
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": kind, "message": f"Fake error: HTTP {status}."},
        "request_id": "req_1",
    }


async def test_explicit_error_type_and_reset() -> None:
    async with serve() as (server, session):
        server.fail(1, 429, error_type="billing_error")
        _, _, raw = await post(session, server)
        assert json.loads(raw)["error"]["type"] == "billing_error"
        server.script(Behavior(reset=True))
        with pytest.raises(aiohttp.ClientError):
            await post(session, server)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"anthropic-version": "2023-06-01"}, "x-api-key header is required"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, "invalid x-api-key"),
    ],
)
async def test_authentication(headers: dict[str, str], message: str) -> None:
    async with serve() as (server, session):
        status, _, raw = await post(session, server, headers=headers)
        models_status = (await session.get(server.base_url + "/v1/models", headers=headers)).status
    assert (status, models_status) == (401, 401)
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": message},
    }


async def test_no_key_configured_accepts_any_key() -> None:
    async with serve(api_key=None) as (server, session):
        status, _, _ = await post(session, server, headers={"anthropic-version": "2023-06-01"})
    assert status == 200


async def test_anthropic_version_is_required() -> None:
    async with serve() as (server, session):
        status, _, raw = await post(session, server, headers={"x-api-key": KEY})
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "anthropic-version: header is required"


async def test_invalid_json_body() -> None:
    async with serve() as (server, session):
        response = await session.post(url(server), data=b"{oops", headers=HEADERS)
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert server.requests[0].body == b"{oops"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Request body must be a JSON object"),
        ({**BODY, "model": None}, "model: Field required"),
        ({**BODY, "max_tokens": None}, "max_tokens: Field required"),
        ({**BODY, "max_tokens": True}, "max_tokens: Field required"),
        ({**BODY, "messages": []}, "messages: Field required"),
        (
            {**BODY, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role: Unexpected role 'system'",
        ),
        ({**BODY, "messages": ["hi"]}, "messages.0.role: Unexpected role None"),
        (
            {**BODY, "messages": [{"role": "user", "content": 5}]},
            "messages.0.content: Input should be",
        ),
        (
            {**BODY, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0: Input tag 'image_url'",
        ),
        (
            {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages.0.content.0: text content blocks must be non-empty",
        ),
    ],
)
async def test_requests_anthropic_would_refuse(body: Any, message: str) -> None:
    problem = invalid_request(body)
    assert problem is not None and problem.startswith(message)
    async with serve() as (server, session):
        status, _, raw = await post(session, server, body)
    assert status == 400
    assert json.loads(raw)["error"] == {"type": "invalid_request_error", "message": problem}


def test_valid_blocks_pass_validation() -> None:
    content = [
        {"type": "text", "text": "x"},
        {"type": "image", "source": {"type": "url", "url": "https://e/x.png"}},
        {"type": "tool_result", "tool_use_id": "t", "content": "ok"},
    ]
    assert invalid_request({**BODY, "messages": [{"role": "user", "content": content}]}) is None


async def test_behavior_override_header() -> None:
    async with serve() as (server, session):
        headers = {**HEADERS, "x-fake-behavior": json.dumps({"chunks": ["over"]})}
        _, _, raw = await post(session, server, headers=headers)
    texts = [d["delta"]["text"] for n, d in events(raw) if n == "content_block_delta"]
    assert texts == ["over"]


# -- models, lifecycle --------------------------------------------------------


async def test_models_are_paged() -> None:
    async with serve(models=["a", "b", "c"]) as (server, session):
        first = await (
            await session.get(server.base_url + "/v1/models?limit=2", headers=HEADERS)
        ).json()
        second = await (
            await session.get(server.base_url + "/v1/models?limit=2&after_id=b", headers=HEADERS)
        ).json()
        everything = await (
            await session.get(server.base_url + "/v1/models", headers=HEADERS)
        ).json()
        bad = await session.get(server.base_url + "/v1/models?limit=x", headers=HEADERS)
    assert first == {
        "data": [
            {"type": "model", "id": "a", "display_name": "a", "created_at": "2025-01-01T00:00:00Z"},
            {"type": "model", "id": "b", "display_name": "b", "created_at": "2025-01-01T00:00:00Z"},
        ],
        "has_more": True,
        "first_id": "a",
        "last_id": "b",
    }
    assert [m["id"] for m in second["data"]] == ["c"] and second["has_more"] is False
    assert len(everything["data"]) == 3
    assert bad.status == 400


async def test_empty_model_page() -> None:
    async with serve(models=[]) as (server, session):
        page = await (await session.get(server.base_url + "/v1/models", headers=HEADERS)).json()
    assert page == {"data": [], "has_more": False, "first_id": None, "last_id": None}


async def test_lifecycle() -> None:
    server = FakeAnthropicServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert isinstance(server, FakeOpenAIServer)  # shares the scripting and lifecycle API
    async with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        with pytest.raises(RuntimeError):
            await server.start()
        async with aiohttp.ClientSession() as session:
            response = await session.get(server.base_url + "/health")
            assert await response.text() == "ok"


async def test_start_failure_releases_the_runner() -> None:
    async with FakeAnthropicServer() as taken:
        clash = FakeAnthropicServer(port=taken.port)
        with pytest.raises(OSError):
            await clash.start()
        await clash.close()


def test_runs_in_a_thread_for_sync_code() -> None:
    import urllib.request

    with FakeAnthropicServer(Behavior(text="sync")).run_in_thread() as server:
        request = urllib.request.Request(
            server.base_url + "/v1/messages",
            data=json.dumps(BODY).encode(),
            headers={**HEADERS, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            message = json.loads(response.read())
    assert message["content"] == [{"type": "text", "text": "sync"}]
