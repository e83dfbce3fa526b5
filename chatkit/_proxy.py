"""Proxy settings: parse, validate, and pick the proxy for a target URL.

Sans-I/O. The transport asks ``ProxySettings.for_url(url)`` which proxy to use;
``None`` means connect directly, and that answer is only ever given when the
caller configured no explicit proxy at all or ``NO_PROXY`` says so. A
``proxies`` dict without an entry for the target's scheme raises: it never falls
back to a direct connection silently.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from chatkit._config import redact_url
from chatkit._errors import ProxyConfigError

__all__ = ["PROXY_SCHEMES", "ProxySettings", "ProxyURL"]

PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})
_PROXIES_KEYS = frozenset({"http", "https", "all"})


@dataclass(frozen=True)
class ProxyURL:
    """One proxy. ``str()`` and ``repr()`` never show the password."""

    url: str

    @classmethod
    def parse(cls, value: object, field: str) -> ProxyURL:
        if not isinstance(value, str) or not value:
            raise ProxyConfigError(f"{field} must be a proxy URL string", field=field)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ProxyConfigError(
                f"{field}: malformed proxy URL {redact_url(value)!r}", field=field
            ) from None
        if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
            raise ProxyConfigError(
                f"{field}: proxy URL {redact_url(value)!r} needs a scheme among"
                f" {sorted(PROXY_SCHEMES)} and a host",
                field=field,
            )
        return cls(value)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    @property
    def username(self) -> str | None:
        name = urlsplit(self.url).username
        return unquote(name) if name is not None else None

    @property
    def password(self) -> str | None:
        secret = urlsplit(self.url).password
        return unquote(secret) if secret is not None else None

    @property
    def without_credentials(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{host}{port}"

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"ProxyURL({redact_url(self.url)!r})"

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in an error message or a log line."""
        found = [s for s in (self.password, urlsplit(self.url).password) if s]
        return tuple(found)


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy to use for which target; built from ``proxy=`` / ``proxies=``."""

    proxy: ProxyURL | None = None
    proxies: Mapping[str, ProxyURL] | None = None
    trust_env: bool = True

    @classmethod
    def create(
        cls, *, proxy: object = None, proxies: object = None, trust_env: object = True
    ) -> ProxySettings:
        if not isinstance(trust_env, bool):
            raise ProxyConfigError("trust_env must be True or False", field="trust_env")
        if proxy is not None and proxies is not None:
            raise ProxyConfigError("pass either proxy= or proxies=, not both", field="proxies")
        parsed_proxy = ProxyURL.parse(proxy, "proxy") if proxy is not None else None
        parsed_map: dict[str, ProxyURL] | None = None
        if proxies is not None:
            if not isinstance(proxies, Mapping) or not proxies:
                raise ProxyConfigError(
                    'proxies must be a non-empty dict like {"https": "http://host:port"}',
                    field="proxies",
                )
            parsed_map = {}
            for key, value in proxies.items():
                if key not in _PROXIES_KEYS:
                    raise ProxyConfigError(
                        f"proxies: unknown key {key!r}; use 'http', 'https' or 'all'",
                        field=f"proxies[{key!r}]",
                    )
                parsed_map[key] = ProxyURL.parse(value, f"proxies[{key!r}]")
        return cls(proxy=parsed_proxy, proxies=parsed_map, trust_env=trust_env)

    @property
    def explicit(self) -> bool:
        return self.proxy is not None or self.proxies is not None

    def for_url(self, url: str) -> ProxyURL | None:
        """The proxy to reach ``url`` through, or None for a direct connection."""
        scheme = urlsplit(url).scheme
        if self.proxy is not None:
            return self.proxy
        if self.proxies is not None:
            chosen = self.proxies.get(scheme) or self.proxies.get("all")
            if chosen is None:
                raise ProxyConfigError(
                    f"proxies has no entry for {scheme!r} URLs (nor 'all'); refusing to"
                    f" connect to {redact_url(url)} directly",
                    field="proxies",
                )
            return chosen
        if self.trust_env:
            return _env_proxy(url, scheme)
        return None

    def secrets(self) -> tuple[str, ...]:
        found: list[str] = []
        for item in [self.proxy, *(self.proxies or {}).values()]:
            if item is not None:
                found.extend(item.secrets())
        return tuple(found)

    def __repr__(self) -> str:
        shown = {k: str(v) for k, v in (self.proxies or {}).items()}
        return f"ProxySettings(proxy={self.proxy!s}, proxies={shown}, trust_env={self.trust_env})"


def _env_proxy(url: str, scheme: str) -> ProxyURL | None:
    host = urlsplit(url).hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    found = urllib.request.getproxies_environment()
    value = found.get(scheme) or found.get("all")
    if not value:
        return None
    return ProxyURL.parse(value, f"{scheme.upper()}_PROXY environment variable")
