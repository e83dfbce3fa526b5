"""Gateway and scale-out: ``chatkit serve`` against a direct client and litellm's proxy.

    python benchmarks/bench_gateway.py [--quick] [--json PATH] [--skip-litellm]
        [--chunks 100] [--concurrency 1,100,1000] [--duration 8]
        [--scale-streams 10000] [--state-calls 1000]

Every process runs on this machine: the fake upstream (``python -m
chatkit.testing``, one process), the gateway under test, and the load
generator (this script again, ``--loadgen``, in its own process). Only one
gateway runs at a time.

1. Throughput and overhead. Streams of ``--chunks`` content chunks at each
   ``--concurrency`` (closed loop: that many streams open at once, each
   starting the next as it ends; ``--warmup`` seconds, then ``--duration``
   seconds measured), through:
   the upstream directly with raw aiohttp (the ceiling of upstream plus
   generator); the upstream directly with ``chatkit.AsyncClient``; ``chatkit
   serve`` with 1 and with 2 workers; litellm's proxy (1 worker, installed in
   ``benchmarks/.venv-litellm``, away from chatkit's dependencies). Every
   gateway is read by the same raw aiohttp reader. Reported: content chunks/s,
   time to first content (p50/p99), "overhead" (direct chatkit chunks/s
   divided by this row's: the goal is at most 1.3), the peak RSS of each
   gateway worker, and where the CPU went (upstream, gateway, generator).
2. Scale: ``--scale-streams`` streams opened at once (spread over each of
   ``--scale-ramps`` seconds, one run each) against one gateway with 2
   workers, the upstream pacing its chunks (``--scale-delay``) so that they
   are all open together: streams completed, errors, peak streams open, RSS
   growth per stream, connections refused by full listen queues.
3. Shared state: ``--workers 4 --breaker`` over two upstreams (``-p
   vllm,llamacpp``), the first always answering 503; requests that reach it
   ("wasted") with each worker's own breaker memory, then with ``--state
   redis://`` (a real ``redis-server`` started here; default and 50 ms
   ``--state-timeout``). Then the cost of one
   ``RedisState`` admit + record pair, next to ``InMemoryStore``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
LITELLM_VENV = ROOT / "benchmarks" / ".venv-litellm"
# Pinned: a release known to install here with its proxy extra (later ones split
# the proxy into a package of its own). 1.107.0 was a compromised release: never it.
LITELLM_REQUIREMENT = "litellm[proxy]==1.106.12"
KEY = "sk-bench-gateway"
MODEL = "fake-model"
WORD = "qzx"  # each content chunk's text; counted in the raw bytes
MARKER = WORD.encode()
MESSAGES = [{"role": "user", "content": "Say something."}]
NOFILE = 65536  # the descriptor limit asked for every process started here
ULIMIT = 'ulimit -Hn {n} 2>/dev/null; ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec "$@"'

DIRECT_RAW = "direct, raw aiohttp (ceiling)"
DIRECT_CHATKIT = "direct, chatkit AsyncClient"
GATEWAY_1 = "chatkit serve, 1 worker"
GATEWAY_2 = "chatkit serve, 2 workers"
LITELLM = "litellm proxy, 1 worker"
PER_PROCESS = "4 workers, per-process breakers"
SHARED = "4 workers, --state redis:// (default 5 ms timeout)"
SHARED_SLOW = "4 workers, --state redis:// --state-timeout 0.05"
REDIS_WARNING = "chatkit.redis"  # the logger of RedisState's "Redis failed" warnings


# -- processes ------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), nearest first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid`, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of `pids` (the living ones)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


_LOGS: list[Path] = []


def log_dir() -> Path:
    """The folder of this run's server logs: removed after a run that worked, else kept."""
    if not _LOGS:
        _LOGS.append(Path(tempfile.mkdtemp(prefix="bench-gateway-")))
    return _LOGS[0]


