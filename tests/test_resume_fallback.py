"""Resume across a provider list, an empty continuation, and who decides ``resume``.

``Resume(same_provider_only=False)``: when the member that answered cannot
continue, or its continuation keeps failing, the members after it (wrapping
around) that can continue take over, skipping open circuits. Against real
fake servers, through the async and the sync client.
"""

from __future__ import annotations

from typing import Any

import pytest
from resume_support import KINDS, TEXT, VLLM, Scripted, ask, named, threaded

import chatkit
from chatkit import Resume, StreamInterrupted
from chatkit._resume import continuers
from chatkit.providers import Anthropic, OpenAI
from chatkit.providers.base import Capabilities
from chatkit.testing import Behavior, FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.anyio

PARTIAL = "The quick brown fox jumps"  # what 5 chunks of TEXT deliver


def _openai(server: Any, name: str = "openai-a") -> Any:
    return named(OpenAI, name)(base_url=server.base_url, api_key="sk-test")


def _anthropic(server: Any) -> Anthropic:
    return Anthropic(api_key="sk-ant-test", base_url=server.base_url)


def _vllm(server: Any, name: str) -> Any:
    return named(VLLM, name)(base_url=server.base_url, default_model="fake-model")


def _retry(members: list[Any], resume: Resume, **options: Any) -> chatkit.RetryProvider:
    return chatkit.RetryProvider(
        members, shuffle=False, single_provider_retry=False, resume=resume, **options
    )


# -- the member that answered cannot continue ---------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_member_that_cannot_continue_hands_over_to_one_that_can(kind: str) -> None:
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeAnthropicServer(Behavior(text=TEXT, resume_echo=3))) as b,
    ):
        a.script(Behavior(text=TEXT, drop_after=5))
        provider = _retry([_openai(a), _anthropic(b)], Resume(same_provider_only=False))
        seen = await ask(kind, provider, options={"resume": None}, model="m")
    assert seen.error is None
    assert seen.text == seen.delivered == TEXT
    (record,) = seen.resumes
    assert record.ok and record.provider == "Anthropic"
    assert record.offset == len(PARTIAL)
    assert [(a.provider, a.ok) for a in record.attempts] == [("Anthropic", True)]
    assert [a.provider for a in seen.attempts] == ["openai-a", "Anthropic"]
    # The answering member was not asked again: it cannot continue.
    assert len(a.requests) == 1
    (continuation,) = b.requests
    assert continuation.json["messages"][-1] == {"role": "assistant", "content": PARTIAL}
    assert seen.final is not None and seen.final.choices[0].message.content == TEXT


@pytest.mark.parametrize("kind", KINDS)
async def test_same_provider_only_keeps_a_member_that_cannot_continue_interrupted(
    kind: str,
) -> None:
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeAnthropicServer(Behavior(text=TEXT))) as b,
    ):
        a.script(Behavior(text=TEXT, drop_after=5))
        provider = _retry([_openai(a), _anthropic(b)], Resume(same_provider_only=True))
        seen = await ask(kind, provider, options={"resume": None}, model="m")
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.partial_text == seen.text == PARTIAL
    assert seen.resumes == [] and b.requests == []


# -- the order: the members after the answering one, wrapping around ----------------


@pytest.mark.parametrize("kind", KINDS)
async def test_continuation_order_wraps_around_the_member_list(kind: str) -> None:
    # c fails before content, a answers and breaks off (and cannot continue);
    # b's continuation fails; c, before a in the list, continues.
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=2))) as c,
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeAnthropicServer(Behavior(text=TEXT))) as b,
    ):
        c.script(Behavior(status=503))
        a.script(Behavior(text=TEXT, drop_after=5))
        b.script(Behavior(status=503))
        members = [_vllm(c, "vllm-c"), _openai(a), _anthropic(b)]
        provider = _retry(members, Resume(same_provider_only=False))
        seen = await ask(kind, provider, options={"resume": None}, model="m")
    assert seen.error is None
    assert seen.text == seen.delivered == TEXT
    (record,) = seen.resumes
    assert record.provider == "vllm-c"
    assert [(a.provider, a.status_code, a.ok) for a in record.attempts] == [
        ("Anthropic", 503, False),
        ("vllm-c", None, True),
    ]
    assert [a.provider for a in seen.attempts] == [
        "vllm-c",
        "openai-a",
        "Anthropic",
        "vllm-c",
    ]
    assert c.requests[1].json["continue_final_message"] is True


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failing_continuation_moves_on_from_the_member_that_answered(
    kind: str,
) -> None:
    # a can continue, but its continuation keeps failing: b takes over.
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeAnthropicServer(Behavior(text=TEXT))) as b,
    ):
        a.script(Behavior(text=TEXT, drop_after=5), Behavior(status=502), Behavior(status=502))
        members = [_vllm(a, "vllm-a"), _anthropic(b)]
        provider = chatkit.RetryProvider(
            members,
            shuffle=False,
            single_provider_retry=True,
            max_retries=1,
            resume=Resume(same_provider_only=False),
        )
        seen = await ask(kind, provider, model="m", options={"resume": None})
    assert seen.error is None and seen.text == TEXT
    (record,) = seen.resumes
    assert record.provider == "Anthropic"
    assert [(a.provider, a.status_code) for a in record.attempts] == [
        ("vllm-a", 502),
        ("vllm-a", 502),
        ("Anthropic", None),
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_open_circuits_are_skipped_for_a_continuation(kind: str) -> None:
    breaker = chatkit.CircuitBreaker(failure_threshold=1, cooldown=120)
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as c,
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeAnthropicServer(Behavior(text=TEXT))) as b,
    ):
        c.script(Behavior(status=503))  # opens c's circuit
        a.script(Behavior(text=TEXT, drop_after=5))
        b.script(Behavior(status=503))
        members = [_vllm(c, "vllm-c"), _openai(a), _anthropic(b)]
        provider = _retry(members, Resume(same_provider_only=False), breaker=breaker)
        seen = await ask(kind, provider, options={"resume": None}, model="m")
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.partial_text == seen.text == PARTIAL
    (record,) = seen.resumes
    assert not record.ok and record.provider is None
    assert [(a.provider, a.decision) for a in record.attempts] == [
        ("Anthropic", "next"),
        ("vllm-c", "skipped"),
    ]
    assert record.attempts[1].breaker == "open"
    assert len(c.requests) == 1  # never asked to continue


