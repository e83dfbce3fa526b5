"""HTTP transport: the only package that imports aiohttp and aiohttp_socks.

One ``Transport`` per client owns its aiohttp sessions: one per event loop and
per SOCKS proxy (aiohttp-socks binds a proxy to a connector), created lazily on
the loop that uses them (``_sessions``). Providers see a per-call ``HTTPCall``
(``_call``), which tracks the responses it opened so a stream dropped by the
caller can be aborted synchronously (``abort()``), from ``__del__`` if need be.

Foreign exceptions are translated once, by ``HTTPCall.translate``, into
chatkit's error tree (the classification is in ``_translate``); a foreign
exception whose text holds a key or proxy password is chained as a scrubbed
stand-in, and status errors are scrubbed of the call's secrets too (upstreams
echo a bad key). The redaction helpers live in ``chatkit._config``.

Also here: the connection pool (``Limits``, waited for under ``Timeout.pool``,
in ``_call``), redirects (followed by hand in ``_call``: never a body to
another origin, never a credential header), the caps on decoded body sizes
(``MAX_BODY_SIZE``, ``MAX_ERROR_BODY_SIZE``, in ``_response`` with
``HTTPResponse``), and the call's deadline as aiohttp timeouts (``_deadline``).

This module only re-exports; patch a constant on the submodule that reads it
(``chatkit._transport._response.MAX_BODY_SIZE``).
"""

from __future__ import annotations

from chatkit._config import RedactedCause
from chatkit._redirects import MAX_REDIRECTS
from chatkit._transport._call import HTTPCall, HTTPClient
from chatkit._transport._deadline import DEADLINE_OWNER, _client_timeout, deadline_owned
from chatkit._transport._response import (
    MAX_BODY_SIZE,
    MAX_ERROR_BODY_SIZE,
    HTTPResponse,
    dumps,
)
from chatkit._transport._sessions import Transport, _socks_connector

__all__ = [
    "DEADLINE_OWNER",
    "MAX_BODY_SIZE",
    "MAX_ERROR_BODY_SIZE",
    "MAX_REDIRECTS",
    "HTTPCall",
    "HTTPClient",
    "HTTPResponse",
    "RedactedCause",
    "Transport",
    "_client_timeout",
    "_socks_connector",
    "deadline_owned",
    "dumps",
]
