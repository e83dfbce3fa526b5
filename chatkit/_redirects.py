"""Redirects, followed by hand rather than by aiohttp.

aiohttp would resend a 307/308's body to any origin the Location names, and
drops only ``Authorization`` on the way. chatkit follows a redirect itself:
never a body to another origin (that hands the conversation to a server the
user never configured), never a credential header to another origin.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

from chatkit._config import redact_url
from chatkit._errors import APIStatusError
from chatkit._pool import origin

__all__ = ["MAX_REDIRECTS", "becomes_get", "redirect_target"]

MAX_REDIRECTS = 10

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def becomes_get(status: int, method: str) -> bool:
    """Whether the next hop is a bodiless GET, as browsers, curl and aiohttp do it."""
    return (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST")


def redirect_target(
    status: int,
    location: str | None,
    response_url: str,
    url: str,
    *,
    has_body: bool,
    headers: Mapping[str, str],
    provider: str,
) -> str | None:
    """The URL a response redirects this request to, or None when it is no redirect.

    Raises ``APIStatusError`` (for the 3xx) for a location that is not http(s),
    and for a 307/308 that would resend the body to another origin.
    """
    if status not in _REDIRECT_STATUSES or not location:
        return None
    try:
        target = urljoin(response_url, location)
    except ValueError:
        target = ""
    if urlsplit(target).scheme not in ("http", "https"):
        raise APIStatusError(
            f"{provider}: HTTP {status} redirect to an unusable location"
            f" {redact_url(location)[:200]!r}",
            status_code=status,
            headers=headers,
            provider=provider,
        )
    if origin(target) != origin(url) and status in (307, 308) and has_body:
        raise APIStatusError(
            f"{provider}: refused to follow a cross-origin redirect (HTTP {status})"
            f" from {origin(url)} to {redact_url(target)[:200]}: it would send the"
            " request body to another server; point base_url at the new location"
            " if you trust it",
            status_code=status,
            headers=headers,
            provider=provider,
        )
    return target
