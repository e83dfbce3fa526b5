"""Plain configuration values: timeouts, environment look-ups, URL checks, redaction."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeGuard, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

from chatkit._errors import APIError, APIStatusError, InvalidRequestError

__all__ = [
    "scrub_error",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "Limits",
    "RedactedCause",
    "Timeout",
    "check_base_url",
    "check_header_value",
    "coerce_timeout",
    "env_value",
    "header_secrets",
    "is_number",
    "is_secret_header",
    "redact_url",
    "safe_cause",
    "scrub",
    "scrub_tree",
]


@overload
def is_number(value: object, *, integer: Literal[True]) -> TypeGuard[int]: ...
@overload
def is_number(value: object, *, integer: Literal[False] = False) -> TypeGuard[float]: ...
def is_number(value: object, *, integer: bool = False) -> bool:
    """An int (or, unless ``integer``, a float) but never a bool.

    ``bool`` is a subclass of ``int``: without this, ``timeout=True`` would
    pass as one second and ``max_retries=False`` as zero.
    """
    kinds = int if integer else int | float
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_seconds(value: object, field: str) -> float | None:
    if value is None:
        return None
    if not is_number(value):
        raise InvalidRequestError(
            f"{field} must be a number of seconds or None, got {type(value).__name__}",
            field=field,
        )
    if math.isnan(value) or value <= 0:
        raise InvalidRequestError(f"{field} must be > 0 seconds, got {value!r}", field=field)
    if math.isinf(value):
        return None  # infinity means what None means: no limit
    return float(value)


@dataclass(frozen=True)
class Timeout:
    """How long chatkit waits, in seconds; ``None`` means no limit.

    connect: to open the TCP/TLS/proxy connection.
    read: the longest silence between bytes of a response.
    first_token: the longest wait, per attempt, for the first content of an answer.
    total: the whole call, every retry and backoff sleep included.
    pool: the longest wait for a free connection when the pool (``Limits``) is
        full; None waits as long as the call's ``total`` allows.
    """

    connect: float | None = 10.0
    read: float | None = 60.0
    first_token: float | None = None
    total: float | None = 600.0
    pool: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "first_token", "total", "pool"):
            object.__setattr__(self, name, _check_seconds(getattr(self, name), f"timeout.{name}"))

    def with_total(self, total: float | None) -> Timeout:
        return replace(self, total=total)


DEFAULT_TIMEOUT = Timeout()


def _check_count(value: object, field: str) -> int | None:
    if value is None:
        return None
    if not is_number(value, integer=True) or value < 1:
        raise InvalidRequestError(
            f"{field} must be an integer >= 1 or None (no limit), got {value!r}", field=field
        )
    return value


@dataclass(frozen=True)
class Limits:
    """How many connections one client keeps open at once; ``None`` means no limit.

    max_connections: across every host.
    max_connections_per_host: to one host (scheme, host and port), so that a
        slow provider cannot hold every connection and starve a fallback to
        another host.
    """

    max_connections: int | None = 512
    max_connections_per_host: int | None = 256

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_host"):
            _check_count(getattr(self, name), f"limits.{name}")


DEFAULT_LIMITS = Limits()


def coerce_timeout(value: object, field: str = "timeout") -> Timeout | None:
    """Accept a ``Timeout``, a number (the total) or None (meaning: use the default)."""
    if value is None or isinstance(value, Timeout):
        return value
    total = _check_seconds(value, field)
    return DEFAULT_TIMEOUT.with_total(total)


def env_value(*names: str) -> str | None:
    """The first non-empty environment variable among ``names``."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


_SCHEMES = ("http", "https")


def check_base_url(url: object, field: str = "base_url") -> str:
    """Validate an API base URL and return it without a trailing slash."""
    if not isinstance(url, str):
        raise InvalidRequestError(f"{field} must be a string URL", field=field)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        hostname = None
    if (
        hostname is None
        or parts.scheme not in _SCHEMES
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    ):
        raise InvalidRequestError(
            f"{field} must be an absolute http(s) URL such as http://127.0.0.1:8000/v1,"
            f" got {redact_url(url)!r}",
            field=field,
        )
    return url.rstrip("/")


