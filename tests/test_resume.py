"""Resuming a stream that broke off after content (``resume=``), against real fake servers.

The fake servers honour a prefill the way the real APIs do (Anthropic: a
final assistant message; the OpenAI fake: ``continue_final_message``), drop
the connection after k chunks when scripted to, and can repeat the prefill's
last words on a continuation (``resume_echo``). Every stream test runs through
the async and the sync client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from resume_support import (
    KINDS,
    MESSAGES,
    TEXT,
    VLLM,
    Scripted,
    anthropic_at,
    ask,
    chunk,
    named,
    threaded,
    vllm_at,
)

import chatkit
from chatkit import AsyncClient, Client, Resume, StreamInterrupted
from chatkit.providers import Anthropic, Gemini, Local, OpenAI, get_provider_class
from chatkit.providers.base import Capabilities
from chatkit.testing import Behavior, FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio


# -- the caller's text is the uninterrupted answer -----------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("echo", [0, 3])
async def test_anthropic_resumes_into_the_uninterrupted_answer(kind: str, echo: int) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT, resume_echo=echo))) as server:
        server.script(Behavior(text=TEXT, drop_after=6))
        seen = await ask(kind, anthropic_at(server), model="claude-fake")
    assert seen.error is None
    assert seen.text == TEXT
    assert seen.delivered == TEXT
    assert len(seen.resumes) == 1
    record = seen.resumes[0]
    prefill = "The quick brown fox jumps over"
    assert (record.number, record.offset, record.provider) == (1, len(prefill), "Anthropic")
    assert record.ok and record.error is None
    # The repeated words were dropped at the seam: " fox jumps over".
    assert record.overlap == (len(" fox jumps over") if echo == 3 else 0)
    continuation = server.requests[1].json
    assert continuation["messages"][-1] == {"role": "assistant", "content": prefill}
    assert continuation["messages"][:-1] == [{"role": "user", "content": MESSAGES[0]["content"]}]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("echo", [0, 2])
async def test_openai_compatible_with_continue_resumes(kind: str, echo: int) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=echo))) as server:
        server.script(Behavior(text=TEXT, drop_after=9))
        seen = await ask(kind, vllm_at(server))
    assert seen.error is None
    assert seen.text == TEXT == seen.delivered
    body = server.requests[1].json
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["messages"][-1]["role"] == "assistant"
    assert TEXT.startswith(body["messages"][-1]["content"])
    assert "continue_final_message" not in server.requests[0].json


@pytest.mark.parametrize("kind", KINDS)
async def test_trailing_whitespace_is_kept_out_of_the_prefill_and_not_repeated(kind: str) -> None:
    # Pieces that end in a space: the text delivered when the stream breaks
    # ends in whitespace, which Anthropic refuses in a prefill (the fake too).
    pieces = ["Roses ", "are ", "red,\n\n", "violets ", "are ", "blue."]
    answer = "".join(pieces)
    with threaded(FakeAnthropicServer(Behavior(chunks=pieces))) as server:
        server.script(Behavior(chunks=pieces, drop_after=3))
        seen = await ask(kind, anthropic_at(server), model="claude-fake")
    assert seen.error is None
    assert seen.text == answer
    assert server.requests[1].json["messages"][-1]["content"] == "Roses are red,"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_final_completion_is_one_message(kind: str) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=2))) as server:
        server.script(Behavior(text=TEXT, drop_after=4), Behavior(text=TEXT, drop_after=5))
        seen = await ask(kind, vllm_at(server))
    assert seen.error is None and len(seen.resumes) == 2
    assert seen.final is not None
    assert seen.final.choices[0].message.content == TEXT
    assert seen.final.choices[0].finish_reason == "stop"
    assert {chunk.id for chunk in seen.chunks} == {seen.final.id}
    roles = [c.choices[0].delta.role for c in seen.chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    # Every piece is an attempt; each continuation lists its own.
    assert [a.ok for a in seen.attempts] == [True, True, True]
    assert [[a.number for a in r.attempts] for r in seen.resumes] == [[2], [3]]
    # Usage: the last piece's (the broken ones reported none), its prompt
    # counting the prefill that was sent again.
    assert seen.final.usage is not None
    assert seen.final.usage.prompt_tokens > len(MESSAGES[0]["content"].split())


# -- who is not resumed ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_plain_openai_cannot_continue_and_raises_as_before(kind: str) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        seen = await ask(kind, OpenAI(base_url=server.base_url, api_key="sk-test"))
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.partial_text == seen.text == "The quick brown fox jumps"
    assert seen.resumes == []
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_gemini_cannot_continue_and_raises_as_before(kind: str) -> None:
    with threaded(FakeGeminiServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=3))
        provider = Gemini(api_key="gm-test", base_url=server.base_url)
        seen = await ask(kind, provider, model="gemini-fake")
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.partial_text == seen.text
    assert TEXT.startswith(seen.text) and seen.text
    assert len(server.requests) == 1


async def test_without_resume_nothing_changes() -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        seen = await ask("async", anthropic_at(server), options={"resume": None}, model="m")
    assert isinstance(seen.error, StreamInterrupted)
    assert len(server.requests) == 1 and seen.resumes == []


@pytest.mark.parametrize("kind", KINDS)
async def test_max_resumes_then_the_whole_partial_text(kind: str) -> None:
    drops = [Behavior(text=TEXT, drop_after=k) for k in (3, 4, 5)]
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(*drops)
        seen = await ask(kind, anthropic_at(server), options={"resume": Resume(max_resumes=2)})
    assert isinstance(seen.error, StreamInterrupted)
    # Three pieces reached the caller: 3 words, then 4, then 5 more.
    assert seen.error.partial_text == seen.text == " ".join(TEXT.split()[:12])
    assert len(seen.resumes) == 2 and len(server.requests) == 3
    assert seen.error.attempts == seen.attempts and len(seen.attempts) == 3


async def test_max_resumes_zero_never_resumes() -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=3))
        options = {"resume": Resume(max_resumes=0)}
        seen = await ask("async", anthropic_at(server), options=options)
    assert isinstance(seen.error, StreamInterrupted)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failure_before_content_is_an_ordinary_retry(kind: str) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.fail(1, 503, retry_after=0)
        seen = await ask(kind, anthropic_at(server), options={"max_retries": 1})
    assert seen.error is None and seen.text == TEXT
    assert seen.resumes == []
    assert [a.status_code for a in seen.attempts] == [503, None]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_continuation_is_retried_before_its_content(kind: str) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=4), Behavior(status=529, retry_after=0))
        seen = await ask(kind, anthropic_at(server), options={"max_retries": 1})
    assert seen.error is None and seen.text == TEXT
    (record,) = seen.resumes
    assert [a.status_code for a in record.attempts] == [529, None]
    assert len(seen.attempts) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_a_continuation_refused_ends_with_the_text_so_far(kind: str) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=4), Behavior(status=400))
        seen = await ask(kind, anthropic_at(server))
    assert isinstance(seen.error, StreamInterrupted)
    assert isinstance(seen.error.cause, chatkit.BadRequestError)
    assert seen.error.partial_text == seen.text == "The quick brown fox"
    (record,) = seen.resumes
    assert record.error is seen.error.cause and not record.ok
    assert isinstance(record.cause, chatkit.APIConnectionError)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_server_error_event_mid_stream_is_resumed(kind: str) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, error_event_after=5))
        seen = await ask(kind, vllm_at(server))
    assert seen.error is None and seen.text == TEXT
    assert isinstance(seen.resumes[0].cause, chatkit.InternalServerError)


async def test_a_failure_that_is_not_retryable_is_not_resumed() -> None:
    # A malformed event: the server sends what no retry can fix.
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, malformed_after=5))
        seen = await ask("async", vllm_at(server))
    assert isinstance(seen.error, StreamInterrupted)
    assert isinstance(seen.error.cause, chatkit.ResponseDecodeError)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_call_streams_are_not_resumed(kind: str) -> None:
    call = {"id": "call_1", "name": "lookup", "arguments": json.dumps({"query": "fox" * 10})}
    with threaded(FakeAnthropicServer(Behavior(text="", tool_calls=[call]))) as server:
        server.script(Behavior(text="", tool_calls=[call], drop_after=3))
        seen = await ask(kind, anthropic_at(server))
    assert isinstance(seen.error, StreamInterrupted)
    assert len(server.requests) == 1 and seen.resumes == []


async def test_more_than_one_choice_is_not_resumed() -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=4))
        seen = await ask("async", vllm_at(server), n=2)
    assert isinstance(seen.error, StreamInterrupted)
    assert len(server.requests) == 1


# -- RetryProvider: the same provider, or the next that can continue --------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same_only", [True, False])
async def test_same_provider_only_with_a_retry_provider(kind: str, same_only: bool) -> None:
    first, second = named(VLLM, "vllm-a"), named(VLLM, "vllm-b")
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=2))) as b,
    ):
        # a: breaks off, then its continuation fails before content.
        a.script(Behavior(text=TEXT, drop_after=5), Behavior(status=503))
        provider = chatkit.RetryProvider(
            [vllm_at(a, first), OpenAI(base_url=b.base_url, api_key="x"), vllm_at(b, second)],
            shuffle=False,
            resume=Resume(same_provider_only=same_only),
        )
        seen = await ask(kind, provider, options={"resume": None})
    if same_only:
        assert isinstance(seen.error, StreamInterrupted)
        assert seen.error.partial_text == "The quick brown fox jumps"
        assert len(b.requests) == 0
        return
    assert seen.error is None and seen.text == TEXT
    (record,) = seen.resumes
    assert record.provider == "vllm-b"
    # Plain OpenAI (between them) cannot continue: it is not asked.
    assert [a.provider for a in record.attempts] == ["vllm-a", "vllm-b"]
    assert len(b.requests) == 1 and b.requests[0].json["continue_final_message"] is True


async def test_the_clients_resume_overrides_the_retry_providers() -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        provider = chatkit.RetryProvider([vllm_at(server)], resume=Resume(max_resumes=0))
        seen = await ask("async", provider, options={"resume": True})
    assert seen.error is None and seen.text == TEXT


# -- usage, hooks -----------------------------------------------------------------------


class _Pieces:
    """A third-party provider streaming usage on every chunk (like vLLM's
    ``continuous_usage_stats``) that breaks off once, then continues."""

    name = "Pieces"
    capabilities = Capabilities(continue_message=True)

    def __init__(self) -> None:
        self.requests: list[chatkit.ChatRequest] = []

    async def stream(self, request: chatkit.ChatRequest, http: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        first = len(self.requests) == 1
        words = ["One", " two", " three"] if first else [" four", " five."]
        for i, word in enumerate(words):
            usage = {"prompt_tokens": 10, "completion_tokens": i + 1, "total_tokens": 11 + i}
            last = not first and i == len(words) - 1
            yield chunk(
                {"content": word},
                "stop" if last else None,
                id=f"piece{len(self.requests)}",
                model="pieces",
                usage=usage,
            )
        if first:
            raise chatkit.APIConnectionError("Pieces: connection reset", provider="Pieces")


@pytest.mark.parametrize("kind", KINDS)
async def test_usage_is_summed_over_the_pieces(kind: str) -> None:
    provider = _Pieces()
    seen = await ask(kind, provider)
    assert seen.error is None and seen.text == "One two three four five."
    usage = seen.final.usage if seen.final else None
    assert usage is not None
    # piece 1: 10 + 3 = 13; piece 2: 10 + 2 = 12.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 5, 25)
    assert provider.requests[1].messages[-1] == {"role": "assistant", "content": "One two three"}


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.text = ""

    def on_attempt_start(self, call: Any, attempt: chatkit.Attempt, endpoint: Any) -> None:
        self.events.append("start")

    def on_attempt_end(self, call: Any, attempt: chatkit.Attempt) -> None:
        self.events.append("end" if attempt.ok else "failed")

    def on_call_end(self, call: Any) -> None:
        self.events.append("call_end")
        self.text = call.text


@pytest.mark.parametrize("kind", KINDS)
async def test_hooks_see_each_piece_as_an_attempt(kind: str) -> None:
    hook = _Recorder()
    with threaded(FakeAnthropicServer(Behavior(text=TEXT, resume_echo=2))) as server:
        server.script(Behavior(text=TEXT, drop_after=5), Behavior(status=500))
        seen = await ask(kind, anthropic_at(server), options={"hooks": [hook], "max_retries": 1})
    assert seen.error is None
    assert hook.events == ["start", "end", "start", "failed", "start", "end", "call_end"]
    assert hook.text == TEXT


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["yes", 1, Resume, {"max_resumes": 2}],
)
def test_resume_is_validated_before_any_io(value: Any) -> None:
    for make in (AsyncClient, Client):
        with pytest.raises(chatkit.InvalidRequestError) as caught:
            make(OpenAI(base_url="http://127.0.0.1:9/v1"), resume=value)
        assert caught.value.field == "resume"
    with pytest.raises(chatkit.InvalidRequestError):
        chatkit.RetryProvider(["openai"], resume=value)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_resumes": -1},
        {"max_resumes": 1.5},
        {"max_resumes": True},
        {"max_overlap": -3},
        {"same_provider_only": "no"},
    ],
)
def test_resume_fields_are_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        Resume(**fields)
    assert caught.value.field == "resume"


def test_resume_true_means_the_defaults() -> None:
    assert Resume.coerce(True) == Resume() == Resume(2, True)
    assert Resume.coerce(False) is None and Resume.coerce(None) is None


def test_which_providers_can_continue() -> None:
    from chatkit._resume import can_continue

    assert can_continue(Anthropic) and can_continue(VLLM)
    assert can_continue(get_provider_class("llamacpp"))
    assert not can_continue(OpenAI) and not can_continue(Gemini)
    assert not can_continue(get_provider_class("groq"))
    assert not can_continue(get_provider_class("lmstudio"))
    assert can_continue(Local())


# -- the gateway: one uninterrupted SSE stream ------------------------------------------


async def test_a_resumed_stream_is_one_sse_stream_through_the_gateway() -> None:
    import openai

    from chatkit.server import create_app, serve

    async with FakeOpenAIServer(Behavior(text=TEXT, resume_echo=3)) as upstream:
        upstream.script(Behavior(text=TEXT, drop_after=7))
        client = AsyncClient(vllm_at(upstream), resume=True, max_retries=0)
        app = create_app(client, close_client=True)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, port=0, on_ready=ready.set_result, stop=stop))
        try:
            url = await ready
            async with openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0
            ) as official:
                stream = await official.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
                ids, parts = set(), []
                async for chunk in stream:
                    ids.add(chunk.id)
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
        finally:
            stop.set()
            await task
    assert "".join(parts) == TEXT
    assert len(ids) == 1
    assert len(upstream.requests) == 2


# -- the embedded model really continues a prefill --------------------------------------


@pytest.mark.skipif(not Local.is_available(), reason="needs chatkit[local]")
async def test_local_continues_a_final_assistant_message() -> None:
    async with AsyncClient(Local()) as client:
        question = [{"role": "user", "content": "What is the capital of France?"}]
        whole = await client.chat.completions.create(
            messages=question, temperature=0, max_tokens=24
        )
        answer = whole.text
        words = answer.split(" ")
        assert len(words) > 2, answer
        prefill = " ".join(words[:2])
        rest = await client.chat.completions.create(
            messages=[*question, {"role": "assistant", "content": prefill}],
            stream=True,
            temperature=0,
            max_tokens=24,
        )
        continuation = (await rest.until_done()).text
    assert prefill + continuation == answer


# -- the continuation request -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_conversation_ending_in_the_callers_own_prefill(kind: str) -> None:
    own = [*MESSAGES, {"role": "assistant", "content": "The quick "}]
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=3))
        seen = await ask(kind, anthropic_at(server), messages_override=own)
    assert seen.error is None
    assert "The quick " + seen.text.lstrip() == TEXT
    first, second = (r.json["messages"] for r in server.requests)
    assert first[-1] == {"role": "assistant", "content": "The quick"}  # no trailing space
    assert second[-1] == {"role": "assistant", "content": "The quick brown fox jumps"}
    assert own[-1]["content"] == "The quick "  # the caller's messages are untouched


def test_anthropic_prefill_is_sent_without_trailing_whitespace() -> None:
    from chatkit._request import build_request
    from chatkit.providers._anthropic_request import messages_body

    messages = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " \n"}],
        },
    ]
    request = build_request(model="m", messages=messages, stream=True, params={})
    body = messages_body(request, model="m", default_max_tokens=10, stream=True)
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello"}
    only_space = [messages[0], {"role": "assistant", "content": "  "}]
    request = build_request(model="m", messages=only_space, stream=True, params={})
    body = messages_body(request, model="m", default_max_tokens=10, stream=True)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


async def test_continue_flags_only_where_declared_and_extra_body_wins() -> None:
    prefilled = [*MESSAGES, {"role": "assistant", "content": "The quick"}]
    async with FakeOpenAIServer(Behavior(text=TEXT)) as server:
        async with AsyncClient(OpenAI(base_url=server.base_url, api_key="k")) as plain:
            await plain.chat.completions.create(messages=prefilled, model="m")
        async with AsyncClient(vllm_at(server)) as vllm:
            answer = await vllm.chat.completions.create(messages=prefilled)
            await vllm.chat.completions.create(
                messages=prefilled, extra_body={"continue_final_message": False}
            )
    bodies = [r.json for r in server.requests]
    assert "continue_final_message" not in bodies[0]
    assert bodies[1]["continue_final_message"] is True
    assert bodies[1]["add_generation_prompt"] is False
    assert answer.text == TEXT[len("The quick") :]
    assert bodies[2]["continue_final_message"] is False


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("end", ["finish", "end"])
async def test_a_continuation_that_only_repeats_adds_nothing(kind: str, end: str) -> None:
    # The continuation repeats " three" and stops: with a finishing chunk, or
    # (a lax server) without one, while the seam still held the repeat.
    provider = Scripted((["One", " two", " three"], "reset"), ([" two", " three"], end))
    seen = await ask(kind, provider)
    assert seen.error is None
    assert seen.text == "One two three"
    assert seen.resumes[0].overlap == len(" two three")


@pytest.mark.parametrize("kind", KINDS)
async def test_held_text_is_handed_on_when_a_continuation_ends_without_finishing(
    kind: str,
) -> None:
    provider = Scripted((["One", " two", " three"], "reset"), ([" two", " thre"], "end"))
    seen = await ask(kind, provider)
    assert seen.error is None
    assert seen.text == "One two three two thre"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failure_before_any_content_is_raised_as_it_was(kind: str) -> None:
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.fail(1, 400)
        seen = await ask(kind, anthropic_at(server)) if kind == "async" else None
        if kind == "sync":
            with pytest.raises(chatkit.BadRequestError):
                await ask(kind, anthropic_at(server))
    if seen is not None:
        assert isinstance(seen.error, chatkit.BadRequestError)


def test_prefilled_messages() -> None:
    from chatkit._resume import prefilled_messages

    user = {"role": "user", "content": "Hi"}
    assert prefilled_messages([user], "Hel") == [user, {"role": "assistant", "content": "Hel"}]
    own = {"role": "assistant", "content": "Well, "}
    merged = prefilled_messages([user, own], "it is")
    assert merged is not None and merged[-1]["content"] == "Well, it is"
    spaced = prefilled_messages([user, own], " it is")
    assert spaced is not None and spaced[-1]["content"] == "Well, it is"
    parts = {"role": "assistant", "content": [{"type": "text", "text": "Well"}]}
    assert prefilled_messages([user, parts], "it") is None
    calls = {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}
    assert prefilled_messages([user, calls], "it") is None
    assert own == {"role": "assistant", "content": "Well, "}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_nested_retry_provider_resumes_on_its_leaf(kind: str) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=2))) as server:
        server.script(Behavior(text=TEXT, drop_after=6))
        inner = chatkit.RetryProvider([vllm_at(server, named(VLLM, "inner-vllm"))])
        outer = chatkit.IterListProvider([inner], shuffle=False)
        seen = await ask(kind, outer)
    assert seen.error is None and seen.text == TEXT
    assert seen.resumes[0].provider == "inner-vllm"
    assert [a.provider for a in seen.attempts] == ["inner-vllm", "inner-vllm"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_one_short_word_echo_is_kept_as_it_may_be_real_text(kind: str) -> None:
    # The price of never cutting real text at the seam (docs/resilience.md).
    with threaded(FakeAnthropicServer(Behavior(text=TEXT, resume_echo=1))) as server:
        server.script(Behavior(text=TEXT, drop_after=6))
        seen = await ask(kind, anthropic_at(server), model="claude-fake")
    prefill = "The quick brown fox jumps over"
    assert seen.error is None
    assert seen.text == seen.delivered == prefill + " over" + TEXT[len(prefill) :]
    assert seen.resumes[0].overlap == 0
