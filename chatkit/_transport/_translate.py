"""Foreign exceptions (aiohttp, aiohttp_socks, python-socks, OS) to chatkit's tree.

Split out of the transport: the classification is free functions, used by
``HTTPCall.translate`` once the call's secrets are known.
"""

from __future__ import annotations

import asyncio

from chatkit._config import scrub
from chatkit._errors import APIConnectionError, APITimeoutError, ProxyError
from chatkit._proxy import ProxyURL


def _classify(
    exc: BaseException,
    provider: str,
    proxy: ProxyURL | None,
    reading: bool,
    secrets: tuple[str, ...],
) -> BaseException:
    import aiohttp

    detail = scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
    shown = proxy.without_credentials if proxy is not None else None
    proxy_failure = _proxy_failure(exc, proxy, reading)
    if isinstance(exc, TimeoutError) or proxy_failure == "timeout":
        what = "reading the response" if reading else "connecting or waiting for headers"
        via = f" through proxy {shown}" if proxy is not None and not reading else ""
        return APITimeoutError(f"{provider}: timed out {what}{via} ({detail})", provider=provider)
    if proxy_failure == "refused" and isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyError(
            f"{provider}: proxy {shown} refused the tunnel: HTTP {exc.status} {exc.message}"
            + (" (check the user name and password)" if exc.status == 407 else ""),
            provider=provider,
        )
    if proxy_failure is not None and isinstance(exc, asyncio.IncompleteReadError):
        return ProxyError(
            f"{provider}: proxy {shown} closed the connection during the SOCKS handshake"
            " (wrong user name or password?)",
            provider=provider,
        )
    if proxy_failure is not None:
        return ProxyError(f"{provider}: proxy {shown} failed: {detail}", provider=provider)
    malformed = _malformed(exc)
    if malformed is not None:
        # aiohttp words an unparsable response as a "400" of its own making;
        # no server answered 400: the bytes were not HTTP, or broke off.
        what = "connection lost while reading" if reading else "malformed HTTP response"
        return APIConnectionError(
            f"{provider}: {what}: {scrub(malformed, secrets)}", provider=provider
        )
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.IncompleteReadError):
        action = "connection lost while reading" if reading else "cannot connect"
        return APIConnectionError(f"{provider}: {action}: {detail}", provider=provider)
    return exc


def _malformed(exc: BaseException) -> str | None:
    """What aiohttp found wrong in the response's bytes, or None when it is another failure."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return None
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.message}"[:300]
    if isinstance(exc, aiohttp.ClientPayloadError):
        inner = exc.__cause__
        message = getattr(inner, "message", None)
        if isinstance(message, str):
            return f"{type(inner).__name__}: {message}"[:300]
        return f"{exc}"[:300]
    return None


def _proxy_failure(exc: BaseException, proxy: ProxyURL | None, reading: bool) -> str | None:
    """``"timeout"``, ``"refused"`` or ``"failed"`` when the proxy is to blame, else None."""
    if proxy is None or reading:
        return None
    import aiohttp

    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return "refused"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "failed"
    if proxy.is_socks:
        import aiohttp_socks
        import python_socks

        if isinstance(exc, aiohttp_socks.ProxyTimeoutError | python_socks.ProxyTimeoutError):
            return "timeout"
        socks_errors = (
            aiohttp_socks.ProxyError,
            aiohttp_socks.ProxyConnectionError,
            python_socks.ProxyError,
            python_socks.ProxyConnectionError,
            # A SOCKS5 proxy that rejects the password just closes the
            # connection mid-handshake: python-socks sees an incomplete read.
            asyncio.IncompleteReadError,
        )
        if isinstance(exc, socks_errors):
            return "failed"
    return None