def check_header_value(value: object, field: str) -> str:
    """A header value as it may be sent: a string without CR, LF, NUL or edge whitespace.

    The value is never quoted in the error: it is often a key.
    """
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string", field=field)
    if value != value.strip() or any(c in value for c in "\r\n\0"):
        raise InvalidRequestError(
            f"{field} must not contain line breaks, NUL, or leading or trailing whitespace"
            " (a key copied with its newline?)",
            field=field,
        )
    return value


_USERINFO = re.compile(r"//[^/@\s]*@")


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` replaced, safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return _USERINFO.sub("//***@", url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


# Headers whose values are credentials, wherever a provider puts its key:
# these names, and any name ending like the vendors' ("x-goog-api-key", ...).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})
_SECRET_HEADER_ENDINGS = ("api-key", "-token", "-secret")


def is_secret_header(name: str) -> bool:
    """Whether a request header named ``name`` carries a credential."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or lowered.endswith(_SECRET_HEADER_ENDINGS)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:  # never empty: see ProxyURL.secrets and header_secrets
        text = text.replace(secret, "***")
    return text


def scrub_tree(value: object, secrets: tuple[str, ...]) -> object:
    """``value`` (a parsed JSON body) with every secret scrubbed from its strings.

    Lists and dicts are scrubbed in place (the body was parsed for this error,
    nobody else holds it), keys included. Iterative: a body nested as deep as
    ``json.loads`` allows must not hit the recursion limit here.
    """
    if not secrets:
        return value
    if isinstance(value, str):
        return scrub(value, secrets)
    pending = [value]
    while pending:
        node = pending.pop()
        items: list[tuple[Any, object]]
        if isinstance(node, dict):
            for key in list(node):
                item = node.pop(key)
                node[scrub(key, secrets) if isinstance(key, str) else key] = item
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            continue
        for index, item in items:
            if isinstance(item, str):
                node[index] = scrub(item, secrets)
            elif isinstance(item, dict | list):
                pending.append(item)
    return value


class RedactedCause(Exception):
    """Stands in for a foreign exception whose text held a secret.

    aiohttp's proxy errors carry the proxy URL with its password and the
    ``Proxy-Authorization`` header in their ``repr``; chatkit chains this
    instead, with the original type name and the text scrubbed.
    """


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        parts.append(f"{current!s}\n{current!r}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def safe_cause(exc: BaseException, secrets: tuple[str, ...]) -> BaseException:
    """``exc`` itself, or a scrubbed stand-in when its chain mentions a secret."""
    text = _chain_text(exc)
    if not any(secret in text for secret in secrets if secret):
        return exc
    stand_in = RedactedCause(scrub(f"{type(exc).__name__}: {exc}", secrets))
    return stand_in.with_traceback(exc.__traceback__)


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials in request headers (whole values, and bearer tokens alone)."""
    found: list[str] = []
    for name, value in headers.items():
        if is_secret_header(name) and value:
            found.append(value)
            token = value.rpartition(" ")[2]
            if len(token) >= 8:
                found.append(token)
    return tuple(found)


APIErrorT = TypeVar("APIErrorT", bound=APIError)


def scrub_error(error: APIErrorT, secrets: tuple[str, ...]) -> APIErrorT:
    """``error`` without the call's secrets: upstreams echo a bad key in their
    401 body, in error events and in whatever a decode error quotes."""
    if not secrets:
        return error
    error.message = scrub(error.message, secrets)
    error.args = (error.message,)
    if not isinstance(error, APIStatusError):
        return error
    error.body = scrub_tree(error.body, secrets)
    error.headers = {name: scrub(value, secrets) for name, value in error.headers.items()}
    for name in ("code", "param", "type", "request_id"):
        value = getattr(error, name)
        if value is not None:
            setattr(error, name, scrub(value, secrets))
    return error
