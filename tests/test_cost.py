"""completion.cost / stream.cost from the price table: exact dollars for known
models, None (never a guess) for unknown ones, billed attempts included."""

from __future__ import annotations

from typing import Any

import pytest

import chatkit
from chatkit import PRICES, Price
from chatkit.hooks import CallInfo
from chatkit.providers import Groq, OpenAI, RetryProvider
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hi"}]
PRICE = Price(input=2.0, output=10.0)


def dollars(usage: chatkit.CompletionUsage, price: Price = PRICE) -> float:
    return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6


async def answer(client: chatkit.AsyncClient, stream: bool, **options: Any) -> Any:
    if stream:
        chunks = await client.chat.completions.create(messages=MESSAGES, stream=True, **options)
        async with chunks:
            async for _ in chunks:
                pass
        return chunks
    return await client.chat.completions.create(messages=MESSAGES, **options)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_priced_model_costs_its_tokens(server: FakeOpenAIServer, stream: bool) -> None:
    prices = {"openai:priced-model": PRICE}
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk", prices=prices) as c:
        result = await answer(c, stream, model="priced-model")
    usage = result.usage
    assert usage is not None and usage.completion_tokens > 0
    assert result.cost == pytest.approx(dollars(usage))
    if stream:
        assert result.get_final_completion().cost == pytest.approx(dollars(usage))


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unknown_model_costs_none(server: FakeOpenAIServer, stream: bool) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
        result = await answer(client, stream, model="nobody-knows-this-model")
    assert result.usage is not None and result.cost is None


async def test_the_shipped_table_prices_the_default_model(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(base_url=server.base_url, api_key="sk") as client:
        completion = await client.chat.completions.create(messages=MESSAGES, model="gpt-4o-mini")
    assert completion.usage is not None
    expected = dollars(completion.usage, PRICES["openai:gpt-4o-mini"])
    assert completion.cost == pytest.approx(expected)


async def test_a_bare_model_key_prices_every_provider(server: FakeOpenAIServer) -> None:
    async with chatkit.AsyncClient(
        provider=Groq(base_url=server.base_url, api_key="sk"), prices={"shared-model": PRICE}
    ) as client:
        completion = await client.chat.completions.create(messages=MESSAGES, model="shared-model")
    assert completion.usage is not None and completion.cost == pytest.approx(
        dollars(completion.usage)
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_an_empty_answer_that_was_moved_on_from_is_billed_too(
    server: FakeOpenAIServer, backup: FakeOpenAIServer, stream: bool
) -> None:
    server.script(Behavior(chunks=[], finish_reason="content_filter"))
    members = [
        OpenAI(base_url=server.base_url, api_key="sk-a"),
        Groq(base_url=backup.base_url, api_key="sk-b"),
    ]
    provider = RetryProvider(members, strategy="ordered", fallback_on_empty=True)
    prices = {"openai:m": PRICE, "groq:m": Price(input=1.0, output=1.0)}
    async with chatkit.AsyncClient(provider=provider, prices=prices) as client:
        result = await answer(client, stream, model="m")
    empty = result.attempts[0]
    assert isinstance(empty.error, chatkit.EmptyAnswerError) and empty.usage is not None
    assert empty.model == "m"
    expected = dollars(empty.usage) + dollars(result.usage, Price(input=1.0, output=1.0))
    assert result.cost == pytest.approx(expected)


async def test_hooks_are_told_the_cost(server: FakeOpenAIServer) -> None:
    costs: list[float | None] = []

    class Costs:
        def on_call_end(self, call: CallInfo) -> None:
            costs.append(call.cost)

    prices = {"openai:priced-model": PRICE}
    client = chatkit.AsyncClient(
        base_url=server.base_url, api_key="sk", prices=prices, hooks=[Costs()]
    )
    async with client:
        plain = await answer(client, stream=False, model="priced-model")
        streamed = await answer(client, stream=True, model="priced-model")
    assert costs == [pytest.approx(plain.cost), pytest.approx(streamed.cost)]
    assert all(cost is not None and cost > 0 for cost in costs)


def test_the_sync_client_reports_the_cost() -> None:
    prices = {"openai:priced-model": PRICE}
    with (
        FakeOpenAIServer().run_in_thread() as server,
        chatkit.Client(base_url=server.base_url, api_key="sk", prices=prices) as client,
    ):
        chunks = client.chat.completions.create(
            messages=MESSAGES, model="priced-model", stream=True
        )
        for _ in chunks:
            pass
        assert chunks.usage is not None
        assert chunks.cost == pytest.approx(dollars(chunks.usage))


def test_cached_and_cache_write_tokens_have_their_own_prices() -> None:
    usage = chatkit.CompletionUsage.model_validate(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "total_tokens": 1100,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_creation_tokens": 300},
        }
    )
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    expected = (100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 100 * 15.0) / 1e6
    assert price.cost(usage) == pytest.approx(expected)
    assert Price(input=3.0, output=15.0).cost(usage) == pytest.approx((1000 * 3 + 100 * 15) / 1e6)


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ([("openai:m", PRICE)], "prices"),
        ({"openai:m": 0.5}, "prices"),
        ({"": PRICE}, "prices"),
    ],
)
def test_bad_prices_are_refused_before_any_call(prices: Any, field: str) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        chatkit.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="sk", prices=prices)
    assert caught.value.field == field


@pytest.mark.parametrize("bad", [{"input": -1.0, "output": 1.0}, {"input": 1.0, "output": "2"}])
def test_a_bad_price_names_its_field(bad: dict[str, Any]) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        Price(**bad)
    assert caught.value.field in ("input", "output")