class Service:
    """A server process of this benchmark, its output in a log file, its limits raised."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        ready: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        poll_url: str | None = None,
    ) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir())[1])
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", ULIMIT.format(n=NOFILE), "bash", *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                start_new_session=True,
            )
        self.match = self._wait(re.compile(ready), timeout, poll_url)

    def _wait(self, ready: re.Pattern[str], timeout: float, poll_url: str | None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if poll_url is not None:
                if _http_ok(poll_url):
                    return poll_url
            else:
                found = ready.search(self.log.read_text(errors="replace"))
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start; its output ends with:\n{tail}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def workers(self) -> list[int]:
        """The serving processes: the children of a supervisor, else the process itself."""
        children = children_of(self.pid)
        return children or [self.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        # Whatever is left of the session this process leads (workers, uvicorn).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_upstream(chunks: int, delay: float = 0.0) -> Service:
    command = [sys.executable, "-m", "chatkit.testing", "--port", "0", "--text", WORD]
    command += ["--chunks", str(chunks), "--delay", str(delay)]
    return Service("upstream", command, r"READY (http://\S+)")


def serve_flags() -> set[str]:
    """The options ``chatkit serve`` has here (``--workers`` and ``--state`` are recent)."""
    out = subprocess.run(
        [sys.executable, "-m", "chatkit", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout
    return set(re.findall(r"--[a-z][a-z-]+", out))


def chatkit_gateway(
    upstream: str | None,
    workers: int,
    max_connections: int,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Service:
    command = [sys.executable, "-m", "chatkit", "serve", "--host", "127.0.0.1", "--port", "0"]
    if upstream is not None:
        command += ["--base-url", upstream]
    command += ["--max-connections", str(max_connections), *extra]
    if workers > 1:
        command += ["--workers", str(workers)]
    # The key through the environment, as the gateway's help advises.
    env = {"CHATKIT_SERVER_API_KEY": KEY, **(env or {})}
    service = Service(
        f"gateway-{workers}w", command, r"listening on (http://\S+)", env=env, timeout=90
    )
    if workers > 1:  # the supervisor says "listening" once its workers are up; be sure
        deadline = time.monotonic() + 30
        while len(children_of(service.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
    return service


# -- litellm's proxy, in a virtual environment of its own --------------------------


def litellm_ready(log: list[str]) -> Path | None:
    """The ``litellm`` command of benchmarks/.venv-litellm, installing it on first use.

    None (with the reason appended to `log`) when it cannot be installed here.
    """
    python = LITELLM_VENV / "bin" / "python"
    command = LITELLM_VENV / "bin" / "litellm"
    probe = [str(python), "-c", "import litellm.proxy.proxy_server"]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if command.exists() and subprocess.run(probe, capture_output=True, env=env).returncode == 0:
        return command
    print(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (once) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True
            )
            # Like Python 3.13's venv: git (and ruff) leave the environment alone.
            (LITELLM_VENV / ".gitignore").write_text("*\n")
        install = [str(python), "-m", "pip", "install", "-q", LITELLM_REQUIREMENT]
        done = subprocess.run(install, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
            log.append(f"pip install failed: {' '.join(lines)[:300] or done.returncode}")
            return None
        probed = subprocess.run(probe, capture_output=True, text=True, env=env)
        if probed.returncode != 0:
            log.append(f"litellm's proxy does not import: {probed.stderr.strip()[-300:]}")
            return None
    except (OSError, subprocess.SubprocessError) as exc:
        log.append(f"installing litellm failed: {exc}")
        return None
    return command


def litellm_proxy(command: Path, upstream: str, folder: Path) -> Service:
    port = free_port()
    config = folder / "litellm.yaml"
    # YAML is a superset of JSON: no YAML writer needed.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": upstream,
                            "api_key": "sk-upstream",
                        },
                    }
                ],
                "general_settings": {"master_key": KEY},
                "litellm_settings": {"telemetry": False, "set_verbose": False},
            },
            indent=2,
        )
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of its price list at start-up
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCKER": "True",
    }
    run = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    run += ["--num_workers", "1"]
    return Service(
        "litellm",
        run,
        "",
        env=env,
        timeout=180,
        poll_url=f"http://127.0.0.1:{port}/health/liveliness",
    )


# -- the load generator (its own process) -----------------------------------------------


def raise_nofile(want: int) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(want, hard), max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Tally:
    """What the streams of one phase received, updated as the chunks arrive."""

    def __init__(self) -> None:
        self.streams = 0  # complete and whole
        self.chunks = 0  # content chunks received, whole streams or not
        self.errors = 0
        self.samples: list[str] = []
        self.ttfc: list[tuple[float, float]] = []  # (stream start, seconds to content)
        self.inflight = 0  # streams asked for and not ended
        self.streaming = 0  # of those, the ones whose content has begun
        self.open = 0  # streams whose response has begun (headers in)
        self.peak_open = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:200])

    def opened(self) -> None:
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)

    def first(self, started: float) -> None:
        self.streaming += 1
        self.ttfc.append((started, time.perf_counter() - started))


def _headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
    }


BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()


async def raw_stream(session: Any, url: str, job: dict[str, Any], tally: Tally) -> None:
    """One stream read as bytes: content chunks are counted by their text, never parsed."""
    started = time.perf_counter()
    count = 0
    keep = len(MARKER) - 1
    tail = b""
    end = b""
    done = False
    async with session.post(url, data=BODY, headers=_headers(job["key"])) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:120]!r}")
        tally.opened()
        try:
            async for data in resp.content.iter_any():
                # A marker cut in two by a read is counted once: the bytes kept
                # are fewer than a marker's, so no marker is counted twice.
                buf = tail + data
                found = buf.count(MARKER)
                if found:
                    if not count:
                        tally.first(started)
                    count += found
                    tally.chunks += found
                tail = buf[-keep:]
                if b"[DONE]" in end + data:
                    done = True
                end = (end + data)[-16:]
        finally:
            tally.open -= 1
            if count:
                tally.streaming -= 1
    check(tally, job, count, done)


async def chatkit_stream(client: Any, job: dict[str, Any], tally: Tally) -> None:
    started = time.perf_counter()
    count = 0
    opened = False
    try:
        async for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True
        ):
            if not opened:
                opened = True
                tally.opened()
            if chunk.choices and chunk.choices[0].delta.content:
                if not count:
                    tally.first(started)
                count += 1
                tally.chunks += 1
    finally:
        if opened:
            tally.open -= 1
        if count:
            tally.streaming -= 1
    # chatkit ends a stream only on [DONE] or a clean end; a broken one raises.
    check(tally, job, count, True)


def check(tally: Tally, job: dict[str, Any], count: int, done: bool) -> None:
    if count != job["chunks"] or not done:
        seen = "seen" if done else "missing"
        tally.error(f"{count} content chunks of {job['chunks']}, [DONE] {seen}")
        return
    tally.streams += 1


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def loadgen(job: dict[str, Any]) -> dict[str, Any]:
    """Run `job`; print START and END around the measured part; return its figures.

    With a ``duration``: ``concurrency`` workers each start a stream as their
    last one ends; after ``warmup`` seconds of that, the next ``duration``
    seconds are measured (the chunks received in them, the streams begun and
    ended in them); the streams still going at the end are cut. Without one:
    each worker runs one stream (``once``) or they share a countdown of
    ``calls`` streams, and everything is measured, to the last stream's end.
    """
    import aiohttp

    import chatkit

    concurrency = int(job["concurrency"])
    url = job["url"] + "/chat/completions"
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_read=300)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=bool(job.get("fresh"))),
        timeout=timeout,
    )
    client = None
    if job["client"] == "chatkit":
        pool = concurrency + 8
        client = chatkit.AsyncClient(
            base_url=job["url"],
            api_key=job["key"],
            max_retries=0,
            limits=chatkit.Limits(max_connections=pool, max_connections_per_host=pool),
            timeout=chatkit.Timeout(connect=60.0, read=300.0, total=None),
        )
    tally = Tally()

    async def one() -> None:
        tally.inflight += 1
        try:
            if client is not None:
                await chatkit_stream(client, job, tally)
            else:
                await raw_stream(session, url, job, tally)
        except Exception as exc:  # every failure is a figure, not a crash
            tally.error(f"{type(exc).__name__}: {exc}")
        finally:
            tally.inflight -= 1

    duration = float(job.get("duration") or 0)
    left = int(job.get("calls") or 0)
    ramp = float(job.get("ramp") or 0)

    async def worker(index: int) -> None:
        nonlocal left
        if ramp:
            await asyncio.sleep(ramp * index / concurrency)
        while True:
            if job.get("calls"):
                if left <= 0:
                    return
                left -= 1
            await one()
            if job.get("once"):
                return

    try:
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        if duration:
            await asyncio.sleep(float(job.get("warmup") or 0))
        streams0, errors0, chunks0 = tally.streams, tally.errors, tally.chunks
        samples0 = len(tally.samples)
        print("START", flush=True)
        cpu0 = time.process_time()
        started = time.perf_counter()
        if duration:
            await asyncio.wait(tasks, timeout=duration)
        else:
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        figures = {
            "streams": tally.streams - streams0,
            "errors": tally.errors - errors0,
            "error_samples": tally.samples[samples0:],
            "warmup_streams": streams0,
            "warmup_errors": errors0,
            "cut": tally.inflight,
            "cut_before_first_chunk": tally.inflight - tally.streaming,
            "chunks": tally.chunks - chunks0,
            "elapsed": elapsed,
            "chunks_per_s": (tally.chunks - chunks0) / elapsed,
            "peak_open": tally.peak_open,
            "generator_cpu": cpu / elapsed,
        }
        ttfc = [seconds for begun, seconds in tally.ttfc if begun >= started]
        figures["ttfc_p50_ms"] = percentile(ttfc, 0.5) * 1000
        figures["ttfc_p99_ms"] = percentile(ttfc, 0.99) * 1000
        print("END", flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if client is not None:
            await client.aclose()
        await session.close()
    return figures


def loadgen_main(job_text: str) -> int:
    job = json.loads(job_text)
    raise_nofile(int(job["concurrency"]) * 2 + 1024)
    result = asyncio.run(loadgen(job))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


@dataclass
class Sampler:
    """Peak RSS of the watched processes, sampled from a thread."""

    services: list[Service]
    interval: float = 0.2
    peak_worker: int = 0
    peak_total: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for service in self.services:
            workers = service.workers()
            tree = service.tree()
            self.peak_worker = max(self.peak_worker, *(rss_bytes(p) for p in workers))
            self.peak_total = max(self.peak_total, sum(rss_bytes(p) for p in tree))

    def __enter__(self) -> Sampler:
        def run() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def drive(
    job: dict[str, Any], gateway: Service | None, upstream: Service, timeout: float
) -> dict[str, Any]:
    """Run the load generator on `job`; add the CPU and memory of the servers to its figures."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--loadgen", json.dumps(job)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "START":
            raise RuntimeError(f"the load generator failed before starting (said {line!r})")
        watched = [gateway] if gateway is not None else []
        before = {s.name: cpu_seconds(s.tree()) for s in [upstream, *watched]}
        rss_before = sum(rss_bytes(p) for p in gateway.tree()) if gateway else 0
        with Sampler(watched) as sampler:
            line = proc.stdout.readline()
        if line.strip() != "END":
            raise RuntimeError(f"the load generator failed (said {line!r}, exit {proc.wait()})")
        after = {s.name: cpu_seconds(s.tree()) for s in [upstream, *watched]}
        line = proc.stdout.readline()
        if not line.startswith("RESULT "):
            raise RuntimeError(f"the load generator failed (said {line!r}, exit {proc.wait()})")
        result: dict[str, Any] = json.loads(line[7:])
        elapsed = result["elapsed"]
        result["upstream_cpu"] = (after[upstream.name] - before[upstream.name]) / elapsed
        if gateway is not None:
            used = after[gateway.name] - before[gateway.name]
            result["gateway_cpu"] = used / elapsed
            result["gateway_us_per_chunk"] = used / max(result["chunks"], 1) * 1e6
            result["rss_worker_mb"] = sampler.peak_worker / 2**20
            result["rss_total_mb"] = sampler.peak_total / 2**20
            result["rss_before_mb"] = rss_before / 2**20
            result["workers"] = len(gateway.workers())
        proc.wait(timeout=30)
        return result
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- 1. throughput ------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    concurrency: int
    figures: dict[str, Any] | None = None
    note: str = ""


