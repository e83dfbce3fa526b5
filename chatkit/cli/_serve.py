"""``chatkit serve``: the OpenAI-compatible gateway and the chat page, on 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import chatkit
from chatkit.cli._common import error_line, seconds
from chatkit.cli._otel import OTEL_PACKAGES, setup_otel
from chatkit.providers import PROVIDERS, Local, default_provider_class, get_provider_class

__all__ = ["HELP", "add_arguments", "build_client", "run", "worker_main"]

HELP = "Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models) and a chat page."

# Upstream connections the gateway keeps open at once. The per-host cap defaults
# to the total: a gateway usually has one upstream, and the library's per-host
# default (half the total, so a slow provider cannot starve a fallback) would
# silently cap its concurrent streams at half of what --max-connections says.
DEFAULT_MAX_CONNECTIONS = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Imported here: every ``chatkit`` run imports this module for HELP, and
    # aiohttp.web is not cheap to import.
    from chatkit.server import (
        API_KEY_ENV,
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_HOST,
        DEFAULT_MAX_BODY_SIZE,
        DEFAULT_PORT,
    )

    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0: any free)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also serve requests whose Host is NAME (repeatable; loopback names always"
        " work; * allows any, e.g. behind a reverse proxy that checks it)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (http://host:port) call the API (repeatable)",
    )
    parser.add_argument(
        "-p",
        "--provider",
        default=None,
        help="provider name, or several separated by commas for a fallback chain"
        " (RetryProvider); known: " + ", ".join(sorted(PROVIDERS)),
    )
    parser.add_argument(
        "--base-url", default=None, help="an OpenAI-compatible upstream server, e.g. vLLM"
    )
    parser.add_argument(
        "-m",
        "--model",
        default="",
        help='model used when a request names none, optionally "provider:model"',
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require this bearer token on /v1/ (default: ${API_KEY_ENV}; prefer the"
        " variable, a command line is visible to other users)",
    )
    parser.add_argument("--proxy", default=None, help="proxy URL for upstream requests")
    parser.add_argument("--retries", type=int, default=2, help="retries per provider (default 2)")
    parser.add_argument("--timeout", type=seconds, default=None, help="seconds for each whole call")
    parser.add_argument(
        "--header-timeout",
        type=seconds,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a connection may take to send a request head, or stay idle"
        f" (default {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=seconds,
        default=DEFAULT_BODY_TIMEOUT,
        help=f"seconds a request body may take to arrive (default {DEFAULT_BODY_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        help=f"largest request body in bytes (default {DEFAULT_MAX_BODY_SIZE})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="upstream connections open at once, across every upstream (default"
        f" {DEFAULT_MAX_CONNECTIONS}); more requests wait for a free one",
    )
    parser.add_argument(
        "--max-connections-per-host",
        type=_positive_int,
        default=None,
        metavar="N",
        help="upstream connections open at once to one upstream host (default: the same as"
        " --max-connections)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at GET /metrics (behind --api-key like the API)",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="OpenTelemetry tracing: continue callers' traceparent, a span per call, traceparent"
        " sent upstream, spans exported as OTEL_EXPORTER_OTLP_* / OTEL_SERVICE_NAME say (needs"
        f" pip install {' '.join(OTEL_PACKAGES)})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N gateway processes sharing the port, each with its own client; one that dies"
        " is restarted (default 1: a single process)",
    )
    parser.add_argument("--breaker", action="store_true", help="skip failing upstreams a while")
    parser.add_argument(
        "--breaker-threshold",
        type=_positive_int,
        default=None,
        metavar="N",
        help="failures in the breaker's window that open it (default 5; implies --breaker)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stream that breaks off after content (providers that can: Anthropic,"
        " -p vllm / llamacpp, local); the caller gets one uninterrupted stream",
    )
    parser.add_argument(
        "--max-resumes",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="continuations per answer (default 2; implies --resume)",
    )
    parser.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="keep provider health (breakers, rate budgets) in Redis, shared by every worker"
        ' and gateway using it: redis://HOST:PORT/DB (needs pip install "chatkit[redis]")',
    )
    parser.add_argument(
        "--state-prefix",
        default=None,
        metavar="PREFIX",
        help="prefix of the --state keys (default chatkit:); one Redis, several deployments",
    )
    parser.add_argument(
        "--state-timeout",
        type=seconds,
        default=None,
        metavar="S",
        help="seconds a --state operation may take before the call goes on with this"
        " process's memory (default 0.005)",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")


def _positive_int(text: str) -> int:
    """An argparse type: a count of at least 1, so that 0 or -5 is a usage error."""
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    """An argparse type: a count of at least 0."""
    return _whole_number(text, 0)


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        kind = "positive" if least == 1 else "non-negative"
        raise argparse.ArgumentTypeError(f"must be a {kind} whole number, got {value}")
    return value


def _limits(args: argparse.Namespace) -> chatkit.Limits:
    total = args.max_connections
    per_host = args.max_connections_per_host
    return chatkit.Limits(
        max_connections=total,
        max_connections_per_host=total if per_host is None else per_host,
    )


def _port(text: str) -> int:
    """An argparse type: a TCP port, so that 99999 is a usage error, not a traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535 (0: any free port), got {port}")
    return port