def test_continuers_order() -> None:
    class Can:
        capabilities = Capabilities(continue_message=True)

    class Cannot:
        capabilities = Capabilities()

    x, y, leaf, z = Can(), Can(), Cannot(), Can()
    members = [x, y, leaf, Cannot(), z]
    assert continuers(leaf, members, others=True) == [z, x, y]
    assert continuers(leaf, members, others=False) == []
    assert continuers(y, members, others=True) == [y, z, x]
    assert continuers(y, members, others=False) == [y]
    # A member given as a class stands for the instance made of it.
    assert continuers(x, [Can, Cannot], others=True) == [x]
    assert continuers(Can(), [], others=True) != []


# -- fallback_on_empty: a continuation that adds nothing ends the answer ------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_empty_continuation_with_fallback_on_empty_ends_the_answer(kind: str) -> None:
    # Every word delivered, then the connection dropped before the finishing
    # chunk: the continuation has nothing to add and stops.
    words = len(TEXT.split(" "))
    with threaded(FakeAnthropicServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=words))
        provider = chatkit.RetryProvider(
            [_anthropic(server)], fallback_on_empty=True, resume=True, shuffle=False
        )
        seen = await ask(kind, provider, model="m", options={"resume": None})
    assert seen.error is None
    assert seen.text == TEXT
    (record,) = seen.resumes
    assert record.ok and record.provider == "Anthropic"
    assert seen.final is not None and seen.final.choices[0].finish_reason == "stop"
    assert server.requests[1].json["messages"][-1]["content"] == TEXT


@pytest.mark.parametrize("kind", KINDS)
async def test_an_empty_continuation_of_a_third_party_provider(kind: str) -> None:
    scripted = Scripted((["One", " two", " three"], "reset"), ([], "finish"))
    provider = chatkit.RetryProvider([scripted], fallback_on_empty=True, resume=True)
    seen = await ask(kind, provider, options={"resume": None})
    assert seen.error is None and seen.text == "One two three"
    assert [a.ok for a in seen.attempts] == [True, True]


# -- the client's resume=False wins over the RetryProvider's resume -----------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("client_resume", [False, None, True])
async def test_the_clients_explicit_resume_wins(kind: str, client_resume: Any) -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        provider = chatkit.RetryProvider([_vllm(server, "vllm-a")], resume=True)
        seen = await ask(kind, provider, options={"resume": client_resume})
    if client_resume is False:
        assert isinstance(seen.error, StreamInterrupted)
        assert seen.error.partial_text == PARTIAL
        assert len(server.requests) == 1 and seen.resumes == []
    else:
        assert seen.error is None and seen.text == TEXT
        assert len(server.requests) == 2


async def test_the_clients_resume_false_turns_off_even_a_nested_resume() -> None:
    with threaded(FakeOpenAIServer(Behavior(text=TEXT))) as server:
        server.script(Behavior(text=TEXT, drop_after=5))
        inner = chatkit.RetryProvider([_vllm(server, "vllm-a")], resume=True)
        outer = chatkit.RetryProvider([inner], resume=True)
        seen = await ask("async", outer, options={"resume": False})
    assert isinstance(seen.error, StreamInterrupted)
    assert len(server.requests) == 1 and seen.resumes == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_second_break_resumes_on_the_member_that_continued(kind: str) -> None:
    with (
        threaded(FakeOpenAIServer(Behavior(text=TEXT))) as a,
        threaded(FakeOpenAIServer(Behavior(text=TEXT, resume_echo=2))) as b,
    ):
        a.script(Behavior(text=TEXT, drop_after=5))
        b.script(Behavior(text=TEXT, drop_after=4, resume_echo=2))
        members = [_openai(a), _vllm(b, "vllm-b")]
        provider = _retry(members, Resume(same_provider_only=False))
        seen = await ask(kind, provider, options={"resume": None}, model="m")
    assert seen.error is None
    assert seen.text == seen.delivered == TEXT
    assert [r.provider for r in seen.resumes] == ["vllm-b", "vllm-b"]
    assert len(a.requests) == 1 and len(b.requests) == 2
    # Each continuation is the conversation plus one prefill: the text so far.
    first, second = (r.json["messages"] for r in b.requests)
    assert first[-1] == {"role": "assistant", "content": PARTIAL}
    assert second[:-1] == first[:-1]
    assert second[-1]["role"] == "assistant"
    assert TEXT.startswith(second[-1]["content"]) and len(second[-1]["content"]) > len(PARTIAL)