def throughput(args: argparse.Namespace, flags: set[str], notes: list[str]) -> list[Row]:
    rows: list[Row] = []
    levels = args.concurrency
    top = max(levels)
    job = {"key": KEY, "chunks": args.chunks, "duration": args.duration, "warmup": args.warmup}
    upstream = fake_upstream(args.chunks)
    try:
        up = upstream.match
        configs: list[tuple[str, str]] = [(DIRECT_RAW, "raw"), (DIRECT_CHATKIT, "chatkit")]
        for name, client in configs:
            for level in levels:
                print(f"  {name}, {level} streams ...", flush=True)
                figures = drive(
                    {**job, "url": up, "client": client, "concurrency": level},
                    None,
                    upstream,
                    timeout=args.duration * 10 + 120,
                )
                rows.append(Row(name, level, figures))
                time.sleep(0.5)  # the cut streams' ends settle
        gateways: list[tuple[str, int]] = [(GATEWAY_1, 1)]
        if "--workers" in flags:
            gateways.append((GATEWAY_2, 2))
        else:
            notes.append(f"{GATEWAY_2}: not measured, this chatkit serve has no --workers")
            rows += [Row(GATEWAY_2, level, None, "no --workers") for level in levels]
        for name, workers in gateways:
            gateway = chatkit_gateway(up, workers, max(1024, top + 64))
            try:
                for level in levels:
                    print(f"  {name}, {level} streams ...", flush=True)
                    figures = drive(
                        {**job, "url": gateway.match + "/v1", "client": "raw"}
                        | {"concurrency": level},
                        gateway,
                        upstream,
                        timeout=args.duration * 10 + 120,
                    )
                    rows.append(Row(name, level, figures))
                    time.sleep(1.0)  # the cut streams' ends settle
            finally:
                gateway.stop()
        rows += litellm_rows(args, up, upstream, job, notes)
    finally:
        upstream.stop()
    return rows