# Environment variables whose values are secrets, whatever the vendor.
_SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _secrets(args: argparse.Namespace, api_key: str | None) -> Iterator[str]:
    """Every secret this process knows of, to keep out of its log."""
    if api_key:
        yield api_key
    for name, value in os.environ.items():
        if value and _SECRET_NAMES.search(name):
            yield value.strip()
    proxies = [args.proxy] + [os.environ.get(n) or os.environ.get(n.lower()) for n in _PROXY_NAMES]
    for proxy in proxies:
        if proxy:
            try:
                password = urlsplit(proxy).password
            except ValueError:
                continue
            if password:
                yield password


def _configure_logging(args: argparse.Namespace, api_key: str | None) -> None:
    from chatkit.server import RedactSecrets

    # With several workers, each line says which process wrote it.
    name = "%(name)s[%(process)d]" if args.workers > 1 else "%(name)s"
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format=f"%(asctime)s %(levelname)s {name}: %(message)s",
        stream=sys.stderr,
    )
    # On the handlers, so it sees every record, from any library's logger.
    redact = RedactSecrets(_secrets(args, api_key))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)


def _allowed_hosts(args: argparse.Namespace) -> list[str]:
    """``--allowed-host`` values, plus the address served when it is a specific one.

    An IP literal cannot be rebound by DNS, so a gateway started with
    ``--host 192.168.1.5`` answers ``Host: 192.168.1.5:PORT`` without more ado.
    """
    hosts = list(args.allowed_host)
    if args.host not in ("", "0.0.0.0", "::"):
        hosts.append(f"[{args.host}]" if ":" in args.host else args.host)
    return hosts


class StateSetupError(chatkit.ChatkitError):
    """``--state`` cannot be set up: the redis package is missing."""


def _state(args: argparse.Namespace) -> Any:
    """``--state``'s ``RedisState``, or None."""
    if args.state is None:
        if args.state_prefix is not None or args.state_timeout is not None:
            raise StateSetupError("--state-prefix and --state-timeout need --state URL")
        return None
    try:
        import redis  # noqa: F401  (only to say what is missing, in one line)
    except ImportError:
        raise StateSetupError('--state needs redis: pip install "chatkit[redis]"') from None
    options: dict[str, Any] = {}
    if args.state_prefix is not None:
        options["prefix"] = args.state_prefix
    if args.state_timeout is not None:
        options["timeout"] = args.state_timeout
    return chatkit.RedisState(args.state, **options)


def _resume(args: argparse.Namespace) -> chatkit.Resume | None:
    if not args.resume and args.max_resumes is None:
        return None
    if args.max_resumes is None:
        return chatkit.Resume()
    return chatkit.Resume(max_resumes=args.max_resumes)


def _breaker(args: argparse.Namespace, shared: bool) -> chatkit.CircuitBreaker | None:
    if not args.breaker and args.breaker_threshold is None:
        return None
    options: dict[str, Any] = {}
    if args.breaker_threshold is not None:
        options["failure_threshold"] = args.breaker_threshold
    if shared:
        # Its times go to Redis and are compared by other processes, maybe on
        # other hosts: the wall clock, not this process's monotonic one.
        options["clock"] = time.time
    return chatkit.CircuitBreaker(**options)


def build_client(
    args: argparse.Namespace, hooks: Sequence[object] = ()
) -> tuple[chatkit.AsyncClient, list[Any]]:
    """The client the gateway serves, and what it must start and close with it.

    That is the provider instances it made and ``--state``'s RedisState.
    hooks: given to the client (``--otel``'s OpenTelemetry hook).
    """
    names = [name.strip() for name in (args.provider or "").split(",") if name.strip()]
    instances: list[Any] = []
    provider: Any = None
    state = _state(args)
    breaker = _breaker(args, shared=state is not None)
    client_breaker = breaker
    if len(names) > 1:
        # Built now, so that a missing key fails at start-up, not on every request.
        instances = [get_provider_class(name)() for name in names]
        provider = chatkit.RetryProvider(
            instances,
            shuffle=False,
            single_provider_retry=True,
            max_retries=args.retries,
            breaker=breaker,
            state=state,
        )
        client_breaker = None  # the RetryProvider's own, per member
    elif names:
        provider = get_provider_class(names[0])
        if provider is Local:
            provider = Local()
            instances = [provider]
    elif args.base_url is None and args.model.partition(":")[0].lower() not in PROVIDERS:
        # Requests are routed per call ("provider:model"); fail now if nothing is set up.
        default_provider_class()
    client = chatkit.AsyncClient(
        provider=provider,
        base_url=args.base_url,
        proxy=args.proxy,
        max_retries=args.retries,
        timeout=args.timeout,
        limits=_limits(args),
        hooks=list(hooks) or None,
        breaker=client_breaker,
        state=state,
        resume=_resume(args),
    )
    if state is not None:
        instances.append(state)
    return client, instances


