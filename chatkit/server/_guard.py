"""Which requests the gateway accepts at all: the Host, the Origin, the body's type.

A gateway on 127.0.0.1 without a key is reachable by every web page the user
opens. Three checks keep those pages out while leaving the built-in page and
every real API client (curl, the openai SDK, LangChain) working:

- ``Host`` must be a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``,
  any port) or one configured with ``allowed_hosts``: a DNS-rebinding page
  reaches 127.0.0.1 under its own name, and is refused (403).
- A cross-site request is refused (403): an ``Origin`` that is not this
  gateway's own origin and not listed in ``cors_origins``, or ``Sec-Fetch-Site:
  cross-site`` (a top-level navigation to the page excepted). Listed origins
  get CORS answers, preflights included.
- A ``POST`` body must be ``application/json`` (415): HTML forms and
  ``text/plain`` fetches, which browsers send cross-site without a preflight,
  cannot carry it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import chatkit

from ._failures import Failure, Refusal

__all__ = ["GUARD", "Guard", "add_cors_headers", "guard_middleware"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY = "*"
_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_MAX_AGE = "600"


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header, without port and brackets; None if malformed."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest[1:].isdigit()) or (rest and rest[0] != ":"):
            return None
        return name
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def _origin(value: str) -> str | None:
    """``scheme://host[:port]`` of an ``Origin`` header, lower-cased; None if malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 80 if parts.scheme == "http" else 443
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = "" if port in (None, default) else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


def _check_names(values: Iterable[str] | None, field: str) -> list[str]:
    """``values`` as a list of names; None means none. A lone string is refused:
    iterated, ``"localhost"`` would become nine one-letter host names."""
    if values is None:
        return []
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise chatkit.InvalidRequestError(
            f"{field} must be a list of strings, got {type(values).__name__}", field=field
        )
    names = list(values)
    for value in names:
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
            raise chatkit.InvalidRequestError(
                f"{field} entries must be non-empty strings without spaces, got {value!r}",
                field=field,
            )
    return names


@dataclass(frozen=True)
class Guard:
    """The accepted hosts and cross-site origins."""

    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def build(
        cls, allowed_hosts: Iterable[str] | None, cors_origins: Iterable[str] | None
    ) -> Guard:
        hosts = set(LOOPBACK_NAMES)
        for value in _check_names(allowed_hosts, "allowed_hosts"):
            name = value if value == ANY else _host_name(value)
            if name is None:
                raise chatkit.InvalidRequestError(
                    f"allowed_hosts: not a host name: {value!r}", field="allowed_hosts"
                )
            hosts.add(name)
        origins = set()
        for value in _check_names(cors_origins, "cors_origins"):
            origin = value if value == ANY else _origin(value)
            if origin is None or (origin != ANY and urlsplit(value).path not in ("", "/")):
                raise chatkit.InvalidRequestError(
                    f"cors_origins: not an origin like http://host:port: {value!r}",
                    field="cors_origins",
                )
            origins.add(origin)
        return cls(frozenset(hosts), frozenset(origins))

    def host_allowed(self, host: str | None) -> bool:
        if host is None:
            # HTTP/1.0 without Host: not a browser, which always sends one.
            return True
        name = _host_name(host)
        if name is None:
            return False
        if ANY in self.hosts or name in self.hosts:
            return True
        # Any loopback address (127.0.0.2, ::ffff:127.0.0.1) is this machine too.
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def cors_origin(self, origin: str) -> str | None:
        """The origin to echo in CORS headers, if ``origin`` is a listed one."""
        normal = _origin(origin)
        if normal is not None and (normal in self.origins or ANY in self.origins):
            return origin
        return None


def _same_origin(request: web.Request, origin: str) -> bool:
    normal = _origin(origin)
    host = request.headers.get("Host")
    if normal is None or host is None:
        return False
    return normal == _origin(f"{request.scheme}://{host}")


def _refuse(status: int, message: str, code: str) -> NoReturn:
    # Raised, so that the error middleware logs and answers it like any other.
    raise Refusal(Failure(status, message, code=code))


def guard_middleware(guard: Guard) -> Middleware:
    @web.middleware
    async def screen(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guard.host_allowed(request.headers.get("Host")):
            _refuse(
                403,
                "this Host is not allowed; start the gateway with --allowed-host NAME"
                " (allowed_hosts=) to serve it under another name",
                "host_not_allowed",
            )
        origin = request.headers.get("Origin")
        allowed = guard.cors_origin(origin) if origin is not None else None
        if origin is not None and allowed is None and not _same_origin(request, origin):
            _refuse(
                403,
                "cross-origin requests are refused; allow an origin with --cors-origin"
                " (cors_origins=)",
                "origin_not_allowed",
            )
        if allowed is None and _cross_site(request):
            _refuse(403, "cross-site requests are refused", "origin_not_allowed")
        if allowed is not None and request.method == "OPTIONS":
            return _preflight(request, allowed)
        if request.method == "POST" and request.content_type != "application/json":
            _refuse(
                415,
                "send the request body as Content-Type: application/json",
                "unsupported_media_type",
            )
        return await handler(request)

    return screen


def _cross_site(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site", "").lower() != "cross-site":
        return False
    # Following a link to the page from another site is harmless: no body,
    # no credentials the page could not ask for itself.
    navigation = request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
    return not (navigation and request.method in ("GET", "HEAD"))


def _preflight(request: web.Request, origin: str) -> web.Response:
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": _CORS_METHODS,
        "Access-Control-Max-Age": _CORS_MAX_AGE,
        "Vary": "Origin",
    }
    asked = request.headers.get("Access-Control-Request-Headers")
    if asked:
        headers["Access-Control-Allow-Headers"] = asked
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: listed origins may read every answer, streams included."""
    guard = request.app.get(GUARD)
    origin = request.headers.get("Origin")
    if guard is None or origin is None:
        return
    allowed = guard.cors_origin(origin)
    if allowed is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = "Retry-After, retry-after-ms"
        response.headers.add("Vary", "Origin")


GUARD = web.AppKey("chatkit_guard", Guard)