def litellm_rows(
    args: argparse.Namespace, up: str, upstream: Service, job: dict[str, Any], notes: list[str]
) -> list[Row]:
    levels = args.concurrency
    if args.skip_litellm:
        notes.append(f"{LITELLM}: skipped (--skip-litellm)")
        return [Row(LITELLM, level, None, "skipped") for level in levels]
    reasons: list[str] = []
    command = litellm_ready(reasons)
    if command is None:
        notes.append(f"{LITELLM}: not measured, {'; '.join(reasons)}")
        return [Row(LITELLM, level, None, "not installed") for level in levels]
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-litellm-"))
    try:
        proxy = litellm_proxy(command, up, folder)
    except RuntimeError as exc:
        notes.append(f"{LITELLM}: not measured, it did not start: {str(exc)[-300:]}")
        return [Row(LITELLM, level, None, "did not start") for level in levels]
    rows = []
    try:
        base = proxy.match.rsplit("/health", 1)[0] + "/v1"
        for level in levels:
            print(f"  {LITELLM}, {level} streams ...", flush=True)
            try:
                figures = drive(
                    {**job, "url": base, "client": "raw", "concurrency": level},
                    proxy,
                    upstream,
                    timeout=args.duration * 20 + 300,
                )
            except RuntimeError as exc:
                notes.append(f"{LITELLM} at {level} streams: {exc}")
                rows.append(Row(LITELLM, level, None, "failed"))
                continue
            rows.append(Row(LITELLM, level, figures))
    finally:
        proxy.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# -- 2. scale -----------------------------------------------------------------------------