def _gateway(args: argparse.Namespace, api_key: str | None) -> tuple[Any, Callable[[], None]]:
    """The gateway's app (starting and closing what it needs), and what flushes --otel's spans.

    Raises ChatkitError for a bad setting (the spans flushed already).
    """
    from chatkit.server import create_app

    flush_spans: Callable[[], None] = _no_spans
    try:
        hooks: list[object] = []
        if args.otel:
            hook, flush_spans = setup_otel()
            hooks.append(hook)
        client, instances = build_client(args, hooks)
        app = create_app(
            client,
            api_key=api_key,
            max_body_size=args.max_body_size,
            default_model=args.model or None,
            close_client=True,
            allowed_hosts=_allowed_hosts(args),
            cors_origins=args.cors_origin,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            metrics=args.metrics,
            otel=args.otel,
        )
    except chatkit.ChatkitError:
        flush_spans()
        raise

    async def start_local(app: Any) -> None:
        for provider in instances:
            if isinstance(provider, Local):
                print("chatkit serve: loading the local model", file=sys.stderr, flush=True)
                await provider.start()

    async def close_providers(app: Any) -> None:
        for provider in instances:
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()

    app.on_startup.append(start_local)
    app.on_cleanup.append(close_providers)
    return app, flush_spans


def _no_spans() -> None:
    """What flushes the spans without --otel."""


def _describe(args: argparse.Namespace, api_key: str | None) -> str:
    auth = "bearer token required" if api_key else "no auth"
    if args.metrics:
        auth += ", metrics at /metrics"
    if args.otel:
        auth += ", OpenTelemetry on"
    if args.state is not None:
        auth += ", shared state in Redis"
    return auth


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    if args.debug:
        raise exc
    print(error_line(exc), file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from chatkit.server import API_KEY_ENV
    from chatkit.server import run as run_app

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    _configure_logging(args, api_key)
    if args.workers > 1:
        return _run_workers(args, api_key)
    try:
        app, flush_spans = _gateway(args, api_key)
    except chatkit.ChatkitError as exc:
        return _fail(args, exc)
    auth = _describe(args, api_key)

    def ready(url: str) -> None:
        print(f"chatkit serve: listening on {url} ({auth}); Ctrl-C stops", file=sys.stderr)
        sys.stderr.flush()

    try:
        run_app(app, host=args.host, port=args.port, on_ready=ready)
    except OSError as exc:  # the port is taken, the address is not ours, ...
        return _fail(args, exc)
    finally:
        flush_spans()
    print("chatkit serve: stopped", file=sys.stderr)
    return 0


# How the parent starts a worker: a fresh interpreter (never a fork of the
# parent), given its control channel's descriptor as the last argument.
WORKER_COMMAND = (
    sys.executable,
    "-c",
    "import sys; from chatkit.cli._serve import worker_main; sys.exit(worker_main())",
)


def _run_workers(args: argparse.Namespace, api_key: str | None) -> int:
    """``--workers N``: the parent, which binds the port and supervises N workers."""
    from chatkit.server._workers import Listener, Supervisor

    if os.name != "posix":
        return _fail(args, chatkit.ChatkitError("--workers needs Linux, macOS or another Unix"))
    if args.metrics:
        logging.getLogger("chatkit.server").warning(
            "--metrics with --workers: each scrape of /metrics reports the one worker that"
            " answers it (see docs/scale-out.md)"
        )
    # Each worker parses nothing: it gets these values (the key resolved) over its
    # control channel, never on a command line or in the environment.
    config = {**vars(args), "api_key": api_key}
    try:
        listener = Listener(args.host, args.port)
    except OSError as exc:  # the port is taken, the address is not ours, ...
        return _fail(args, exc)
    auth = _describe(args, api_key)

    def ready(url: str) -> None:
        print(
            f"chatkit serve: listening on {url} ({args.workers} workers, {auth}); Ctrl-C stops",
            file=sys.stderr,
        )
        sys.stderr.flush()

    try:
        status = Supervisor(WORKER_COMMAND, config, args.workers, listener).run(ready)
    finally:
        listener.close()
    if status == 0:
        print("chatkit serve: stopped", file=sys.stderr)
    return status


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker of ``chatkit serve --workers N`` (WORKER_COMMAND runs it)."""
    from chatkit.server._workers import receive_orders, serve_worker

    orders = receive_orders(sys.argv if argv is None else argv)
    args = argparse.Namespace(**orders.config)
    _configure_logging(args, args.api_key)
    try:
        app, flush_spans = _gateway(args, args.api_key)
    except chatkit.ChatkitError as exc:
        return _fail(args, exc)
    try:
        serve_worker(app, orders)
    finally:
        flush_spans()
    return 0
