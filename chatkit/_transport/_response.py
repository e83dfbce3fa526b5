"""Responses: ``HTTPResponse``, the caps on decoded body sizes, request-body JSON.

Split out of the transport so that what reads a body (a 2xx body, an error
body) sits beside the caps it enforces. The caps are read at call time, so
tests can lower them on this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from chatkit._errors import ResponseDecodeError, ResponseTooLargeError
from chatkit._pool import Permit
from chatkit._proxy import ProxyURL

if TYPE_CHECKING:
    import aiohttp

    from chatkit._transport._call import HTTPCall

# Caps on DECODED (decompressed) sizes, enforced while reading, so that a
# small gzip bomb never inflates into memory.
MAX_BODY_SIZE = 32 * 1024 * 1024
"""A non-streamed 2xx body (a completion, a models list): past it, ResponseTooLargeError."""
MAX_ERROR_BODY_SIZE = 1024 * 1024
"""An error response's body: the rest is dropped, the status error keeps the first part."""


# One encoder for every request: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(body: Any) -> bytes:
    """Compact JSON bytes for a request body."""
    return _ENCODER.encode(body).encode()


class HTTPResponse:
    """A response with a 2xx status whose body has not been read yet."""

    def __init__(
        self,
        raw: aiohttp.ClientResponse,
        call: HTTPCall,
        provider: str,
        proxy: ProxyURL | None = None,
        permit: Permit | None = None,
    ) -> None:
        self._raw = raw
        self._call = call
        self._provider = provider
        self._proxy = proxy
        self._permit = permit
        self._loop = asyncio.get_running_loop()
        self.status: int = raw.status
        self.headers: Mapping[str, str] = raw.headers

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (``iter_any``: never ``readline``, no line cap)."""
        while True:
            data = await self._read_some()
            if not data:
                return
            yield data

    async def _read_some(self) -> bytes:
        failure = None
        try:
            return await self._raw.content.readany()
        except BaseException as exc:
            failure = self._call.translate(exc, self._provider, reading=True, proxy=self._proxy)
            if failure is exc:
                raise
        # Raised outside the except block so that the foreign exception
        # does not ride along as __context__ (it may hold a secret).
        raise failure

    async def read(self) -> bytes:
        """The whole (decoded) body, up to ``MAX_BODY_SIZE`` bytes.

        Read piece by piece and given up at the cap: aiohttp inflates a
        compressed body as it is read, so a gzip bomb stops at the cap too.
        """
        limit = MAX_BODY_SIZE  # read at call time: tests lower the module constant
        parts: list[bytes] = []
        size = 0
        while data := await self._read_some():
            size += len(data)
            if size > limit:
                self.close()  # the rest is never read
                raise ResponseTooLargeError(
                    f"{self._provider}: the response body is larger than {limit} bytes"
                    " once decompressed (chatkit's MAX_BODY_SIZE cap)",
                    provider=self._provider,
                )
            parts.append(data)
        return b"".join(parts)

    async def json(self) -> Any:
        body = await self.read()
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            raise ResponseDecodeError(
                f"{self._provider}: response body is {what} ({body[:80]!r})",
                provider=self._provider,
            ) from exc

    def close(self) -> None:
        """Drop the connection now; the server sees the disconnect."""
        self._raw.close()
        if self._permit is not None:
            self._permit.release_soon()

    def interrupt(self) -> None:
        """Fail a read in progress, then drop the connection (on the response's loop).

        aiohttp's session close drops the connections in use without telling
        the bodies reading from them, so a read already waiting would wait
        forever; here it fails, and ``translate`` names the closed client.
        """
        import aiohttp

        if not self._raw.content.is_eof():
            self._raw.content.set_exception(aiohttp.ClientConnectionError("the client was closed"))
        self.close()


async def _error_body(raw: aiohttp.ClientResponse) -> bytes:
    """Up to ``MAX_ERROR_BODY_SIZE`` decoded bytes of an error response.

    ``content.read(n)`` returns whatever has arrived, so it loops. When the
    body breaks off or stalls, the status already says what went wrong: keep
    the part that arrived rather than turn a 503 into a connection error.
    """
    parts: list[bytes] = []
    size = 0
    try:
        while size < MAX_ERROR_BODY_SIZE:
            data = await raw.content.read(MAX_ERROR_BODY_SIZE - size)
            if not data:
                break
            parts.append(data)
            size += len(data)
    except Exception:  # the status says enough: see the docstring
        pass
    return b"".join(parts)