def listen_drops() -> int:
    """This machine's count of connections refused by a full listen queue (all sockets)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for heads, values in zip(lines[::2], lines[1::2], strict=False):
        if heads.startswith("TcpExt:"):
            table = dict(zip(heads.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenDrops", 0))
    return 0


def scale(args: argparse.Namespace, flags: set[str]) -> list[dict[str, Any]]:
    """One run per ``--scale-ramps`` value, each with a fresh upstream and gateway."""
    workers = 2 if "--workers" in flags else 1
    streams = args.scale_streams
    results = []
    for ramp in args.scale_ramps:
        upstream = fake_upstream(args.scale_chunks, args.scale_delay)
        try:
            gateway = chatkit_gateway(upstream.match, workers, streams + 64)
            try:
                print(
                    f"  {streams} streams opened over {ramp:g} s, {workers} workers ...", flush=True
                )
                job = {
                    "key": KEY,
                    "chunks": args.scale_chunks,
                    "once": True,
                    "ramp": ramp,
                    "url": gateway.match + "/v1",
                    "client": "raw",
                    "concurrency": streams,
                }
                time.sleep(1.0)  # the workers' start-up settles before the idle RSS is read
                drops = listen_drops()
                figures = drive(job, gateway, upstream, timeout=900)
                figures["listen_drops"] = listen_drops() - drops
            finally:
                gateway.stop()
        finally:
            upstream.stop()
        grown = figures["rss_total_mb"] - figures["rss_before_mb"]
        figures.update(
            ramp=ramp,
            streams_started=streams,
            gateway_workers=workers,
            rss_delta_mb=grown,
            kb_per_stream=grown * 1024 / max(figures["peak_open"], 1),
        )
        results.append(figures)
    return results


# -- 3. shared state ------------------------------------------------------------------------


async def serve_failing(out: Any) -> None:
    """An upstream that answers every chat completion 503, and counts them (GET /count)."""
    from aiohttp import web

    count = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        await request.read()
        return web.json_response(
            {"error": {"message": "down", "type": "server_error", "code": None}}, status=503
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def counted(request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/count", counted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY http://127.0.0.1:{port}/v1", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def failing_count(base: str) -> int:
    import urllib.request

    with urllib.request.urlopen(base.rsplit("/v1", 1)[0] + "/count", timeout=5) as resp:
        return int(json.loads(resp.read())["count"])


class Redis:
    """``redis-server`` on a free loopback port, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no"]
        self.service = Service("redis", command, r"(Ready to accept connections)", timeout=20)

    def stop(self) -> None:
        self.service.stop()


async def state_cost(url: str, calls: int) -> dict[str, Any]:
    """Seconds per admit + record pair, the breaker's work for one call.

    RedisState (a round trip each, with a 1 s timeout: the cost itself; then
    with its default timeout: how often it gives up and uses memory) and
    InMemoryStore.
    """
    import chatkit

    breaker = chatkit.CircuitBreaker(clock=time.time)
    figures: dict[str, Any] = {}
    stores: list[tuple[str, Any]] = [
        ("RedisState, 1 s timeout", chatkit.RedisState(url, prefix="bench-a:", timeout=1.0)),
        ("RedisState, default timeout", chatkit.RedisState(url, prefix="bench-b:")),
        ("InMemoryStore", chatkit.InMemoryStore(time.time)),
    ]
    try:
        for name, store in stores:
            for warm in (True, False):
                times = []
                for _ in range(50 if warm else calls):
                    started = time.perf_counter()
                    now = time.time()
                    admission = await store.admit("bench", breaker, now)
                    await store.record(
                        "bench", breaker, failed=False, probe=admission.probe, now=now
                    )
                    times.append(time.perf_counter() - started)
            figures[name] = {
                "pairs": calls,
                "mean_us": statistics.fmean(times) * 1e6,
                "p50_us": percentile(times, 0.5) * 1e6,
                "p99_us": percentile(times, 0.99) * 1e6,
                "redis_errors": getattr(store, "redis_errors", None),
                "fallbacks": getattr(store, "fallbacks", None),
            }
    finally:
        for _, store in stores:
            aclose = getattr(store, "aclose", None)
            if aclose is not None:
                await aclose()
    return figures


def shared_state(args: argparse.Namespace, flags: set[str], notes: list[str]) -> dict[str, Any]:
    if "--state" not in flags or "--workers" not in flags:
        notes.append("shared state: not measured, this chatkit serve has no --state/--workers")
        return {"measured": False, "reason": "chatkit serve has no --state or --workers"}
    try:
        import redis  # noqa: F401
    except ImportError:
        notes.append('shared state: not measured, no redis package (pip install "chatkit[redis]")')
        return {"measured": False, "reason": "the redis package is not installed"}
    try:
        server = Redis()
    except RuntimeError as exc:
        notes.append(f"shared state: not measured, {exc}")
        return {"measured": False, "reason": str(exc)}
    result: dict[str, Any] = {"measured": True, "calls": args.state_calls, "configs": {}}
    failing = Service(
        "failing", [sys.executable, str(SCRIPT), "--serve-failing"], r"READY (http://\S+)"
    )
    healthy = fake_upstream(5)
    try:
        env = {"VLLM_BASE_URL": failing.match, "LLAMACPP_BASE_URL": healthy.match}
        common = ["-p", "vllm,llamacpp", "-m", MODEL, "--breaker", "--retries", "0"]
        configs: list[tuple[str, list[str]]] = [
            (PER_PROCESS, []),
            (SHARED, ["--state", server.url]),
            (SHARED_SLOW, ["--state", server.url, "--state-timeout", "0.05"]),
        ]
        for number, (name, extra) in enumerate(configs):
            if extra:  # each its own keys: no breaker opened by the one before
                extra = [*extra, "--state-prefix", f"bench-gateway-{number}:"]
            before = failing_count(failing.match)
            gateway = chatkit_gateway(None, 4, 256, [*common, *extra], env)
            try:
                print(f"  {name}, {args.state_calls} calls ...", flush=True)
                job = {
                    "key": KEY,
                    "chunks": 5,
                    "duration": 3600,
                    "url": gateway.match + "/v1",
                    "client": "raw",
                    "concurrency": args.state_concurrency,
                    "warmup": 0,
                    "fresh": True,  # a new connection per call: the kernel spreads them
                    "calls": args.state_calls,
                }
                figures = drive_calls(job, gateway, healthy)
            finally:
                gateway.stop()
            figures["wasted"] = failing_count(failing.match) - before
            figures["workers"] = 4
            log = gateway.log.read_text(errors="replace").splitlines()
            figures["redis_failures_logged"] = sum(
                1 for line in log if REDIS_WARNING in line and "WARNING" in line
            )
            result["configs"][name] = figures
        print(f"  RedisState round trips, {args.redis_calls} pairs ...", flush=True)
        result["cost"] = asyncio.run(state_cost(server.url, args.redis_calls))
    finally:
        failing.stop()
        healthy.stop()
        server.stop()
    return result


def drive_calls(job: dict[str, Any], gateway: Service, upstream: Service) -> dict[str, Any]:
    """`job["calls"]` streams in all, `job["concurrency"]` at once."""
    return drive(job, gateway, upstream, timeout=600)


# -- report -------------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def render(heads: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(heads), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def throughput_table(rows: list[Row]) -> str:
    direct = {
        r.concurrency: r.figures["chunks_per_s"]
        for r in rows
        if r.config == DIRECT_CHATKIT and r.figures
    }
    heads = ["configuration", "streams", "chunks/s", "overhead", "TTFC p50 ms", "TTFC p99 ms"]
    heads += ["ok", "cut", "errors", "RSS/worker MB", "gw us/chunk", "CPU up/gw/gen %"]
    out = []
    for r in rows:
        f = r.figures
        if f is None:
            out.append([r.config, str(r.concurrency), f"not measured ({r.note})", *["-"] * 9])
            continue
        base = direct.get(r.concurrency)
        ratio = base / f["chunks_per_s"] if base and f["chunks_per_s"] else None
        cpu = f"{f['upstream_cpu'] * 100:.0f}/"
        cpu += f"{f['gateway_cpu'] * 100:.0f}/" if "gateway_cpu" in f else "-/"
        cpu += f"{f['generator_cpu'] * 100:.0f}"
        out.append(
            [
                r.config,
                str(r.concurrency),
                fmt(f["chunks_per_s"], ",.0f"),
                fmt(ratio, ".2f") + "x",
                fmt(f["ttfc_p50_ms"], ".1f"),
                fmt(f["ttfc_p99_ms"], ".1f"),
                str(f["streams"]),
                str(f["cut"]),
                str(f["errors"]),
                fmt(f.get("rss_worker_mb"), ".0f"),
                fmt(f.get("gateway_us_per_chunk"), ".0f"),
                cpu,
            ]
        )
    return render(heads, out)


def scale_table(runs: list[dict[str, Any]]) -> str:
    heads = ["gateway", "opened over", "streams", "completed", "errors", "peak open"]
    heads += ["TTFC p50 ms", "TTFC p99 ms", "listen drops", "RSS idle MB", "RSS peak MB"]
    heads += ["KB/stream"]
    rows = []
    for f in runs:
        name = f"chatkit serve, {f['gateway_workers']} worker"
        name += "s" if f["gateway_workers"] > 1 else ""
        rows.append(
            [
                name,
                f"{f['ramp']:g} s",
                str(f["streams_started"]),
                str(f["streams"]),
                str(f["errors"]),
                str(f["peak_open"]),
                fmt(f["ttfc_p50_ms"], ".0f"),
                fmt(f["ttfc_p99_ms"], ".0f"),
                str(f["listen_drops"]),
                fmt(f["rss_before_mb"], ".0f"),
                fmt(f["rss_total_mb"], ".0f"),
                fmt(f["kb_per_stream"], ".1f"),
            ]
        )
    return render(heads, rows)


def state_table(result: dict[str, Any]) -> str:
    if not result.get("measured"):
        return render(["shared state"], [[f"not measured: {result.get('reason')}"]])
    heads = ["configuration", "calls", "ok", "errors", "wasted", "Redis failures logged"]
    heads += ["calls/s", "TTFC p50 ms"]
    rows = []
    for name, f in result["configs"].items():
        logged = f["redis_failures_logged"] if "redis" in name else "-"
        rows.append(
            [
                name,
                str(result["calls"]),
                str(f["streams"]),
                str(f["errors"]),
                str(f["wasted"]),
                str(logged),
                fmt(f["streams"] / f["elapsed"], ",.0f"),
                fmt(f["ttfc_p50_ms"], ".1f"),
            ]
        )
    calls = render(heads, rows)
    heads = ["store", "admit+record pairs", "mean us", "p50 us", "p99 us", "Redis errors"]
    heads += ["served from memory"]
    costs = [
        [
            name,
            str(c["pairs"]),
            fmt(c["mean_us"], ",.1f"),
            fmt(c["p50_us"], ",.1f"),
            fmt(c["p99_us"], ",.1f"),
            fmt(c["redis_errors"], "d"),
            fmt(c["fallbacks"], "d"),
        ]
        for name, c in result["cost"].items()
    ]
    return calls + "\n\n" + render(heads, costs)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


def levels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive")
    return values


def seconds_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of seconds: {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("seconds must be >= 0")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--skip-litellm", action="store_true", help="no litellm proxy rows")
    parser.add_argument("--skip-scale", action="store_true", help="no 10,000-stream run")
    parser.add_argument("--skip-state", action="store_true", help="no shared-state run")
    parser.add_argument("--chunks", type=int, default=None, help="content chunks a stream (100)")
    parser.add_argument(
        "--concurrency", type=levels, default=None, help="streams at once (1,100,1000)"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds measured (8)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before that (3)")
    parser.add_argument("--scale-streams", type=int, default=None, help="streams at once (10000)")
    parser.add_argument("--scale-chunks", type=int, default=None, help="chunks each (15)")
    parser.add_argument("--scale-delay", type=float, default=None, help="s between chunks (3)")
    parser.add_argument(
        "--scale-ramps", type=seconds_list, default=None, help="s to open them all (20,2)"
    )
    parser.add_argument("--state-calls", type=int, default=None, help="calls a config (1000)")
    parser.add_argument("--state-concurrency", type=int, default=8, help="calls at once (8)")
    parser.add_argument("--redis-calls", type=int, default=None, help="timed pairs (5000)")
    parser.add_argument("--loadgen", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-failing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    full = {
        "chunks": 100,
        "concurrency": [1, 100, 1000],
        "duration": 8.0,
        "warmup": 3.0,
        "scale_streams": 10_000,
        "scale_chunks": 15,
        "scale_delay": 3.0,
        "scale_ramps": [20.0, 2.0],
        "state_calls": 1000,
        "redis_calls": 5000,
    }
    quick = {
        "chunks": 20,
        "concurrency": [1, 20],
        "duration": 1.0,
        "warmup": 0.5,
        "scale_streams": 300,
        "scale_chunks": 10,
        "scale_delay": 0.05,
        "scale_ramps": [0.5],
        "state_calls": 80,
        "redis_calls": 200,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.chunks < 1 or args.duration <= 0 or args.scale_streams < 1 or args.state_calls < 1:
        parser.error("--chunks, --duration, --scale-streams and --state-calls must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen is not None:
        return loadgen_main(args.loadgen)
    if args.serve_failing:
        asyncio.run(serve_failing(sys.stdout))
        return 0
    raise_nofile(NOFILE)
    flags = serve_flags()
    notes: list[str] = []
    started = time.perf_counter()
    print(
        f"streams of {args.chunks} chunks at {', '.join(map(str, args.concurrency))} at once,"
        f" {args.duration:g} s each; {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        print("1. throughput and overhead", flush=True)
        rows = throughput(args, flags, notes)
        scaled: list[dict[str, Any]] | None = None
        if not args.skip_scale:
            print("2. scale", flush=True)
            scaled = scale(args, flags)
        state: dict[str, Any] = {"measured": False, "reason": "skipped (--skip-state)"}
        if args.skip_state:
            notes.append("shared state: skipped (--skip-state)")
        else:
            print("3. shared state", flush=True)
            state = shared_state(args, flags, notes)
    except BaseException:
        if _LOGS:
            print(f"the servers' logs are kept in {_LOGS[0]}", file=sys.stderr)
        raise
    if _LOGS:
        shutil.rmtree(_LOGS[0], ignore_errors=True)
    elapsed = time.perf_counter() - started

    print("\n## 1. throughput and overhead\n")
    print(throughput_table(rows))
    print(
        "\noverhead: direct chatkit chunks/s / this row's (goal for the gateway: <= 1.3x);"
        " TTFC: request sent to first content, streams begun in the measured window;"
        " ok: streams that ended whole in it; cut: still going at its end;"
        " RSS/worker: peak of each serving process; gw us/chunk: gateway CPU per chunk;"
        " CPU: share of one core used by the upstream / the gateway (all its processes) /"
        " the load generator."
    )
    if scaled is not None:
        print(f"\n## 2. {args.scale_streams} streams at once\n")
        print(scale_table(scaled))
        print(
            f"\n{args.scale_chunks} chunks a stream, {args.scale_delay:g} s apart; listen"
            " drops: connections this machine's listen queues refused meanwhile (SYN retried);"
            " KB/stream: (RSS peak - idle) / peak open, all gateway processes."
        )
    print("\n## 3. shared state\n")
    print(state_table(state))
    if notes:
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    print(f"\n{elapsed:.0f} s in all.")
    if args.json is not None:
        report = {
            "command": " ".join(["python", "benchmarks/bench_gateway.py", *sys.argv[1:]]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "loadgen")},
            "throughput": [asdict(r) for r in rows],
            "scale": scaled,
            "state": state,
            "notes": notes,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
